"""App factories for the CA daemon (STYLE 8): the public and the internal listener."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from ca.api import crl, internal, ocsp, public
from ca.api.internal import RUNTIME
from ca.middleware import error_middleware, token_middleware
from ca.runtime import CaRuntime
from common.errors import Unavailable

_log = structlog.get_logger("ca.recovery")
RECOVERY_INTERVAL_SECONDS = 2.0


def build_internal_app(runtime: CaRuntime, token: str) -> web.Application:
    """The gateway's API: every route needs the bearer token."""
    app = web.Application(
        middlewares=[error_middleware, token_middleware(token)],
        client_max_size=runtime.config.max_body_bytes,
    )
    app[RUNTIME] = runtime
    internal.add_routes(app)
    app.on_shutdown.append(_end_long_polls)
    return app


async def _end_long_polls(app: web.Application) -> None:
    """At shutdown, answer the gateway's open revocation long-poll now rather than after its
    25 s: otherwise stopping the daemon (Ctrl-C on `make run`) waits for it."""
    await app[RUNTIME].feed.close()


def build_public_app(runtime: CaRuntime) -> web.Application:
    """OCSP, CRL, issuer certificates, health and metrics: no authentication."""
    app = web.Application(middlewares=[error_middleware], client_max_size=64 * 1024)
    app[RUNTIME] = runtime
    public.add_routes(app)
    crl.add_routes(app)
    ocsp.add_routes(app)
    app.router.add_get("/metrics", metrics)
    app.cleanup_ctx.append(_background_tasks)
    return app


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format (R-REV-3)."""
    return web.Response(body=request.app[RUNTIME].metrics.render(),
                        content_type="text/plain", charset="utf-8",
                        headers={"Cache-Control": "no-store"})


async def _background_tasks(app: web.Application) -> AsyncIterator[None]:
    # Before the listener accepts anything: settle what a crash left (R-FAULT-2/3), then bring
    # every CRL up to the store's revocations (R-FAULT-1).
    await _recover(runtime := app[RUNTIME])
    await runtime.crls.start()
    tasks = [
        asyncio.create_task(_recover_periodically(runtime), name="recovery"),
        asyncio.create_task(runtime.feed.run(), name="revocation-feed"),
        asyncio.create_task(runtime.crls.run(), name="crl-schedule"),
        asyncio.create_task(runtime.ocsp.run(), name="ocsp-maintenance"),
    ]
    if runtime.cutovers is not None:  # a cluster's cutover records (ca.cutover_job)
        tasks.append(asyncio.create_task(runtime.cutovers.run(), name="cutover-records"))
    yield
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def _recover(runtime: CaRuntime) -> None:
    """One recovery pass; a store that cannot be written is named in one line and retried."""
    try:
        await runtime.authority.recover()
    except Unavailable as exc:
        _log.error("recovery_deferred", error=exc.code, message=str(exc))


async def _recover_periodically(runtime: CaRuntime) -> None:
    """Settle intents and tries whose deadline passed while the daemon ran (a full disk
    that made a request's own clean-up fail, a stuck worker)."""
    while True:
        await asyncio.sleep(RECOVERY_INTERVAL_SECONDS)
        await _recover(runtime)
