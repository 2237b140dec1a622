"""The CA's public listener: a lean HTTP/1.1 path for OCSP, aiohttp for everything else.

OCSP is the one endpoint of the CA that relying parties hit at volume, and most of its cost on
aiohttp was the framework's per-connection and per-request machinery (a handler task, a
request and a response object, the router, the middleware), not the answer: a cached answer is a
dictionary lookup. So each connection starts with the small protocol below. It serves exactly
two request shapes itself:

- `POST /ocsp` (or `/ocsp/`) with a Content-Length of at most 32 KiB and the content type
  `application/ocsp-request`;
- `GET /ocsp/<base64>` without percent-escapes, query or body;

in HTTP/1.0 or 1.1, with keep-alive and pipelining. Anything else — another path, a chunked
body, `Expect`, an upgrade, a malformed or oversized head, a wrong content type, a 10 MB body —
hands the connection, with every byte read so far, to aiohttp's own request handler, which
serves the full public app: the same OCSP routes (so HTTP-level faults get their 4xx from one
place), CRLs, issuer certificates, health and metrics. Both paths answer through
`OcspService` and `answer_headers`, so an answer is the same whichever path serves it.

Every connection, on either path, counts against `ca.max_connections` and is timed by the
listener watchdog (`common.listener`): a request head not complete within `header_timeout` of
the connection or of its first byte, a silent body, or idle keep-alive past its limit closes it,
so clients that connect and stall cannot pile up.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from email.utils import formatdate
from typing import cast

import structlog
from aiohttp import web

from ca.api.internal import RUNTIME
from ca.api.ocsp import OCSP_RESPONSE, answer_headers
from ca.ocsp import (
    MAX_REQUEST_BYTES,
    MalformedRequest,
    internal_error_response,
    malformed_response,
    request_from_get_path,
)
from ca.ocsp_service import OcspAnswer, OcspService, PendingLookup
from common.listener import ConnectionGuard, ConnectionLimits, GuardedHandler, Refused
from policy.clock import Clock

_log = structlog.get_logger("ca.public")

MAX_HEAD_BYTES = 8190  # aiohttp's own limit on a request line (a 100 KB GET path is refused)
_REQUEST_LINE = re.compile(rb"(POST|GET) (/ocsp(?:/[A-Za-z0-9+/=_-]*)?) HTTP/1\.([01])")
_HEADER_LINE = re.compile(
    rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00-\x08\x0a-\x1f\x7f]*?)[ \t]*")
_DEFERRED_HEADERS = frozenset({b"transfer-encoding", b"expect", b"upgrade"})
_GET_PREFIX = b"/ocsp/"
# A request's DER and what the store must be asked before it can be answered.
_Pending = tuple[bytes, PendingLookup]


@dataclass(frozen=True, slots=True)
class RequestHead:
    """A request the fast path serves: its method, target, body length and connection mode."""

    method: bytes
    target: bytes
    content_length: int
    keep_alive: bool


def parse_head(head: bytes) -> RequestHead | None:
    """The head (request line and headers, without the blank line) of a request the fast path
    serves exactly, or None for anything it leaves to aiohttp."""
    lines = head.split(b"\r\n")
    request_line = _REQUEST_LINE.fullmatch(lines[0])
    if request_line is None:
        return None
    method, target, minor = request_line.groups()
    keep_alive = minor == b"1"
    content_length: int | None = None
    content_type: bytes | None = None
    has_host = False
    for line in lines[1:]:
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            return None
        name, value = header.group(1).lower(), header.group(2)
        if name == b"content-length":
            if content_length is not None or not value.isdigit() or len(value) > 9:
                return None
            content_length = int(value)
        elif name == b"content-type":
            if content_type is not None:
                return None
            content_type = value.partition(b";")[0].strip().lower()
        elif name == b"host":
            has_host = True
        elif name == b"connection":
            tokens = {token.strip().lower() for token in value.split(b",")}
            if b"upgrade" in tokens:
                return None
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name in _DEFERRED_HEADERS:
            return None
    if minor == b"1" and not has_host:
        return None  # RFC 9112 §3.2: aiohttp answers 400
    if method == b"POST":
        if (target not in (b"/ocsp", b"/ocsp/") or content_length is None
                or content_length > MAX_REQUEST_BYTES
                or content_type != b"application/ocsp-request"):
            return None
    elif content_length or not target.startswith(_GET_PREFIX) or target == _GET_PREFIX:
        return None
    return RequestHead(method, target, content_length or 0, keep_alive)


class PublicListener:
    """The public listener: owns the socket, the fast-path connections and aiohttp's runner."""

    def __init__(self, runner: web.AppRunner, ocsp: OcspService, clock: Clock,
                 limits: ConnectionLimits) -> None:
        self._runner = runner
        self._ocsp = ocsp
        self._clock = clock
        self.guard = ConnectionGuard(limits, "ca-public")
        self._server: asyncio.Server | None = None
        self._date = (0, "")

    @classmethod
    async def start(cls, app: web.Application, host: str, port: int, *,
                    limits: ConnectionLimits | None = None) -> PublicListener:
        """Set up `app` (the public app) and listen on host:port."""
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
        await runner.setup()
        runtime = app[RUNTIME]
        listener = cls(runner, runtime.ocsp, runtime.clock,
                       limits or runtime.config.connection_limits)
        loop = asyncio.get_running_loop()
        listener._server = await loop.create_server(
            listener._accept, host, port, reuse_address=True, backlog=1024)
        listener.guard.start()
        return listener

    def _accept(self) -> asyncio.Protocol:
        connection = _Connection(self)
        return connection if self.guard.admit(connection) else Refused()

    @property
    def port(self) -> int:
        """The bound port (useful when started on port 0)."""
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def cleanup(self) -> None:
        """Stop listening, close fast-path connections, then shut aiohttp's side down."""
        if self._server is not None:
            self._server.close()
        await self.guard.stop()
        for connection in list(self.guard.connections):
            if isinstance(connection, _Connection):
                connection.close()
        await self._runner.cleanup()

    # -- used by connections ----------------------------------------------------------------

    def aiohttp_handler(self, connection: _Connection) -> asyncio.Protocol:
        """A fresh aiohttp request handler, under the same watchdog, for a connection the fast
        path gives up (it keeps the connection's place under the cap and its clocks)."""
        server = self._runner.server
        assert server is not None
        handler = GuardedHandler(self.guard, server(), head_started=connection.head_started,
                                 opened=connection.opened)
        self.guard.release(connection)
        self.guard.connections.add(handler)
        return handler

    def try_respond(self, head: RequestHead, body: bytes) -> bytes | _Pending:
        """The whole HTTP response, or the request and the store lookup its answer needs."""
        der = self._request_der(head, body)
        if der is None:
            return self._http_response(head, OcspAnswer(malformed_response()))
        step = self._ocsp.try_respond(der)
        return self._http_response(head, step) if isinstance(step, OcspAnswer) else (der, step)

    async def complete(self, head: RequestHead, pending: _Pending) -> bytes:
        """The whole HTTP response once the store has been asked."""
        return self._http_response(head, await self._ocsp.complete(*pending))

    def internal_error(self, head: RequestHead) -> bytes:
        """OCSP internalError (RFC 6960 §2.3), for a fault of ours."""
        return self._http_response(head, OcspAnswer(internal_error_response()))

    @staticmethod
    def _request_der(head: RequestHead, body: bytes) -> bytes | None:
        if head.method == b"POST":
            return body
        try:
            return request_from_get_path(head.target[len(_GET_PREFIX):].decode("ascii"))
        except MalformedRequest:
            return None

    def _http_response(self, head: RequestHead, answer: OcspAnswer) -> bytes:
        headers = answer_headers(answer, self._clock.now(), cacheable=head.method == b"GET")
        lines = [
            "HTTP/1.1 200 OK",
            f"Content-Type: {OCSP_RESPONSE}",
            f"Content-Length: {len(answer.der)}",
            f"Date: {self._http_date()}",
            "Connection: keep-alive" if head.keep_alive else "Connection: close",
            *(f"{name}: {value}" for name, value in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + answer.der

    def _http_date(self) -> str:
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, formatdate(second, usegmt=True))
        return self._date[1]

    def released(self, connection: _Connection) -> None:
        """A connection closed."""
        self.guard.release(connection)


class _Connection(asyncio.Protocol):
    """One client connection while it is on the fast path."""

    def __init__(self, listener: PublicListener) -> None:
        self._listener = listener
        self._transport: asyncio.Transport | None = None
        self._buffer = bytearray()  # appended in place: a byte-a-time client costs linear time
        self._scanned = 0  # how far the buffer holds no blank line (no rescans)
        self._head: tuple[int, RequestHead] | None = None  # parsed, waiting for its body
        self._waiting = False  # an answer needs the store; later requests wait their turn
        self._lookup: asyncio.Task[None] | None = None
        self._write_paused = False
        self.opened = time.monotonic()
        self.idle_since: float | None = self.opened  # waiting for a request's first byte
        self.head_started: float | None = None  # a request has begun and is not complete
        self._served_one = False
        self.write_paused_at: float | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self.head_started is None:
            self.head_started = time.monotonic()
        self._buffer += data
        self._serve()

    def overdue(self, now: float, limits: ConnectionLimits) -> str | None:
        """Which limit this connection is past: a request (head and at most 32 KiB of body)
        not complete within header_timeout + body_timeout, or idle too long."""
        if self._write_paused and self.write_paused_at is not None \
                and now - self.write_paused_at > limits.send_timeout:
            return "send_timeout"  # pipelined requests, answers never read
        if self._waiting or self._write_paused:
            return None  # the store is being asked, or answers are being sent
        if self.head_started is not None:
            limit = limits.header_timeout + (limits.body_timeout if self._head else 0)
            return "request_timeout" if now - self.head_started > limit else None
        if self.idle_since is None:
            return None
        limit = limits.keepalive_timeout if self._served_one else limits.header_timeout
        return "idle_timeout" if now - self.idle_since > limit else None

    def abort(self) -> None:
        """Close at once (the watchdog: the client stalled)."""
        if self._transport is not None:
            self._transport.abort()

    def eof_received(self) -> bool:
        return False  # the client is done sending: close once what is written is flushed

    def connection_lost(self, exc: Exception | None) -> None:
        self._listener.released(self)
        if self._lookup is not None:
            self._lookup.cancel()

    def pause_writing(self) -> None:
        self._write_paused = True
        self.write_paused_at = time.monotonic()
        self._update_reading()

    def resume_writing(self) -> None:
        self._write_paused = False
        self._update_reading()
        self._serve()

    def close(self) -> None:
        """Close the connection (idle, or the listener is stopping)."""
        if self._transport is not None:
            self._transport.close()

    def _update_reading(self) -> None:
        assert self._transport is not None
        if self._waiting or self._write_paused:
            self._transport.pause_reading()
        else:
            self._transport.resume_reading()

    def _serve(self) -> None:
        transport = self._transport
        assert transport is not None
        while self._buffer and not (self._waiting or self._write_paused):
            if transport.is_closing():
                return
            if self._head is None:
                end = self._buffer.find(b"\r\n\r\n", self._scanned, MAX_HEAD_BYTES + 4)
                if end < 0:
                    # Too long, or bare-LF line ends this strict reader leaves to aiohttp.
                    if (len(self._buffer) > MAX_HEAD_BYTES
                            or self._buffer.find(b"\n\n", self._scanned) >= 0):
                        self._hand_off()
                    else:
                        self._scanned = max(0, len(self._buffer) - 3)
                    return
                head = parse_head(bytes(self._buffer[:end]))
                if head is None:
                    self._hand_off()
                    return
                self._head = (end, head)
            end, head = self._head
            stop = end + 4 + head.content_length
            if len(self._buffer) < stop:
                return
            body = bytes(self._buffer[end + 4:stop])
            del self._buffer[:stop]
            self._head, self._scanned = None, 0
            self._served_one = True
            # A pipelined request already buffered has begun; otherwise wait idle for one.
            now = time.monotonic()
            self.head_started, self.idle_since = (now, None) if self._buffer else (None, now)
            try:
                step = self._listener.try_respond(head, body)
            except Exception:
                _log.exception("ocsp_fast_path_failed")
                step = self._listener.internal_error(head)
            if not isinstance(step, bytes):
                self._waiting = True
                self._update_reading()
                self._lookup = asyncio.get_running_loop().create_task(
                    self._respond_later(head, step))
                return
            self._send(head, step)

    def _send(self, head: RequestHead, response: bytes) -> None:
        assert self._transport is not None
        self._transport.write(response)
        if not head.keep_alive:
            self._transport.close()

    async def _respond_later(self, head: RequestHead, pending: _Pending) -> None:
        try:
            response = await self._listener.complete(head, pending)
        except Exception:
            _log.exception("ocsp_fast_path_failed")
            response = self._listener.internal_error(head)
        self._lookup = None
        assert self._transport is not None
        if self._transport.is_closing():
            return
        self._send(head, response)
        self._waiting = False
        if not self._transport.is_closing():
            self._update_reading()
            self._serve()

    def _hand_off(self) -> None:
        """Give the connection, and what it sent so far, to aiohttp."""
        transport = self._transport
        assert transport is not None
        self._transport = None
        handler = self._listener.aiohttp_handler(self)
        transport.set_protocol(handler)
        handler.connection_made(transport)
        if self._buffer:
            handler.data_received(bytes(self._buffer))
        if self._write_paused:
            handler.pause_writing()
        transport.resume_reading()
