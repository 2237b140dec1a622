"""Listeners that bound what a connection may cost: time limits on every phase and a cap.

aiohttp closes a connection that sends nothing only after its keep-alive timeout, has no limit
on how long a request head or body may take to arrive, and accepts connections without bound;
asyncio's TLS handshake waits 60 s. A client that opens connections and then stalls (silent,
half a request line, headers without end, a body that stops) could hold them for minutes and
exhaust file descriptors (issue 10 item 5). So both daemons accept connections through
`serve_guarded`, which:

- refuses (closes at once) connections beyond `max_connections`, counted from the TCP accept,
  so stalled TLS handshakes count too;
- gives a TLS handshake `tls_handshake_timeout`;
- closes a connection whose request head is not complete `header_timeout` after it opened or
  after the request's first byte (slowloris), whose request body is silent for `body_timeout`,
  that sits idle between requests for longer than `keepalive_timeout`, or that reads nothing of
  an answer for `send_timeout` while the server's write buffer is full (a slow reader).

A request being handled (a long-poll, a proxied response, a WebSocket) is not timed here: its
handler has its own limits. The watchdog reads the aiohttp request handler's state (request in
progress, body at end-of-file, upgraded), which aiohttp has no public accessor for; the tests in
tests/test_listener_limits.py drive every phase against the real daemons.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, cast

import structlog

from common.config import ConfigError, Section

_log = structlog.get_logger("listener")


@dataclass(frozen=True)
class ConnectionLimits:
    """Per-listener limits (config: `header_timeout`, `body_timeout`, `keepalive_timeout`,
    `tls_handshake_timeout`, `send_timeout`, `max_connections` in the [ca] and [gateway]
    sections)."""

    header_timeout: float = 10.0
    body_timeout: float = 30.0
    keepalive_timeout: float = 60.0
    tls_handshake_timeout: float = 10.0
    send_timeout: float = 60.0
    max_connections: int = 1000

    @classmethod
    def from_section(cls, section: Section) -> ConnectionLimits:
        """Read the limits from a config section, refusing zero or negative values."""
        values = {key: section.duration(key, f"{default:g}s").total_seconds()
                  for key, default in (("header_timeout", cls.header_timeout),
                                       ("body_timeout", cls.body_timeout),
                                       ("keepalive_timeout", cls.keepalive_timeout),
                                       ("tls_handshake_timeout", cls.tls_handshake_timeout),
                                       ("send_timeout", cls.send_timeout))}
        for key, value in values.items():
            if value <= 0:
                raise ConfigError(f"{section.name}.{key} must be positive")
        return cls(**values, max_connections=section.int("max_connections",
                                                         cls.max_connections, minimum=1))

    @property
    def sweep_interval(self) -> float:
        """How often the watchdog looks: a fraction of the shortest limit."""
        return max(0.05, min(self.header_timeout, self.body_timeout,
                             self.keepalive_timeout) / 4)


class Watched(Protocol):
    """A connection the watchdog can judge and close."""

    def overdue(self, now: float, limits: ConnectionLimits) -> str | None:
        """Why the connection must be closed now, or None."""

    def abort(self) -> None:
        """Close the connection at once."""


class ConnectionGuard:
    """Counts a listener's connections and closes those past their limits."""

    def __init__(self, limits: ConnectionLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self.connections: set[Watched] = set()
        self.refused = 0
        self._sweeper: asyncio.Task[None] | None = None
        self._last_refusal_log = 0.0

    def start(self) -> None:
        """Begin sweeping (on the running loop)."""
        self._sweeper = asyncio.get_running_loop().create_task(
            self._sweep(), name=f"{self.name}-connection-watchdog")

    async def stop(self) -> None:
        """Stop sweeping."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper

    def admit(self, connection: Watched) -> bool:
        """Count a new connection, or refuse it when the cap is reached."""
        if len(self.connections) >= self.limits.max_connections:
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log > 10:  # one line per 10 s under a flood
                self._last_refusal_log = now
                _log.warning("connection_cap_reached", listener=self.name,
                             max_connections=self.limits.max_connections,
                             refused_total=self.refused)
            return False
        self.connections.add(connection)
        return True

    def release(self, connection: Watched) -> None:
        """A connection ended."""
        self.connections.discard(connection)

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self.limits.sweep_interval)
            now = time.monotonic()
            for connection in list(self.connections):
                reason = connection.overdue(now, self.limits)
                if reason is not None:
                    self.release(connection)
                    connection.abort()


class GuardedHandler(asyncio.Protocol):
    """Wraps an aiohttp request handler: times the head, the body and idle keep-alive."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.Protocol, *,
                 head_started: float | None = None, opened: float | None = None) -> None:
        self._guard = guard
        self._inner = inner
        self._transport: asyncio.BaseTransport | None = None
        now = time.monotonic()
        self._opened = opened if opened is not None else now
        self._served_one = False
        self._idle_since: float | None = self._opened  # waiting for a request's first byte
        self._head_started = head_started  # first byte of a request whose head is incomplete
        self._last_byte = now
        self._write_paused_at: float | None = None  # the client stopped reading our answer
        self.lost = False

    # -- asyncio.Protocol, forwarded to aiohttp ---------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        now = time.monotonic()
        self._last_byte = now
        if not self._busy() and self._head_started is None:
            self._head_started = now
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._guard.release(self)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._write_paused_at = time.monotonic()
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._write_paused_at = None
        self._inner.resume_writing()

    # -- the watchdog's view -----------------------------------------------------------------

    def _busy(self) -> bool:
        handler = cast(Any, self._inner)
        return bool(handler._request_in_progress or handler._messages
                    or handler._current_request is not None)

    def overdue(self, now: float, limits: ConnectionLimits) -> str | None:
        """Which limit this connection is past, if any."""
        handler = cast(Any, self._inner)
        if (self._write_paused_at is not None
                and now - self._write_paused_at > limits.send_timeout):
            return "send_timeout"
        if handler._upgraded:
            return None  # a WebSocket: the relay and the session rules time it
        if self._busy():
            self._idle_since, self._head_started, self._served_one = None, None, True
            request = handler._current_request
            if (request is not None and not request.content.is_eof()
                    and now - self._last_byte > limits.body_timeout):
                return "body_timeout"
            return None
        if self._head_started is not None:
            return "header_timeout" if now - self._head_started > limits.header_timeout \
                else None
        if self._idle_since is None:
            self._idle_since = now  # the last response has just been written
        limit = limits.keepalive_timeout if self._served_one else limits.header_timeout
        return "idle_timeout" if now - self._idle_since > limit else None

    def abort(self) -> None:
        """Close at once (no lingering: the client has stalled)."""
        if self._transport is not None:
            self._transport.abort()  # type: ignore[attr-defined]


