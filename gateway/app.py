"""The gateway's app factory (STYLE 8): pages under /auth/, everything else proxied.

`build_app(config, clock=..., users=..., hasher=..., ca_client=..., bundle=...)` wires the
services; tests and `sekisho-gateway serve` use the same factory. Background work lives in
`cleanup_ctx`: the proxy's client pool, the revocation feed follower and the session sweeper.
The app owns (and closes) `ca_client`; the caller closes `users` and `hasher`.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web

from common.passwords import PasswordHasher
from gateway import enrollment, health, login, pages
from gateway.access import check_access, clear_session_cookie, logged_in, redirect, render
from gateway.auth import Authenticator
from gateway.ca_client import CaClient, RevocationEvent
from gateway.config import GatewayConfig
from gateway.errors import (
    CertificateRequired,
    GatewayError,
    MustChangePassword,
    NotFound,
    RoleForbidden,
    SessionEnded,
    SessionExpired,
    SessionRequired,
)
from gateway.hardening import quiet_parser_errors
from gateway.messages import error_text
from gateway.metrics import RequestCounter
from gateway.proxy import SECURITY_HEADERS, Identity, Proxy, is_websocket
from gateway.revocation_client import RevocationChecker
from gateway.sessions import Session, SessionStore
from gateway.state import (
    AUTH,
    CA,
    CLOCK,
    CONFIG,
    PROXY,
    REVOCATION,
    SESSIONS,
    USERS,
    VERIFIER,
)
from gateway.store import UserBackend
from gateway.throttle import AddressThrottle
from gateway.tls import TrustBundle
from gateway.verify import CertificateVerifier
from policy.clock import Clock

_log = structlog.get_logger("gateway")
SWEEP_INTERVAL = 15.0
# How often the store's session events (helpdesk disable / reset from the CLI, another
# process) are polled: a live session ends within about this long (issue 10 item 9).
SESSION_EVENTS_INTERVAL = 0.25
# How often last-seen times are written back to the store (at most this much activity of a
# killed process is lost to the idle timer, which is 30 minutes).
LAST_SEEN_FLUSH_INTERVAL = 5.0

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error_page(request: web.Request, exc: GatewayError) -> web.StreamResponse:
    is_page_request = request.method in ("GET", "HEAD") and not is_websocket(request)
    if is_page_request and isinstance(exc, SessionRequired | CertificateRequired) \
            and not request.path.startswith("/auth/"):
        # R-GW-3: without a certificate or session, the only way in is the login page.
        return redirect("/auth/")
    if isinstance(exc, MustChangePassword) and is_page_request:
        return redirect("/auth/password")
    response = render(request, "error.html", {"code": exc.code, "message": error_text(exc.code),
                                              "status": exc.status, "details": exc.details},
                      status=exc.status)
    if isinstance(exc, SessionExpired | SessionEnded):
        clear_session_cookie(response)
    return response


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Typed errors become pages (STYLE 7); anything unexpected a 500 with a request ID."""
    try:
        return await handler(request)
    except GatewayError as exc:
        if exc.status >= 500:
            _log.warning("request_refused", path=request.path, code=exc.code)
        return _error_page(request, exc)
    except web.HTTPException:
        raise
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        request_id = secrets.token_hex(8)
        _log.exception("unhandled_error", request_id=request_id, path=request.path)
        return render(request, "error.html", {"code": "internal_error", "status": 500,
                                              "message": error_text("internal_error"),
                                              "request_id": request_id}, status=500)


# An exception the direct path met, handed to the full app to be rendered (see `proxied`).
DEFERRED_ERROR = web.RequestKey("deferred_error", Exception)


def backend_identity(proxy: Proxy, request: web.Request, session: Session) -> Identity:
    """Role rules first (R-PX-2), then who the backend is told is asking."""
    # On the raw target: admin_only refuses (400) a target whose decoding is ambiguous, and
    # the backend gets exactly the target that was checked.
    if session.role != "admin" and proxy.admin_only(request.raw_path):
        raise RoleForbidden("this page is for administrators")
    return session.backend_identity


async def proxied(request: web.Request) -> web.StreamResponse:
    """Every path outside /auth/: gate (R-GW-*, R-SES-*), role rules (R-PX-2), then proxy."""
    deferred = request.get(DEFERRED_ERROR)
    if deferred is not None:
        raise deferred  # met on the direct path: rendered by the middleware like any other
    _, session = await logged_in(request)
    proxy = request.app[PROXY]
    identity = backend_identity(proxy, request, session)
    if is_websocket(request):
        sessions = request.app[SESSIONS]

        def touch() -> None:
            sessions.touch(session)

        return await proxy.websocket(request, identity, session.relays, touch)
    return await proxy.http(request, identity)


def _plainly_proxied(request: web.Request) -> bool:
    """Whether the router would give `request` to `proxied` and no middleware would change it.

    Conservative: any path containing "auth" (the gateway's pages, and anything the router
    might normalise into them), a `lang=` query (the language middleware would set a cookie)
    and WebSocket upgrades take the full path.
    """
    return ("auth" not in request.path and "lang=" not in request.query_string
            and request.path not in health.PATHS and not is_websocket(request))


