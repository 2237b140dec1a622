"""The reverse proxy to the trading backend (R-PX-1, R-PX-2).

* All methods; request and response bodies streamed (bodies up to 256 KiB with a known length
  are relayed in one piece, which is faster); WebSocket relayed frame by frame.
* Hop-by-hop headers (RFC 9110 §7.6.1, plus those named in Connection) are removed both ways.
* Every `X-Sekisho-*` header from the client is removed; the gateway sets its own identity
  headers. The gateway's own cookies are not forwarded.
* Timeouts: connect and per-read (`backend_connect_timeout`, `backend_read_timeout`). A
  backend that cannot be reached gives a 502 page, one that does not answer a 504 page.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote

import aiohttp
import structlog
from aiohttp import WSMsgType, web
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.errors import BackendTimeout, BackendUnavailable

_log = structlog.get_logger("gateway.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_WS_HANDSHAKE = frozenset({
    "sec-websocket-key", "sec-websocket-version", "sec-websocket-extensions",
    "sec-websocket-protocol", "sec-websocket-accept",
})
_DROP_REQUEST = HOP_BY_HOP | {"host", "content-length", "x-forwarded-for", "x-forwarded-proto",
                              "x-forwarded-host", "forwarded"}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
IDENTITY_PREFIX = "x-sekisho-"
OWN_COOKIE_PREFIX = "__Host-sekisho-"
SMALL_BODY = 256 * 1024
CHUNK = 64 * 1024

HEADER_USER = "X-Sekisho-User"
HEADER_ROLE = "X-Sekisho-Role"
HEADER_CUSTOMER = "X-Sekisho-Customer"  # percent-encoded UTF-8
HEADER_NAME = "X-Sekisho-Name"  # percent-encoded UTF-8
HEADER_LAST_LOGIN = "X-Sekisho-Last-Login"  # ISO 8601, empty at the first login
HEADER_CERT_SERIAL = "X-Sekisho-Cert-Serial"


@dataclass(frozen=True)
class Identity:
    """Who the backend is told is asking."""

    user_id: str
    role: str
    customer: str
    name: str
    last_login: datetime | None
    serial: str

    def headers(self) -> dict[str, str]:
        """The identity headers (non-ASCII values percent-encoded)."""
        return {
            HEADER_USER: self.user_id, HEADER_ROLE: self.role,
            HEADER_CUSTOMER: quote(self.customer, safe=""), HEADER_NAME: quote(self.name, safe=""),
            HEADER_LAST_LOGIN: self.last_login.isoformat() if self.last_login else "",
            HEADER_CERT_SERIAL: self.serial,
        }


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    values = headers.getall("Connection", [])
    return {token.strip().lower() for value in values for token in value.split(",")}


def _strip_own_cookies(value: str) -> str:
    parts = [p for p in value.split(";") if not p.strip().startswith(OWN_COOKIE_PREFIX)]
    return ";".join(parts).strip()


def forward_request_headers(request: web.Request, identity: Identity, *,
                            websocket: bool = False) -> CIMultiDict[str]:
    """The headers sent to the backend: client's minus hop-by-hop and X-Sekisho-*, plus ours."""
    named = _connection_tokens(request.headers)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in request.headers.items():
        lower = name.lower()
        if (lower in _DROP_REQUEST or lower in named or lower.startswith(IDENTITY_PREFIX)
                or (websocket and lower in _WS_HANDSHAKE)):
            continue
        if lower == "cookie":
            value = _strip_own_cookies(value)
            if not value:
                continue
        out.add(name, value)
    out.update(identity.headers())
    peer = request.remote or ""
    out["X-Forwarded-For"] = peer
    out["X-Forwarded-Proto"] = "https"
    out["X-Forwarded-Host"] = request.host
    return out


def _response_headers(upstream: aiohttp.ClientResponse) -> CIMultiDict[str]:
    named = _connection_tokens(upstream.headers)
    return CIMultiDict(
        (name, value) for name, value in upstream.headers.items()
        if name.lower() not in _DROP_RESPONSE and name.lower() not in named
    )


