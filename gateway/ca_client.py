"""The gateway's HTTP client for the CA: internal API (bearer token) and public endpoints.

The gateway never imports `ca/` or `keys/` (STYLE 1); everything goes over HTTP. Errors of
the internal API arrive as JSON `{"error": code, "message": ...}` and become `CaRefused`; a
CA that cannot be reached (or answers 5xx) becomes `CaUnavailable`. With several CA nodes
(issue 13) every call may move to the next node; each call's docstring says when and why
that is safe.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import aiohttp
import structlog

from gateway.ca_nodes import CaNode, CaNodes
from gateway.errors import GatewayError

_log = structlog.get_logger("gateway.ca_client")
_T = TypeVar("_T")


class CaUnavailable(GatewayError):
    """The CA did not answer (connection refused, timeout, 5xx)."""

    status = 503
    code = "ca_unavailable"


class CaRefused(GatewayError):
    """The CA answered with an error; `code` is the CA's error code, `ca_status` its status."""

    status = 409
    code = "ca_refused"

    def __init__(self, message: str, *, code: str, ca_status: int, body: dict[str, Any]) -> None:
        super().__init__(message, code=code)
        self.ca_status = ca_status
        self.body = body


@dataclass(frozen=True)
class Delivered:
    """A certificate the CA issued, with its PKCS#12 file."""

    serial: str
    user_id: str
    not_after: str
    pkcs12: bytes


@dataclass(frozen=True)
class RevocationEvent:
    """One entry of the CA's revocation feed."""

    seq: int
    serial: str
    user_id: str
    fingerprint_sha256: str


@dataclass(frozen=True)
class AcquisitionTicket:
    """A single-use acquisition ticket and the internal URL of the node that issued it (for
    the log): tickets live in the CA's store (ca/tickets.py), so any node redeems one."""

    value: str
    node: str


# A probe of a failed node is a cheap read; a node that takes longer is not back yet.
_PROBE_SECONDS = 3.0
# Limit of the TCP connect alone (not the wait for a free pooled connection, which is no sign
# of a dead node): a node that does not accept within it is failed over as "not sent". At
# most half of a call's total, so that it fires first (the total's expiry may come after
# the request was sent).
_CONNECT_SECONDS = 3.0


def _timeout(total: float) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(total=total, sock_connect=min(total / 2, _CONNECT_SECONDS))

# Answers of a node (or of a proxy in front of it) that say "not this node, not now".
_NODE_DOWN_STATUSES = frozenset({502, 503, 504})


class _NodeFailed(Exception):
    """One node did not answer usefully; `sent`: the request may have reached it."""

    def __init__(self, reason: str, *, sent: bool) -> None:
        super().__init__(reason)
        self.sent = sent