def serve_proxied_directly(runner: web.AppRunner) -> None:
    """Answer plain proxied requests without aiohttp's router and middleware chain.

    Call after `runner.setup()`, before the site starts. A proxied request otherwise passes
    the router and four middleware layers, each a coroutine frame that every suspension and
    resumption of the relay walks through: ~10% of the gateway's CPU per proxied request
    (bench/gateway.py). The direct path runs the same gate, role rules and relay; whatever it
    raises goes to the full app, whose `proxied` re-raises it so the error middleware renders
    it, in the user's language, as on the full path. Everything else is the full app's.
    """
    server = runner.server
    assert server is not None, "call after runner.setup()"
    app, full = runner.app, server.request_handler
    verifier, sessions, proxy = app[VERIFIER], app[SESSIONS], app[PROXY]
    counter = RequestCounter()

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)
        if not _plainly_proxied(request):
            response = await full(request)
        else:
            try:
                _, session = await check_access(verifier, sessions, request)
                response = await proxy.http(request, backend_identity(proxy, request, session))
            except (asyncio.CancelledError, ConnectionResetError, web.HTTPException):
                raise
            except Exception as exc:
                request[DEFERRED_ERROR] = exc
                response = await full(request)
        counter.count(response.status)  # per worker, on /metrics (gateway/metrics.py)
        return response

    server.request_handler = handle


def prepare_server(runner: web.AppRunner) -> None:
    """Everything done to the server between `runner.setup()` and the site's start: the
    direct path for proxied requests, and parser errors that echo and log no request bytes."""
    serve_proxied_directly(runner)
    quiet_parser_errors(runner)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    """HSTS, nosniff and a Server header without a version on every page of the full app
    (proxied responses get them in the proxy, parser errors in gateway.hardening)."""
    response.headers.update(SECURITY_HEADERS)


async def unknown_auth_page(request: web.Request) -> web.StreamResponse:
    """/auth/ is the gateway's own namespace: unknown pages are 404, never proxied."""
    raise NotFound("no such page")


def build_app(config: GatewayConfig, *, clock: Clock, users: UserBackend,
              hasher: PasswordHasher, ca_client: CaClient, bundle: TrustBundle) -> web.Application:
    """The gateway application."""
    app = web.Application(middlewares=[pages.language_middleware, error_middleware],
                          client_max_size=config.max_form_bytes)
    pages.setup_templates(app)
    revocation = RevocationChecker(ca_client, config.revocation, clock)
    sessions = SessionStore(config.session, clock, users)
    app[CONFIG] = config
    app[CLOCK] = clock
    app[USERS] = users
    app[AUTH] = Authenticator(users, hasher, config.password, clock=clock,
                              lockout_max=config.lockout_max_failures,
                              temporary_password_length=config.temporary_password_length)
    app[SESSIONS] = sessions
    app[REVOCATION] = revocation
    app[VERIFIER] = CertificateVerifier(bundle, revocation, clock, config.cutovers)
    app[CA] = ca_client
    app[PROXY] = Proxy(config.backend_url, connect_timeout=config.backend_connect_timeout,
                       read_timeout=config.backend_read_timeout,
                       admin_path_prefixes=config.admin_path_prefixes,
                       public_url=config.public_url,
                       websocket_origins=config.websocket_origins)
    app.on_response_prepare.append(_security_headers)

    ending: set[asyncio.Task[None]] = set()

    async def end_in_store(fingerprint: str) -> None:
        try:
            await sessions.end_certificate(fingerprint)
        except Exception as exc:  # the certificate check refuses it anyway; said in one line
            _log.warning("revoked_sessions_not_ended_in_store",
                         error=getattr(exc, "code", type(exc).__name__))

    def on_revocation(event: RevocationEvent) -> None:
        # Here at once; in the store (every process follows the CA and tries; the first
        # one ends the rows, the others find nothing left) in the background.
        ended = sessions.drop_certificate(event.fingerprint_sha256)
        task = asyncio.get_running_loop().create_task(end_in_store(event.fingerprint_sha256))
        ending.add(task)
        task.add_done_callback(ending.discard)
        _log.info("certificate_revoked_sessions_ended", serial=event.serial,
                  user_id=event.user_id, sessions=ended)

    revocation.listeners.append(on_revocation)
    app.cleanup_ctx.append(_background)
    app.cleanup_ctx.append(_expiring_attempts)
    login.add_routes(app)
    enrollment.add_routes(app)
    pages.add_static_route(app)
    health.add_routes(app, bundle)
    app.router.add_route("*", "/auth/{tail:.*}", unknown_auth_page)
    app.router.add_route("*", "/{tail:.*}", proxied)
    return app


async def _sweep(sessions: SessionStore, pickups: enrollment.PickupStore,
                 throttle: AddressThrottle) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        try:
            await sessions.sweep()
            await pickups.expire()
            await throttle.expire()
        except Exception as exc:  # the store unreachable: the next sweep tries again
            _log.warning("session_sweep_failed", error=getattr(exc, "code", type(exc).__name__))