class Refused(asyncio.Protocol):
    """A connection over the cap: closed as soon as it is accepted."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.abort()  # type: ignore[attr-defined]


class _Handshaking:
    """An accepted TCP connection during its TLS handshake: counted from the accept."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.opened = time.monotonic()
        self.task: asyncio.Task[None] | None = None

    def overdue(self, now: float, limits: ConnectionLimits) -> str | None:
        """A handshake past its timeout (the TLS layer normally ends it first)."""
        if now - self.opened > limits.tls_handshake_timeout + limits.sweep_interval + 1:
            return "tls_handshake_timeout"
        return None

    def abort(self) -> None:
        """Give up the handshake and close the socket."""
        if self.task is not None:
            self.task.cancel()
        self.sock.close()


class TlsListener:
    """A TLS listener with its own accept loop, so that a connection is counted (and refused
    past the cap) at the TCP accept, before any handshake work; each admitted socket is handed
    to `loop.connect_accepted_socket` with the handshake timeout.

    (`create_server(ssl=...)` gives the application nothing until the handshake is over, and
    `start_tls` from a plain protocol loses a ClientHello that arrives first on uvloop.)
    """

    def __init__(self, sock: socket.socket, guard: ConnectionGuard,
                 factory: Callable[[], asyncio.Protocol], context: ssl.SSLContext) -> None:
        self.sockets = [sock]
        self._sock = sock
        self._guard = guard
        self._factory = factory
        self._context = context
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Begin accepting on the running loop."""
        self._accepting = asyncio.get_running_loop().create_task(self._accept_loop(),
                                                                 name="tls-accept")

    def close(self) -> None:
        """Stop accepting and drop connections still in their handshake."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._sock.close()

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(self._sock)
            except OSError as exc:  # e.g. out of file descriptors: wait, then go on
                _log.warning("accept_failed", listener=self._guard.name, error=str(exc))
                await asyncio.sleep(0.1)
                continue
            entry = _Handshaking(sock)
            if not self._guard.admit(entry):
                sock.close()
                continue
            entry.task = loop.create_task(self._handshake(entry))
            self._tasks.add(entry.task)
            entry.task.add_done_callback(self._tasks.discard)

    async def _handshake(self, entry: _Handshaking) -> None:
        handler = GuardedHandler(self._guard, self._factory(), opened=entry.opened)
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: handler, entry.sock, ssl=self._context,
                ssl_handshake_timeout=self._guard.limits.tls_handshake_timeout)
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError, RuntimeError):
            entry.sock.close()
            return
        finally:
            self._guard.release(entry)
        if not handler.lost:
            self._guard.connections.add(handler)  # admitted already: replaces the entry


