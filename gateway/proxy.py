"""The reverse proxy to the trading backend (R-PX-1, R-PX-2).

* All methods; request and response bodies streamed (bodies up to 256 KiB with a known length
  are relayed in one piece, which is faster); WebSocket relayed frame by frame.
* Hop-by-hop headers (RFC 9110 §7.6.1, plus those named in Connection) are removed both ways.
* Every `X-Sekisho-*` header from the client is removed; the gateway sets its own identity
  headers. The gateway's own cookies are not forwarded.
* Timeouts: connect and per-read (`backend_connect_timeout`, `backend_read_timeout`). A
  backend that cannot be reached gives a 502 page, one that does not answer a 504 page.

HTTP requests go over a small keep-alive HTTP/1.1 pool of our own (`_Upstream`): the request
head is written in one piece from the client's raw header bytes, and answers are parsed by
aiohttp's C parser (llhttp) through its client protocol `ResponseHandler`, the one
`aiohttp.ClientSession` uses. Measured with bench/gateway.py (gateway alone on its core):
relaying through `ClientSession.request` cost ~90 us of CPU per request, this path ~40 us
(system calls included). `_BackendConnection` leans on three internals of `ResponseHandler`
(`_reschedule_timeout`, `_drop_timeout`, `_on_read_timeout`) and `_drain_helper`;
tests/gateway/test_upstream.py fails if an aiohttp upgrade changes them. WebSocket upgrades,
rare and long-lived, still go through `ClientSession.ws_connect`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import quote, unquote

import aiohttp
import structlog
from aiohttp import WSMsgType, web
from aiohttp.client_exceptions import ClientPayloadError, ServerDisconnectedError
from aiohttp.client_proto import ResponseHandler
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from gateway.errors import BackendTimeout, BackendUnavailable, BadRequest, Forbidden

_log = structlog.get_logger("gateway.proxy")

HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "proxy-connection",
    "te", "trailer", "trailers", "transfer-encoding", "upgrade",
})
_WS_HANDSHAKE_RAW = frozenset({
    b"sec-websocket-key", b"sec-websocket-version", b"sec-websocket-extensions",
    b"sec-websocket-protocol", b"sec-websocket-accept",
})
# Headers the client may not set for the backend: framing and routing ones the gateway sets
# itself, and the "who/where is the client" family that frameworks trust behind a proxy
# (X-Original-URL / X-Rewrite-URL even re-route a request past the admin-prefix check).
_DROP_REQUEST = HOP_BY_HOP | {
    "host", "content-length", "forwarded", "x-forwarded-for", "x-forwarded-proto",
    "x-forwarded-host", "x-forwarded-port", "x-forwarded-prefix", "x-forwarded-server",
    "x-forwarded-scheme", "x-forwarded-ssl", "x-real-ip", "x-client-ip", "true-client-ip",
    "x-cluster-client-ip", "x-original-url", "x-rewrite-url", "x-original-host",
}
_DROP_RESPONSE = HOP_BY_HOP | {"content-length"}
_DROP_REQUEST_RAW = frozenset(name.encode() for name in _DROP_REQUEST)
IDENTITY_PREFIX = "x-sekisho-"
_IDENTITY_PREFIX_RAW = IDENTITY_PREFIX.encode()
OWN_COOKIE_PREFIX = "__Host-sekisho-"
_OWN_COOKIE_PREFIX_RAW = OWN_COOKIE_PREFIX.encode()
# On every response the gateway sends, proxied or its own (issue 10 item 14). No
# includeSubDomains: other hosts of the bank's domain are not ours to pin to HTTPS.
SECURITY_HEADERS = {
    "Strict-Transport-Security": "max-age=31536000",
    "X-Content-Type-Options": "nosniff",
    "Server": "Sekisho",
}
SMALL_BODY = 256 * 1024
CHUNK = 64 * 1024
POOL_LIMIT = 256  # open connections to the backend at most
POOL_IDLE = 30.0  # seconds an idle backend connection is kept (aiohttp's server keeps 75 s)
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

HEADER_USER = "X-Sekisho-User"
HEADER_ROLE = "X-Sekisho-Role"
HEADER_CUSTOMER = "X-Sekisho-Customer"  # percent-encoded UTF-8
HEADER_NAME = "X-Sekisho-Name"  # percent-encoded UTF-8
HEADER_LAST_LOGIN = "X-Sekisho-Last-Login"  # ISO 8601, empty at the first login
HEADER_CERT_SERIAL = "X-Sekisho-Cert-Serial"
# The session's CSRF token, so the backend's header can offer the one-click ログアウト form (§3.1).
HEADER_CSRF = "X-Sekisho-Csrf"


@dataclass(frozen=True)
class Identity:
    """Who the backend is told is asking."""

    user_id: str
    role: str
    customer: str
    name: str
    last_login: datetime | None
    serial: str
    csrf: str = ""

    def headers(self) -> dict[str, str]:
        """The identity headers (non-ASCII values percent-encoded)."""
        return {
            HEADER_USER: self.user_id, HEADER_ROLE: self.role,
            HEADER_CUSTOMER: quote(self.customer, safe=""), HEADER_NAME: quote(self.name, safe=""),
            HEADER_LAST_LOGIN: self.last_login.isoformat() if self.last_login else "",
            HEADER_CERT_SERIAL: self.serial, HEADER_CSRF: self.csrf,
        }


@functools.lru_cache(maxsize=4096)
def identity_block(identity: Identity) -> bytes:
    """The identity headers as header lines, built once per identity (one per session)."""
    lines = []
    for name, value in identity.headers().items():
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"{name} would break the request head")
        lines.append(f"{name}: {value}\r\n")
    return "".join(lines).encode("utf-8")


def _connection_tokens(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    values = headers.getall("Connection", [])
    return {token.strip().lower() for value in values for token in value.split(",")}


@functools.lru_cache(maxsize=256)
def _named_raw(connection: str) -> frozenset[bytes]:
    """Header names (lower-case bytes, "_" read as "-") that a Connection header names."""
    return frozenset(token.strip().lower().replace("_", "-").encode("utf-8", "surrogateescape")
                     for token in connection.split(","))


def _strip_own_cookies_raw(value: bytes) -> bytes:
    if _OWN_COOKIE_PREFIX_RAW not in value:
        return value
    parts = [p for p in value.split(b";") if not p.strip().startswith(_OWN_COOKIE_PREFIX_RAW)]
    return b";".join(parts).strip()


def _client_headers(request: web.Request, *, websocket: bool = False,
                    ) -> list[tuple[bytes, bytes]]:
    """The client's headers the backend may see, as raw bytes (already checked by aiohttp's
    parser: no CR, LF or NUL): minus hop-by-hop ones and those its Connection header names,
    every X-Sekisho-* header, our own cookies and, for a WebSocket, the handshake headers."""
    connections = request.headers.getall("Connection", ())
    named = _named_raw(",".join(connections)) if connections else frozenset()
    kept = []
    for name, value in request.raw_headers:
        # CGI/WSGI backends turn "-" and "_" both into "_" (HTTP_X_SEKISHO_ROLE): a client's
        # X_Sekisho_Role would merge with ours. Names are compared with "_" read as "-".
        lower = name.lower().replace(b"_", b"-")
        if (lower in _DROP_REQUEST_RAW or lower in named or lower.startswith(_IDENTITY_PREFIX_RAW)
                or (websocket and lower in _WS_HANDSHAKE_RAW)):
            continue
        if lower == b"cookie":
            value = _strip_own_cookies_raw(value)
            if not value:
                continue
        kept.append((name, value))
    return kept


def forward_request_headers(request: web.Request, identity: Identity, public_host: str, *,
                            websocket: bool = False) -> CIMultiDict[str]:
    """The headers sent to the backend: client's minus hop-by-hop and X-Sekisho-*, plus ours
    (client address and host from the gateway's own knowledge, never the client's headers)."""
    out: CIMultiDict[str] = CIMultiDict(
        (name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape"))
        for name, value in _client_headers(request, websocket=websocket))
    out.update(identity.headers())
    out["X-Forwarded-For"] = out["X-Real-IP"] = request.remote or ""
    out["X-Forwarded-Proto"] = "https"
    out["X-Forwarded-Host"] = public_host
    return out


def request_head(request: web.Request, identity: Identity, backend_host: bytes,
                 framing: bytes, public_host: bytes = b"") -> list[bytes]:
    """The request head for the backend, as the pieces of one write: the rules of
    `forward_request_headers`; `framing` is the Content-Length or Transfer-Encoding line
    chosen for the body. The target is relayed only once `checked_target` accepted it."""
    target = checked_target(request.raw_path)
    remote = (request.remote or "").encode()
    parts = [f"{request.method} {target} HTTP/1.1\r\n".encode("utf-8", "surrogateescape"),
             b"Host: ", backend_host, b"\r\n"]
    for name, value in _client_headers(request):
        parts += (name, b": ", value, b"\r\n")
    parts += (identity_block(identity),
              b"X-Forwarded-For: ", remote, b"\r\nX-Real-IP: ", remote,
              b"\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: ",
              public_host, b"\r\n", framing, b"\r\n")
    return parts


# -- the request target (issue 10 items 11, 13) --------------------------------------------

# Escapes whose decoding a backend may or may not apply before routing: "/" "\" "." ";" "%"
# (double encoding), NUL and other controls. A target holding one is refused, so that the
# path the admin rule saw and the path the backend routes are the same string.
_AMBIGUOUS_ESCAPE = re.compile(r"%(?:2[fFeE5]|5[cC]|3[bB]|[01][0-9a-fA-F]|7[fF])")
_ESCAPE = re.compile(r"%(?![0-9a-fA-F]{2})")


@functools.lru_cache(maxsize=4096)
def checked_target(raw_target: str) -> str:
    """The origin-form target relayed to the backend, unchanged, or BadRequest (400).

    Refused: absolute-form and asterisk-form targets, "\\" and ";" in the path, empty
    segments ("//"), dot segments ("." and ".." raw), segments ending in "." or a space
    (Windows servers drop them), encoded "/", "\\", ".", ";", "%" (double encoding), NUL and
    controls, malformed escapes. What is left decodes the same on every backend, so the
    admin-prefix check (on that decoding) and the backend's routing agree.
    """
    if not raw_target.startswith("/") or raw_target.startswith("//"):
        raise BadRequest("the request target must be a path", code="bad_target")
    path = raw_target.split("?", 1)[0]
    if "\\" in path or ";" in path or _AMBIGUOUS_ESCAPE.search(path) or _ESCAPE.search(path) \
            or any(ord(c) < 0x21 or ord(c) == 0x7F for c in path):
        raise BadRequest("the request target is ambiguous", code="bad_target")
    decoded = unquote(path)
    # A backend that applies Unicode compatibility folding would read "／" as "/", "．" as
    # "." and "％" as "%": the folded form must be as unambiguous as the decoded one.
    folded = unicodedata.normalize("NFKC", decoded)
    if folded != decoded and any(c in folded for c in "\\;%"):
        raise BadRequest("the request target is ambiguous", code="bad_target")
    for form in {decoded, folded}:
        segments = form.split("/")[1:]
        for index, segment in enumerate(segments):
            if (not segment and index < len(segments) - 1) or segment in (".", "..") \
                    or (segment and segment[-1] in ". "):
                raise BadRequest("the request target is ambiguous", code="bad_target")
    return raw_target


def _response_headers(headers: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    out = CIMultiDict(headers)  # copied in C; then the few names to drop are deleted
    named = _connection_tokens(headers) if "Connection" in headers else ()
    for name in (*_DROP_RESPONSE, *named):
        if name in out:
            del out[name]
    out.update(SECURITY_HEADERS)  # ours replace the backend's (Server: no version)
    return out


def normalise_origin(origin: str) -> str:
    """scheme://host[:port] in lower case, without the scheme's default port ("null" and
    anything unparsable stay as they are, and match nothing configured)."""
    try:
        url = URL(origin.strip())
    except ValueError:
        return origin
    if not url.scheme or not url.host or url.path not in ("", "/") or url.query_string:
        return origin
    default = {"https": 443, "http": 80}.get(url.scheme.lower())
    port = "" if url.port is None or url.port == default else f":{url.port}"
    return f"{url.scheme.lower()}://{url.host.lower()}{port}"


def _content_length(headers: CIMultiDictProxy[str]) -> int | None:
    value = headers.get("Content-Length")
    if value is None or not value.isdigit():
        return None
    return int(value)


class _BackendConnection(ResponseHandler):
    """aiohttp's client protocol (llhttp parser, flow control, errors), with its per-read
    timeout kept as a deadline that the pool's watchdog checks, instead of a timer armed
    and cancelled on every read (two `call_later`s per request)."""

    deadline: float | None = None
    parser_for_head: bool | None = None  # the parser's kind (HEAD answers have no body)

    def _reschedule_timeout(self) -> None:
        timeout = self._read_timeout
        self.deadline = self._loop.time() + timeout if timeout else None

    def _drop_timeout(self) -> None:
        self.deadline = None

    def resume_reading(self, resume_parser: bool = True) -> None:
        # aiohttp's StreamReader calls this after every read, paused or not; unpaused,
        # there is nothing to resume (no parser backlog: responses are not decompressed).
        if self._reading_paused or self._buffer_paused:
            super().resume_reading(resume_parser)


class _Upstream:
    """Keep-alive HTTP/1.1 connections to one backend address: a LIFO pool with a limit.

    A connection goes back to the pool only after its response was read to the end and
    neither side asked to close; idle connections older than `idle` seconds are closed.
    """

    def __init__(self, host: str, port: int, *, connect_timeout: float, read_timeout: float,
                 limit: int = POOL_LIMIT, idle: float = POOL_IDLE) -> None:
        self.host, self.port = host, port
        self.host_header = (f"[{host}]:{port}" if ":" in host else f"{host}:{port}").encode()
        self.read_timeout = read_timeout
        self._connect_timeout = connect_timeout
        self._limit = limit
        self._idle_seconds = idle
        self._idle: collections.deque[tuple[_BackendConnection, float]] = collections.deque()
        self._waiters: collections.deque[asyncio.Future[_BackendConnection | None]] = (
            collections.deque())
        self._open = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._busy: set[_BackendConnection] = set()
        self._watchdog: asyncio.Task[None] | None = None
        self._tick = min(0.5, read_timeout / 4)

    def _pop_idle(self, now: float) -> _BackendConnection | None:
        while self._idle:
            protocol, since = self._idle.pop()
            if protocol.is_connected() and not protocol.should_close \
                    and now - since < self._idle_seconds:
                return protocol
            self._discard(protocol)
        return None

    async def acquire(self) -> tuple[_BackendConnection, bool]:
        """A connection and whether it was used before (then a failure may be a stale one)."""
        protocol, reused = await self._acquire()
        self._busy.add(protocol)
        if self._watchdog is None:
            self._watchdog = asyncio.create_task(self._watch(), name="backend-read-timeouts")
        return protocol, reused

    async def _watch(self) -> None:
        """Fail the reads that waited longer than the read timeout (checked every `_tick`
        seconds while requests are in flight; the task ends when none is)."""
        loop = asyncio.get_running_loop()
        try:
            while self._busy:
                await asyncio.sleep(self._tick)
                now = loop.time()
                for protocol in list(self._busy):
                    deadline = protocol.deadline
                    if deadline is not None and now >= deadline:
                        protocol.deadline = None
                        protocol._on_read_timeout()
        finally:
            self._watchdog = None

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        # Remembered: on Python 3.11 every get_running_loop() is a getpid() system call.
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop

    async def _acquire(self) -> tuple[_BackendConnection, bool]:
        loop = self._running_loop()
        protocol = self._pop_idle(loop.time())
        if protocol is not None:
            return protocol, True
        while self._open >= self._limit:
            waiter: asyncio.Future[_BackendConnection | None] = loop.create_future()
            self._waiters.append(waiter)
            try:
                handed = await waiter
            except asyncio.CancelledError:
                handed = waiter.result() if waiter.done() and not waiter.cancelled() else None
                if handed is not None:
                    self.release(handed, reusable=True)  # pass it on
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                raise
            if handed is not None:
                return handed, True
            protocol = self._pop_idle(loop.time())
            if protocol is not None:
                return protocol, True
        self._open += 1
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    functools.partial(_BackendConnection, loop), self.host, self.port)
        except BaseException:
            self._open -= 1
            self._wake()
            raise
        return protocol, False  # (aiohttp's protocol sets TCP_NODELAY when connected)

    def release(self, protocol: _BackendConnection, *, reusable: bool) -> None:
        """Give a connection back (kept when `reusable` and still clean) or close it."""
        self._busy.discard(protocol)
        protocol.deadline = None
        if reusable and protocol.is_connected() and not protocol.should_close:
            while self._waiters:
                waiter = self._waiters.popleft()
                if not waiter.done():
                    waiter.set_result(protocol)
                    return
            now = self._running_loop().time()
            while self._idle and now - self._idle[0][1] >= self._idle_seconds:
                self._discard(self._idle.popleft()[0])
            self._idle.append((protocol, now))
            return
        self._discard(protocol)
        self._wake()

    def _discard(self, protocol: _BackendConnection) -> None:
        protocol.close()
        self._open -= 1

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def close(self) -> None:
        """Close every idle connection (busy ones close when their request ends)."""
        while self._idle:
            self._discard(self._idle.pop()[0])
        if self._watchdog is not None:
            self._watchdog.cancel()


class Proxy:
    """Relays requests to the backend over pooled keep-alive connections."""

    def __init__(self, backend_url: str, *, connect_timeout: timedelta,
                 read_timeout: timedelta, admin_path_prefixes: tuple[str, ...],
                 public_url: str = "https://localhost",
                 websocket_origins: tuple[str, ...] = ()) -> None:
        # What the backend is told the public host is (X-Forwarded-Host): the configured
        # public_url's, never the client's Host header.
        self.public_host = URL(public_url).raw_authority
        self._public_host_raw = self.public_host.encode("ascii")
        self._origins = frozenset(normalise_origin(o) for o in
                                  (websocket_origins or (public_url,)))
        self._connect_timeout = connect_timeout.total_seconds()
        self._read_timeout = read_timeout.total_seconds()
        self._timeout = aiohttp.ClientTimeout(total=None, connect=self._connect_timeout,
                                              sock_read=self._read_timeout)
        self._admin_prefixes = tuple(
            unicodedata.normalize("NFKC", p if p.endswith("/") else p + "/").casefold()
            for p in admin_path_prefixes)
        self._admin_paths: dict[str, bool] = {}
        self._http: aiohttp.ClientSession | None = None
        self._upstream: _Upstream | None = None
        self._retired: list[_Upstream] = []
        self.backend_url = backend_url

    @property
    def backend_url(self) -> str:
        """The backend's base URL (http://host:port); setting it drops the idle connections."""
        return self._backend

    @backend_url.setter
    def backend_url(self, value: str) -> None:
        url = URL(value)
        if url.scheme != "http" or not url.host or url.path not in ("", "/"):
            raise ValueError(f"backend_url must be http://host:port, not {value!r}")
        self._backend = value.rstrip("/")
        if self._upstream is not None:  # closed with the proxy (this may run on another thread)
            self._retired.append(self._upstream)
        self._upstream = _Upstream(url.host, url.port or 80,
                                   connect_timeout=self._connect_timeout,
                                   read_timeout=self._read_timeout)

    async def start(self) -> None:
        """Open the WebSocket client (call on the serving loop)."""
        self._http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=POOL_LIMIT, keepalive_timeout=POOL_IDLE,
                                           ttl_dns_cache=None),
            timeout=self._timeout, auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(), skip_auto_headers=("User-Agent",),
        )

    async def close(self) -> None:
        """Close the clients."""
        for upstream in (*self._retired, self._upstream):
            if upstream is not None:
                upstream.close()
        if self._http is not None:
            await self._http.close()

    def admin_only(self, raw_target: str) -> bool:
        """R-PX-2: whether the target falls under an admin-only prefix. The target must pass
        `checked_target` first (BadRequest otherwise): that leaves one decoding, which is
        compared case-insensitively and after Unicode compatibility folding (a backend that
        folds "/ADMIN/" or a fullwidth "／ａｄｍｉｎ／" must not see an admin page unchecked)."""
        known = self._admin_paths.get(raw_target)
        if known is None:
            checked_target(raw_target)
            path = unquote(raw_target.split("?", 1)[0])
            folded = unicodedata.normalize("NFKC", path).casefold()
            slashed = folded if folded.endswith("/") else folded + "/"
            known = slashed.startswith(self._admin_prefixes)
            if len(raw_target) <= 256:  # the answers for the site's own paths are remembered
                if len(self._admin_paths) >= 4096:
                    self._admin_paths.clear()
                self._admin_paths[raw_target] = known
        return known

    def _url(self, request: web.Request) -> URL:
        """The backend URL of a request: the backend's origin and the checked target as
        components (never a string concatenation with the client's target)."""
        path, _, query = checked_target(request.raw_path).partition("?")
        base = URL(self._backend)
        return URL.build(scheme=base.scheme, host=base.raw_host or "", port=base.port,
                         path=path, query_string=query, encoded=True)

    def check_origin(self, request: web.Request) -> None:
        """Issue 10 item 12: a browser's WebSocket from another site (cross-site WebSocket
        hijacking: the cookie and the certificate go along) is refused. Browsers always
        send Origin on a WebSocket; a client without one is not a browser page."""
        origin = request.headers.getall("Origin", [])
        if len(origin) > 1 or (origin and normalise_origin(origin[0]) not in self._origins):
            raise Forbidden("this page may not open a WebSocket here", code="origin_refused")

    async def http(self, request: web.Request, identity: Identity) -> web.StreamResponse:
        """Relay one HTTP request and its response."""
        upstream = self._upstream
        assert upstream is not None
        body = b""
        stream: StreamReader | None = None
        length = request.content_length
        if request.body_exists:
            if length is not None and length <= SMALL_BODY:
                body = await request.read()
            else:
                stream = request.content
        if stream is not None:
            framing = (b"Transfer-Encoding: chunked\r\n" if length is None
                       else b"Content-Length: %d\r\n" % length)
        elif body or length is not None or request.method in _BODY_METHODS:
            framing = b"Content-Length: %d\r\n" % len(body)
        else:
            framing = b""
        head = request_head(request, identity, upstream.host_header, framing,
                            self._public_host_raw)
        if body:
            head.append(body)
        # A reused connection that fails before any answer was closed by the backend while
        # idle: an idempotent request without a streamed body is sent again, once. (One
        # coroutine for the whole relay: every extra frame is walked at each suspension.)
        retry = stream is None and request.method in _IDEMPOTENT
        while True:
            try:
                protocol, reused = await upstream.acquire()
            except TimeoutError:
                raise BackendTimeout("the trading backend did not answer") from None
            except OSError as exc:
                _log.warning("backend_unavailable", error=type(exc).__name__)
                raise BackendUnavailable("the trading backend cannot be reached") from None
            done = False
            try:
                is_head = request.method == "HEAD"
                if protocol.parser_for_head is not is_head:
                    # A connection only comes back after an answer read to its end, so its
                    # llhttp parser stands between messages: kept unless the kind changes.
                    protocol.set_response_params(skip_payload=is_head, read_until_eof=True,
                                                 auto_decompress=False,
                                                 read_timeout=upstream.read_timeout)
                    protocol.parser_for_head = is_head
                transport = protocol.transport
                assert transport is not None
                transport.write(b"".join(head))
                sender = None
                if stream is None:
                    protocol.start_timeout()
                else:
                    sender = asyncio.create_task(_send_body(protocol, stream, length is None))
                try:
                    message, payload = await protocol.read()
                    while 100 <= message.code < 200 and message.code != 101:
                        message, payload = await protocol.read()  # interim answers (100 Continue)
                except TimeoutError:
                    raise BackendTimeout("the trading backend did not answer") from None
                except (HttpProcessingError, aiohttp.ClientError, OSError) as exc:
                    if retry and reused and isinstance(exc, ServerDisconnectedError | OSError):
                        retry = False  # the backend closed an idle connection:
                        continue  # send the request again, once
                    _log.warning("backend_unavailable", error=type(exc).__name__)
                    raise BackendUnavailable("the trading backend cannot be reached") from None
                finally:
                    if sender is not None and not sender.done():
                        # Answered before the whole body went out: the connection is spoilt.
                        sender.cancel()
                        protocol.force_close()
                if message.code == 101:
                    raise BackendUnavailable("the trading backend switched protocols unasked")
                out_headers = _response_headers(message.headers)
                content_length = _content_length(message.headers)
                if not is_head and content_length is not None and content_length <= SMALL_BODY:
                    try:
                        # Usually the whole answer came in one piece: no need to wait.
                        body = payload.read_nowait() if payload.is_eof() else await payload.read()
                    except TimeoutError:
                        raise BackendTimeout("the trading backend did not answer") from None
                    except (ClientPayloadError, aiohttp.ClientError, OSError):
                        raise BackendUnavailable("the trading backend broke the answer") from None
                    done = True
                    return web.Response(status=message.code, reason=message.reason,
                                        headers=out_headers, body=body)
                response = web.StreamResponse(status=message.code, reason=message.reason,
                                              headers=out_headers)
                if content_length is not None:
                    response.content_length = content_length
                await response.prepare(request)
                if not is_head:
                    try:
                        async for chunk in payload.iter_chunked(CHUNK):
                            await response.write(chunk)
                    except (TimeoutError, aiohttp.ClientError) as exc:
                        # Headers are gone already: all we can do is cut the connection.
                        _log.warning("backend_stream_broken", error=type(exc).__name__)
                        if request.transport is not None:
                            request.transport.close()
                        return response
                done = True
                await response.write_eof()
                return response
            finally:
                upstream.release(protocol, reusable=done)

    async def websocket(self, request: web.Request, identity: Identity,
                        relays: set[asyncio.Task[None]], touch: Callable[[], None],
                        ) -> web.StreamResponse:
        """Relay a WebSocket; ending the session cancels the relay (close code 1008)."""
        assert self._http is not None
        self.check_origin(request)
        url = self._url(request)
        headers = forward_request_headers(request, identity, self.public_host, websocket=True)
        protocols = tuple(p.strip() for p in
                          request.headers.get("Sec-WebSocket-Protocol", "").split(",")
                          if p.strip())
        try:
            upstream = await self._http.ws_connect(
                url, headers=headers, protocols=protocols, autoping=True,
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


async def _send_body(protocol: _BackendConnection, stream: StreamReader, chunked: bool) -> None:
    """Stream the client's body to the backend (chunked when its length is unknown), with
    flow control; then start the read timeout. A failure fails the pending response."""
    try:
        transport = protocol.transport
        assert transport is not None
        async for chunk in stream.iter_chunked(CHUNK):
            if not chunk:
                continue
            if chunked:
                transport.writelines((b"%x\r\n" % len(chunk), chunk, b"\r\n"))
            else:
                transport.write(chunk)
            await protocol._drain_helper()
        if chunked:
            transport.write(b"0\r\n\r\n")
        protocol.start_timeout()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        # The client's body broke (or the backend connection did): the exchange fails and
        # the connection is not reused.
        protocol.set_exception(aiohttp.ClientPayloadError(f"request body: {exc!r}"))


def is_websocket(request: web.Request) -> bool:
    """Whether the request asks to upgrade to a WebSocket."""
    return (request.method == "GET"
            and request.headers.get("Upgrade", "").lower() == "websocket"
            and "upgrade" in _connection_tokens(request.headers))