async def _flush_last_seen(sessions: SessionStore) -> None:
    """Write last-seen times back in batches (no store round trip per request)."""
    while True:
        await asyncio.sleep(LAST_SEEN_FLUSH_INTERVAL)
        try:
            await sessions.flush()
        except Exception as exc:  # kept for the next flush
            _log.warning("session_flush_failed", error=getattr(exc, "code", type(exc).__name__))


async def follow_session_events(users: UserBackend, sessions: SessionStore,
                                after: int, *, interval: float = SESSION_EVENTS_INTERVAL,
                                wake: asyncio.Event | None = None) -> None:
    """Apply every session end of the cluster to this process's cache (issue 10 item 9,
    issue 12).

    Whoever ends a session - another gateway process, the helpdesk CLI - deletes its row and
    appends a session event in the same transaction. Every gateway process polls that
    sequence (like the CA's revocation sequence), and on PostgreSQL is also woken by NOTIFY
    (`wake`), so each drops the ended sessions and cancels their WebSocket relays within
    `interval`. `sessions.synced_at` records each successful read: a process that cannot
    read the events serves no session from its cache (`sessions.STALE_AFTER`).
    """
    while True:
        if wake is None:
            await asyncio.sleep(interval)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), interval)
            wake.clear()
        # Every end committed before this moment is in what the read returns: the cache is
        # trusted for STALE_AFTER from here, not from when the read came back.
        reading = time.monotonic()
        try:
            events = await users.session_ends_after(after)
        except Exception:  # a locked or busy file: try again at the next poll
            _log.warning("session_events_unreadable", exc_info=True)
            continue
        for end in events:
            after = end.seq
            if sessions.apply(end) and end.reason != "rotated":
                _log.info("sessions_ended", user_id=end.user_id, reason=end.reason)
        sessions.synced_at = reading


@contextlib.asynccontextmanager
async def _session_end_wakeups(users: UserBackend) -> AsyncIterator[asyncio.Event | None]:
    """On PostgreSQL, an event set by NOTIFY at each session end's commit (the poll stays
    as the safety net: a notification sent while not listening is lost); None on SQLite."""
    settings = getattr(users, "settings", None)
    if settings is None:
        yield None
        return
    from common.postgres import ChannelListener
    from gateway.users_pg import SESSION_END_CHANNEL

    wake = asyncio.Event()
    listener = ChannelListener(settings, SESSION_END_CHANNEL, lambda _payload: wake.set(),
                               on_listening=wake.set)
    try:
        await listener.start()
    except TimeoutError:
        _log.warning("session_end_listener_unavailable")  # the poll still applies ends
    try:
        yield wake
    finally:
        await listener.close()


async def _background(app: web.Application) -> AsyncIterator[None]:
    """Proxy pool, revocation feed follower, CA node watcher, session sweeper, session-event
    follower; all stopped at shutdown."""
    await app[PROXY].start()
    follower = asyncio.create_task(app[REVOCATION].follow(), name="revocation-feed")
    sweeper = asyncio.create_task(
        _sweep(app[SESSIONS], app[enrollment.PICKUPS], app[enrollment.THROTTLE]),
        name="session-sweeper")
    flusher = asyncio.create_task(_flush_last_seen(app[SESSIONS]), name="session-last-seen")
    # Several CA nodes (issue 13): a failed node is probed until it is back.
    watcher = asyncio.create_task(app[CA].watch_nodes(), name="ca-node-watcher")
    async with _session_end_wakeups(app[USERS]) as wake:
        helpdesk = asyncio.create_task(
            follow_session_events(app[USERS], app[SESSIONS],
                                  await app[USERS].last_session_event(), wake=wake),
            name="session-events")
        yield
        for task in (follower, watcher, sweeper, helpdesk, flusher):
            task.cancel()
        for task in (follower, watcher, sweeper, helpdesk, flusher):
            with contextlib.suppress(asyncio.CancelledError):
                await task
    with contextlib.suppress(Exception):
        await app[SESSIONS].flush()  # the last activity survives a clean restart
    await app[PROXY].close()
    await app[CA].close()


async def _expire_attempts(app: web.Application) -> None:
    """Counted login tries whose check can no longer complete count as failures (R-FAULT-3)."""
    try:
        expired = await app[USERS].expire_attempts(app[CONFIG].lockout_max_failures)
    except Exception as exc:  # e.g. a full disk: named in one line, retried on the schedule
        _log.error("login_attempt_expiry_failed", error=getattr(exc, "code", type(exc).__name__),
                   message=str(exc))
        return
    for user_id in expired:
        _log.warning("login_attempt_expired", user_id=user_id)


async def _expire_attempts_periodically(app: web.Application) -> None:
    while True:
        await asyncio.sleep(SWEEP_INTERVAL)
        await _expire_attempts(app)


async def _expiring_attempts(app: web.Application) -> AsyncIterator[None]:
    """At start, the tries a killed gateway left pending; then on the sweeper's schedule."""
    await _expire_attempts(app)
    task = asyncio.create_task(_expire_attempts_periodically(app), name="attempt-expiry")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task