class _PlainAcceptor:
    """Protocol factory for a plain-TCP listener: counted, then straight to the handler."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory

    def __call__(self) -> asyncio.Protocol:
        handler = GuardedHandler(self._guard, self._factory())
        if len(self._guard.connections) >= self._guard.limits.max_connections:
            self._guard.admit(handler)  # counts and logs the refusal
            return Refused()
        self._guard.connections.add(handler)
        return handler


# Descriptors beyond the client connections: databases, the backend pool, logs, workers' pipes.
_SPARE_DESCRIPTORS = 256


def ensure_descriptors(connections: int) -> None:
    """Make room for `connections` client sockets: raise the soft RLIMIT_NOFILE up to the hard
    one when needed, and warn when even that is too small (accept would then fail with EMFILE
    before the cap is reached)."""
    try:
        import resource  # POSIX only
    except ImportError:
        return
    needed = connections + _SPARE_DESCRIPTORS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    if soft != resource.RLIM_INFINITY and soft < needed:
        _log.warning("descriptor_limit_below_connection_caps", limit=soft, needed=needed)


async def serve_guarded(factory: Callable[[], asyncio.Protocol], host: str, port: int,
                        limits: ConnectionLimits, *, name: str,
                        ssl_context: ssl.SSLContext | None = None,
                        backlog: int = 1024, reuse_port: bool = False,
                        ) -> tuple[asyncio.Server | TlsListener, ConnectionGuard]:
    """Listen on host:port, giving each admitted connection to `factory()` (an aiohttp
    `web.Server`, i.e. `runner.server`) under `limits`; the caller closes the server and
    stops the guard. `reuse_port`: SO_REUSEPORT, for several processes on one port (the
    gateway's workers), each with its own accept queue."""
    guard = ConnectionGuard(limits, name)
    server: asyncio.Server | TlsListener
    if ssl_context is None:
        server = await asyncio.get_running_loop().create_server(
            _PlainAcceptor(guard, factory), host, port, reuse_address=True, backlog=backlog,
            reuse_port=reuse_port or None)
    else:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=backlog,
                                    reuse_port=reuse_port)
        sock.setblocking(False)
        server = TlsListener(sock, guard, factory, ssl_context)
        server.start()
    guard.start()
    return server, guard