class CaClient:
    """Calls the CA, on one or several nodes (gateway/ca_nodes.py: order and back-off).

    Pooled aiohttp sessions, closed by `close()`. A call moves to the next node when a node
    refuses the connection, times out, resets it or answers 502/503/504, unless the request
    may have been executed by that node and a second execution elsewhere could do harm: each
    public method says which (`replayable`). Requests that must not be replayed go on a fresh
    connection (never a pooled one that may be dead), so a dead node shows as a refused
    connection, which is always safe to move on from.
    """

    def __init__(self, internal_url: str | Sequence[str], public_url: str | Sequence[str],
                 token: str, *, timeout: float = 10.0,
                 internal_ssl: ssl.SSLContext | Sequence[ssl.SSLContext | None] | None = None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        internal_urls = [internal_url] if isinstance(internal_url, str) else list(internal_url)
        public_urls = [public_url] if isinstance(public_url, str) else list(public_url)
        contexts = (list(internal_ssl) if isinstance(internal_ssl, Sequence)
                    else [internal_ssl] * len(internal_urls))
        # https: each node's context (a pinned certificate) or, without one, the system's CAs.
        self.internal = CaNodes("internal", internal_urls,
                                [context or True for context in contexts], monotonic=monotonic)
        self.public = CaNodes("public", public_urls, monotonic=monotonic)
        self._token = token
        self._timeout = _timeout(timeout)
        self._session: aiohttp.ClientSession | None = None
        self._fresh_session: aiohttp.ClientSession | None = None

    @property
    def internal_url(self) -> str:
        """The internal API of the node in use."""
        return self.internal.current.url

    @property
    def public_url(self) -> str:
        """The public listener (OCSP, CRL, bundle) of the node in use."""
        return self.public.current.url

    def _http(self, *, fresh: bool = False) -> aiohttp.ClientSession:
        if fresh:
            if self._fresh_session is None or self._fresh_session.closed:
                self._fresh_session = aiohttp.ClientSession(
                    connector=aiohttp.TCPConnector(limit=64, force_close=True),
                    timeout=self._timeout)
            return self._fresh_session
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=64), timeout=self._timeout
            )
        return self._session

    async def close(self) -> None:
        """Close the pooled connections."""
        for session in (self._session, self._fresh_session):
            if session is not None:
                await session.close()

    async def _on_nodes(self, nodes: CaNodes, call: Callable[[CaNode], Awaitable[_T]], *,
                        replayable: bool, only: str | None = None) -> tuple[CaNode, _T]:
        """`call` on the first node that answers (all of them, or only the one at `only`):
        that node and its answer; CaUnavailable when none did, or when a request that is not
        `replayable` may have reached a node that then failed."""
        reasons = []
        for node in nodes.candidates():
            if only is not None and node.url != only:
                continue
            try:
                result = await call(node)
            except _NodeFailed as exc:
                nodes.failed(node, str(exc))
                reasons.append(f"{node.url}: {exc}")
                if exc.sent and not replayable:
                    break
                continue
            nodes.succeeded(node, use=only is None)
            return node, result
        raise CaUnavailable("the CA cannot be reached (" + "; ".join(reasons) + ")")

    async def _api(self, method: str, path: str | Callable[[CaNode], str], *,
                   json: Any = None, replayable: bool,
                   client_timeout: aiohttp.ClientTimeout | None = None,
                   only: str | None = None) -> tuple[CaNode, dict[str, Any]]:
        """One internal API call (`path` may depend on the node asked): the node that answered
        and its JSON; CaRefused for a 4xx, CaUnavailable when no node answered."""
        headers = {"Authorization": f"Bearer {self._token}"}

        async def call(node: CaNode) -> tuple[int, Any]:
            target = path(node) if callable(path) else path
            try:
                async with self._http(fresh=not replayable).request(
                    method, node.url + target, json=json, headers=headers,
                    timeout=client_timeout or self._timeout, ssl=node.ssl,
                ) as response:
                    if response.status in _NODE_DOWN_STATUSES:
                        raise _NodeFailed(f"answered {response.status}", sent=True)
                    try:
                        return response.status, await response.json(content_type=None)
                    except ValueError:
                        return response.status, {}
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise _failure(exc) from None

        node, (status, body) = await self._on_nodes(self.internal, call,
                                                    replayable=replayable, only=only)
        if not isinstance(body, dict):
            body = {}
        if status >= 500:  # the node answers, but this call failed there (a bug: no retry)
            raise CaUnavailable(f"the CA answered {status}")
        if status >= 400:
            raise CaRefused(str(body.get("message", "refused")),
                            code=str(body.get("error", "refused")), ca_status=status, body=body)
        return node, body

    async def acquire(self, user_id: str, acquisition_password: str, *,
                      ticket: AcquisitionTicket | None = None) -> Delivered:
        """POST /v1/acquire: first acquisition or re-acquisition (R-CERT-4, R-CERT-5); with a
        `ticket` from `open_acquisition` the CA does not check the password again.

        Replayable on another node: the CA refuses an acquisition while the user holds a
        usable certificate or an issuance is under way for them (R-CERT-5, checked under the
        user's lock in the shared database), so if the failed node did issue, the next node
        refuses instead of issuing a second certificate.

        A ticket is in the CA's shared store, so the node in use redeems it whichever node
        issued it, and a refused connection moves it to the next node. It is not replayed
        once sent: the failed node may have spent it (single use). Then the next node is
        asked without it and checks the acquisition password itself (counted and locking
        like the ticket's check; it is the password the CA just accepted).
        """
        request: dict[str, Any] = {"user_id": user_id,
                                   "acquisition_password": acquisition_password,
                                   "actor": "gateway"}
        if ticket is not None:
            try:
                _, body = await self._api("POST", "/v1/acquire",
                                          json={**request, "ticket": ticket.value},
                                          replayable=False)
                return _delivered(body)
            except CaUnavailable as exc:
                if len(self.internal.nodes) == 1:
                    raise
                _log.warning("acquisition_ticket_node_failed", node=ticket.node,
                             reason=str(exc))
        _, body = await self._api("POST", "/v1/acquire", json=request, replayable=True)
        return _delivered(body)

    async def open_acquisition(self, user_id: str,
                               acquisition_password: str) -> AcquisitionTicket:
        """POST /v1/acquisition-tickets: the CA checks the acquisition password (counted,
        locking) and returns a single-use ticket for `acquire` (issue 10 item 3).

        Not replayed on another node once sent: each check counts toward the password's lock
        (R-CERT-5), and a node that died after counting a wrong password would have it
        counted twice. A refused connection moves on (nothing was counted).
        """
        node, body = await self._api("POST", "/v1/acquisition-tickets", json={
            "user_id": user_id, "acquisition_password": acquisition_password,
            "actor": "gateway"}, replayable=False)
        return AcquisitionTicket(str(body["ticket"]), node.url)

    async def renew(self, serial: str, password: str) -> Delivered:
        """POST /v1/renew: a new certificate, PKCS#12 encrypted with `password` (R-CERT-6).

        Replayable on another node: the CA refuses a renewal while an issuance for the user is
        under way, and of a certificate that is no longer the user's newest (R-CERT-6, in the
        shared database), so a renewal the failed node did is not done twice.
        """
        _, body = await self._api("POST", "/v1/renew",
                               json={"serial": serial, "password": password, "actor": "gateway"},
                               replayable=True)
        return _delivered(body)

    async def issue_acquisition_password(self, user_id: str, *, actor: str) -> str:
        """POST /v1/users/{id}/acquisition-password (the welcome letter's second secret).

        Not replayed on another node once sent: a node that is only slow could store its
        password after the next node's, and the letter would carry a password that no longer
        works. A refused connection moves on.
        """
        _, body = await self._api("POST", f"/v1/users/{user_id}/acquisition-password",
                               json={"actor": actor}, replayable=False)
        return str(body["acquisition_password"])

    async def revocations(
        self, after: int | str, wait: float
    ) -> tuple[int, list[RevocationEvent]]:
        """GET /v1/revocations?after=N&wait=S (long poll); returns (last_seq, events).

        Replayable (a read). The sequence numbers are the shared database's, so `after=N`
        means the same on every node. Only the node in use is asked to wait: a node asked
        because it failed answers at once, so the move to it is known (and on /metrics) now,
        not after its long poll; the follower's next request waits there."""
        timeout = _timeout(wait + 10)

        def path(node: CaNode) -> str:
            waits = wait if node is self.internal.current else 0
            return f"/v1/revocations?after={after}&wait={waits:g}"

        _, body = await self._api("GET", path, client_timeout=timeout, replayable=True)
        events = [
            RevocationEvent(int(r["seq"]), str(r["serial"]), str(r["user_id"]),
                            str(r["fingerprint_sha256"]).lower())
            for r in body.get("revocations", [])
        ]
        return int(body.get("last_seq", after)), events

    async def fetch_public(self, path: str, *, seconds: float, method: str = "GET",
                           data: bytes | None = None, content_type: str | None = None,
                           only: str | None = None) -> bytes:
        """A public resource (OCSP, CRL, trust bundle) from the first public node that answers
        200 (or from the one at `only`). Replayable: these are reads (an OCSP POST only
        asks)."""

        async def call(node: CaNode) -> bytes:
            return await self._fetch_from(node.url + path, seconds=seconds, method=method,
                                          data=data, content_type=content_type)

        _, body = await self._on_nodes(self.public, call, replayable=True, only=only)
        return body

    async def probe_failed_nodes(self) -> None:
        """Ask each failed node whose back-off is over whether it is back (gateway/ca_nodes.py):
        the internal API for the feed's position, the public listener for /health. A node
        that answers is up again (on /metrics) and is used again if configured first."""
        for node in self.internal.due_for_probe():
            with contextlib.suppress(CaUnavailable, CaRefused):
                await self._api("GET", "/v1/revocations?after=latest&wait=0", replayable=True,
                                only=node.url, client_timeout=_timeout(_PROBE_SECONDS))
                self.internal.fail_back(node)
        for node in self.public.due_for_probe():
            with contextlib.suppress(CaUnavailable):
                await self.fetch_public("/health", seconds=_PROBE_SECONDS, only=node.url)
                self.public.fail_back(node)

    async def watch_nodes(self, interval: float = 1.0) -> None:
        """Probe failed nodes every `interval` seconds until cancelled (the app's background
        tasks); nothing to do with one node, or while every node answers."""
        while True:
            await asyncio.sleep(interval)
            if len(self.internal.nodes) > 1 or len(self.public.nodes) > 1:
                await self.probe_failed_nodes()

    async def _fetch_from(self, url: str, *, seconds: float, method: str,
                          data: bytes | None, content_type: str | None) -> bytes:
        headers = {"Content-Type": content_type} if content_type else {}
        try:
            async with self._http().request(
                method, url, data=data, headers=headers,
                timeout=_timeout(seconds),
            ) as response:
                if response.status in _NODE_DOWN_STATUSES:
                    raise _NodeFailed(f"answered {response.status}", sent=True)
                if response.status != 200:
                    raise CaUnavailable(f"{url} answered {response.status}")
                return await response.content.read(8 * 1024 * 1024)
        except (TimeoutError, aiohttp.ClientError) as exc:
            raise _failure(exc) from None

    async def trust_bundle(self) -> bytes:
        """GET /certs/bundle.pem: every issuing generation and the root."""
        return await self.fetch_public("/certs/bundle.pem", seconds=10)


def _failure(exc: BaseException) -> _NodeFailed:
    """A transport error as a node failure; only a connection never made is "not sent"."""
    sent = not isinstance(exc, aiohttp.ClientConnectorError | aiohttp.ConnectionTimeoutError)
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        # Not the pinned certificate (gateway.ca_internal_trust): a replaced certificate, or
        # someone else on the node's address. Nothing was sent (not even the token).
        _log.error("ca_node_certificate_refused", node=str(exc.host), port=exc.port)
    return _NodeFailed(f"cannot be reached: {type(exc).__name__}", sent=sent)


def _delivered(body: dict[str, Any]) -> Delivered:
    return Delivered(serial=str(body["serial"]), user_id=str(body["user_id"]),
                     not_after=str(body["not_after"]),
                     pkcs12=base64.b64decode(body["pkcs12"]))