class Proxy:
    """Relays requests to the backend over a pooled keep-alive client."""

    def __init__(self, backend_url: str, *, connect_timeout: timedelta,
                 read_timeout: timedelta, admin_path_prefixes: tuple[str, ...]) -> None:
        self._backend = backend_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None,
                                              connect=connect_timeout.total_seconds(),
                                              sock_read=read_timeout.total_seconds())
        self._admin_prefixes = admin_path_prefixes
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        """Open the client (call on the serving loop)."""
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30, ttl_dns_cache=None),
            timeout=self._timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the client."""
        if self._http is not None:
            await self._http.close()

    def admin_only(self, path: str) -> bool:
        """R-PX-2: whether `path` (decoded) falls under an admin-only prefix."""
        candidates = {path, posixpath.normpath(path) + ("/" if path.endswith("/") else "")}
        for candidate in candidates:
            slashed = candidate if candidate.endswith("/") else candidate + "/"
            if any(slashed.startswith(prefix if prefix.endswith("/") else prefix + "/")
                   for prefix in self._admin_prefixes):
                return True
        return False

    def _url(self, request: web.Request) -> URL:
        return URL(self._backend + request.raw_path, encoded=True)

    async def http(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        """Relay one HTTP request and its response."""
        assert self._http is not None
        headers = forward_request_headers(request, identity)
        data: bytes | aiohttp.StreamReader | None = None
        if request.body_exists:
            length = request.content_length
            data = (await request.read() if length is not None and length <= SMALL_BODY
                    else request.content)
        try:
            upstream = await self._http.request(
                request.method, self._url(request), headers=headers, data=data,
                allow_redirects=False,
            )
        except TimeoutError:
            raise BackendTimeout("the trading backend did not answer") from None
        except aiohttp.ClientError as exc:
            _log.warning("backend_unavailable", error=type(exc).__name__)
            raise BackendUnavailable("the trading backend cannot be reached") from None
        try:
            out_headers = _response_headers(upstream)
            length = upstream.content_length
            if request.method != "HEAD" and length is not None and length <= SMALL_BODY:
                try:
                    body = await upstream.read()
                except TimeoutError:
                    raise BackendTimeout("the trading backend did not answer") from None
                except aiohttp.ClientError:
                    raise BackendUnavailable("the trading backend broke the answer") from None
                return web.Response(status=upstream.status, reason=upstream.reason,
                                    headers=out_headers, body=body)
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason,
                                          headers=out_headers)
            if length is not None:
                response.content_length = length
            await response.prepare(request)
            if request.method != "HEAD":
                try:
                    async for chunk in upstream.content.iter_chunked(CHUNK):
                        await response.write(chunk)
                except (TimeoutError, aiohttp.ClientError) as exc:
                    # Headers are gone already: all we can do is cut the connection.
                    _log.warning("backend_stream_broken", error=type(exc).__name__)
                    if request.transport is not None:
                        request.transport.close()
                    return response
            await response.write_eof()
            return response
        finally:
            upstream.release()

    async def websocket(self, request: web.Request, identity: Identity,
                        relays: set[asyncio.Task[None]], touch: Callable[[], None],
                        ) -> web.StreamResponse:
        """Relay a WebSocket; ending the session cancels the relay (close code 1008)."""
        assert self._http is not None
        headers = forward_request_headers(request, identity, websocket=True)
        protocols = tuple(p.strip() for p in
                          request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                          if p.strip())
        try:
            upstream = await self._http.ws_connect(
                self._url(request), headers=headers, protocols=protocols, autoping=True,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
            )
        except TimeoutError:
            raise BackendTimeout("the trading backend did not answer") from None
        except aiohttp.WSServerHandshakeError as exc:
            raise BackendUnavailable(f"the backend refused the WebSocket ({exc.status})") from None
        except aiohttp.ClientError:
            raise BackendUnavailable("the trading backend cannot be reached") from None
        client = web.WebSocketResponse(protocols=(upstream.protocol,) if upstream.protocol
                                       else (), autoping=True)
        await client.prepare(request)
        relay = asyncio.create_task(self._pump(client, upstream, touch))
        relays.add(relay)
        try:
            await relay
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise
            # The session ended (logout, re-login, revocation, timeout).
            await client.close(code=aiohttp.WSCloseCode.POLICY_VIOLATION, message=b"session ended")
        finally:
            relays.discard(relay)
            await upstream.close()
            if not client.closed:
                await client.close()
        return client

    @staticmethod
    async def _pump(client: web.WebSocketResponse, upstream: aiohttp.ClientWebSocketResponse,
                    touch: Callable[[], None]) -> None:
        async def to_backend() -> None:
            async for message in client:
                touch()  # a user operation (R-SES-1)
                if message.type is WSMsgType.TEXT:
                    await upstream.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await upstream.send_bytes(message.data)

        async def to_client() -> None:
            async for message in upstream:
                if message.type is WSMsgType.TEXT:
                    await client.send_str(message.data)
                elif message.type is WSMsgType.BINARY:
                    await client.send_bytes(message.data)

        tasks = [asyncio.create_task(to_backend()), asyncio.create_task(to_client())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks to upgrade to a WebSocket."""
    return (request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in _connection_tokens(request.headers))

