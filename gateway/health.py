"""Liveness, readiness and metrics for load balancers and monitoring (README "Processes").

All three are answered on the gateway's TLS listener without a client certificate (the
listener asks for one but does not require it) and without a session; none says anything
secret. The paths are the gateway's own: a backend page of the same name is not reachable
through the gateway.

* `GET /health`: 200 `{"status": "ok"}` while this worker's event loop answers. Liveness
  only: it checks nothing else, so a balancer never takes every host out because a shared
  dependency is down.
* `GET /ready`: 200 `{"ready": true}` when this worker can serve customers: its store answers
  a read, its trust bundle holds a certificate valid now, and its view of revocations is fresh
  (the CA's revocation feed is followed, or was within `gateway.ready_revocation_max_age`).
  Otherwise 503 `{"ready": false, "reason": CODE, "reasons": [...]}` with CODE one of
  `store_unreachable`, `trust_bundle_expired`, `revocation_stale`.
* `GET /metrics`: the Prometheus text of every worker of this host (gateway/metrics.py), to
  peers in `gateway.metrics_allow` (default loopback); anyone else gets 404.
"""

from __future__ import annotations

import asyncio
import ipaddress

from aiohttp import web

from gateway import metrics
from gateway.errors import NotFound
from gateway.state import CLOCK, CONFIG, REVOCATION, USERS
from gateway.tls import TrustBundle

TRUST_BUNDLE = web.AppKey("trust_bundle", TrustBundle)
# Paths answered by this module, never proxied (gateway.app's direct path checks them).
PATHS = frozenset({"/health", "/ready", "/metrics"})
# A store that does not answer a read within this long is unreachable for the balancer.
STORE_PROBE_SECONDS = 2.0
_NO_STORE = {"Cache-Control": "no-store"}


async def health(request: web.Request) -> web.StreamResponse:
    """Liveness: the worker's event loop answers."""
    return web.json_response({"status": "ok"}, headers=_NO_STORE)


async def readiness_problems(app: web.Application) -> list[str]:
    """Why this worker should not get customers now (empty: ready)."""
    problems = []
    try:
        await asyncio.wait_for(app[USERS].last_session_event(), STORE_PROBE_SECONDS)
    except Exception:  # closed, locked, unreachable, timed out: all mean "not now"
        problems.append("store_unreachable")
    now = app[CLOCK].now()
    if not any(c.not_valid_before_utc <= now <= c.not_valid_after_utc
               for c in app[TRUST_BUNDLE].certificates):
        problems.append("trust_bundle_expired")
    revocation = app[REVOCATION]
    if not revocation.following:
        last = revocation.last_contact
        if last is None or now - last > app[CONFIG].ready_revocation_max_age:
            problems.append("revocation_stale")
    return problems


async def ready(request: web.Request) -> web.StreamResponse:
    """Readiness: 200 or 503 with the reason codes."""
    problems = await readiness_problems(request.app)
    if problems:
        return web.json_response({"ready": False, "reason": problems[0], "reasons": problems},
                                 status=503, headers=_NO_STORE)
    return web.json_response({"ready": True}, headers=_NO_STORE)


def _allowed(request: web.Request) -> bool:
    try:
        peer = ipaddress.ip_address(request.remote or "")
    except ValueError:
        return False
    if isinstance(peer, ipaddress.IPv6Address) and peer.ipv4_mapped is not None:
        peer = peer.ipv4_mapped
    return any(peer in network for network in request.app[CONFIG].metrics_allow)


async def metrics_page(request: web.Request) -> web.StreamResponse:
    """The host's metrics, to the configured monitoring addresses only."""
    if not _allowed(request):
        raise NotFound("no such page")
    return web.Response(body=metrics.exposition(), headers={
        **_NO_STORE, "Content-Type": metrics.CONTENT_TYPE})


def add_routes(app: web.Application, bundle: TrustBundle) -> None:
    """Register the three endpoints (before the proxy's catch-all)."""
    app[TRUST_BUNDLE] = bundle
    app.router.add_get("/health", health)
    app.router.add_get("/ready", ready)
    app.router.add_get("/metrics", metrics_page)
