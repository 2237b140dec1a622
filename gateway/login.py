"""Login, re-login, password change and logout pages (§2.2, §2.3, §2.5, §2.7, §2.8, §3.1).

Handlers are thin: parse -> validate -> authorize -> call the Authenticator -> render. Errors
are raised as typed GatewayErrors; the middleware in `gateway.app` renders them.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.access import (
    certificate_context,
    check_form_token,
    check_session_token,
    clear_session_cookie,
    field,
    form_token,
    in_renewal_window,
    logged_in,
    read_form,
    redirect,
    render,
    session_token,
    set_session_cookie,
)
from gateway.auth import ChangeStatus, LoginStatus
from gateway.errors import CertificateRefused, Locked
from gateway.sessions import EndReason, Session
from gateway.state import AUTH, SESSIONS, USERS, VERIFIER

_log = structlog.get_logger("gateway.login")

_MUST_CHANGE = frozenset({LoginStatus.MUST_CHANGE_TEMPORARY, LoginStatus.MUST_CHANGE_EXPIRED})


def _must_change(status: LoginStatus, previous_login_at: object) -> str | None:
    """Which of the manual's three cases (§2.2(4)) leads to the change page: the first login,
    a temporary password the helpdesk issued after earlier logins (§2.6), or expiry (R-PW-2)."""
    if status is LoginStatus.MUST_CHANGE_EXPIRED:
        return "expired"
    if status is LoginStatus.MUST_CHANGE_TEMPORARY:
        return "first" if previous_login_at is None else "reset"
    return None


async def landing(request: web.Request) -> web.Response:
    """GET /auth/: the login page with 電子証明書ログイン and 電子証明書取得 (R-GW-3)."""
    return render(request, "landing.html")


async def _login_page(request: web.Request, certificate, *, status: int = 200,  # type: ignore[no-untyped-def]
                      error: str | None = None, relogin: bool = False) -> web.Response:
    sessions = request.app[SESSIONS]
    other = await sessions.active_for_user(certificate.user_id)
    own = await sessions.lookup(session_token(request))
    return render(request, "login.html", {
        **certificate_context(request, certificate),
        "renewal": in_renewal_window(request, certificate),
        "relogin": relogin or (other is not None and other is not own),
        "error": error,
    }, status=status, form_token=form_token(request))


async def login_page(request: web.Request) -> web.Response:
    """GET /auth/login: the password page for the certificate's user (§2.2(3)); a locked
    user gets the lock page (§2.7) at once, before typing a password that cannot work."""
    certificate = await request.app[VERIFIER].required(request)
    user = await request.app[USERS].get(certificate.user_id)
    if user is not None and user.locked and not user.disabled:
        raise Locked("the login password is locked")
    return await _login_page(request, certificate)


async def login(request: web.Request) -> web.StreamResponse:
    """POST /auth/login: certificate + password -> a new session (R-LOCK-*, R-PW-2, R-SES-*)."""
    certificate = await request.app[VERIFIER].required(request)
    form = await read_form(request)
    check_form_token(request, form)
    claimed = field(form, "user_id", max_length=64)
    if claimed and claimed != certificate.user_id:
        raise CertificateRefused("the certificate belongs to another user ID",
                                 code="cert_user_mismatch")
    sessions = request.app[SESSIONS]
    other = await sessions.active_for_user(certificate.user_id)
    own = await sessions.lookup(session_token(request))
    # R-SES-2: another window still holds a session; only an explicit re-login ends it. The
    # password is still checked (a counted try), but a refused second login is no login:
    # neither audited as one nor moving 前回ログイン日時 (issue 15 item 3).
    refuse_second = other is not None and other is not own and field(form, "relogin") != "1"
    authenticate = request.app[AUTH].verify_password if refuse_second else request.app[AUTH].login
    result = await authenticate(certificate.user_id, field(form, "password"),
                                actor=f"user:{certificate.user_id}")
    if result.status is LoginStatus.LOCKED:
        await sessions.end_user(certificate.user_id, EndReason.LOCKED)
    user = result.require_user()
    if refuse_second:
        return await _login_page(request, certificate, status=409, relogin=True)
    token, _ = await sessions.create(
        user_id=user.user_id, name=user.name, customer=user.customer, role=user.role.value,
        previous_login_at=result.previous_login_at, fingerprint=certificate.fingerprint,
        serial=certificate.serial,
        must_change=_must_change(result.status, result.previous_login_at),
    )
    target = "/auth/password" if result.status in _MUST_CHANGE else "/"
    response = redirect(target)
    set_session_cookie(response, token)
    return response


def _password_page(request: web.Request, session: Session, errors: list[str] | None = None,
                   *, status: int = 200, changed: bool = False) -> web.Response:
    return render(request, "password.html", {
        "session": session, "errors": errors or [], "changed": changed,
        "policy": request.app[AUTH].password_policy}, status=status)


async def password_page(request: web.Request) -> web.Response:
    """GET /auth/password: the change page (§2.5); the only page of a must-change session."""
    _, session = await logged_in(request, allow_must_change=True)
    return _password_page(request, session)


async def change_password(request: web.Request) -> web.Response:
    """POST /auth/password: R-PW-1 and R-PW-4, every violated rule named (§2.5)."""
    _, session = await logged_in(request, allow_must_change=True)
    form = await read_form(request)
    check_session_token(session, form)
    new, confirm = field(form, "new_password"), field(form, "confirm_password")
    if new != confirm:
        return _password_page(request, session, ["password_mismatch"], status=400)
    result = await request.app[AUTH].change_password(session.user_id,
                                                     field(form, "current_password"), new)
    if result.status is ChangeStatus.LOCKED:
        await request.app[SESSIONS].end_user(session.user_id, EndReason.LOCKED)
        raise Locked("the login password is locked", code="locked")
    if result.status is ChangeStatus.BAD_CREDENTIALS:
        return _password_page(request, session, ["current_password_wrong"], status=401)
    if result.status is ChangeStatus.REJECTED:
        codes = [violation.code for violation in result.violations]
        return _password_page(request, session, codes, status=400)
    first_change = session.must_change is not None
    await request.app[SESSIONS].set_must_change(session, None)
    if first_change:
        # §2.2(5): after the required change, straight to the 初期画面.
        response: web.Response = redirect("/")
    else:
        # §2.5(3): 「パスワードを変更しました。」 at the top of the screen.
        response = _password_page(request, session, changed=True)
    token = session_token(request)
    if token:
        set_session_cookie(response, await request.app[SESSIONS].rotate(token))
    return response


async def logout_page(request: web.Request) -> web.Response:
    """GET /auth/logout (a typed or bookmarked URL; the header's button POSTs directly): the
    logout button, only to the certificate the session was created with (issue 10 item 7)."""
    token = session_token(request)
    if await request.app[SESSIONS].lookup(token) is None:
        return _logged_out(request)
    _, session = await logged_in(request, allow_must_change=True)
    return render(request, "logout.html", {"session": session})


def _logged_out(request: web.Request) -> web.Response:
    """The completion message of §3.1(2); the cookie is removed."""
    response = render(request, "logged_out.html")
    clear_session_cookie(response)
    return response


async def logout(request: web.Request) -> web.Response:
    """POST /auth/logout: end the session in one click (§3.1, R-SES-2).

    Like every page after login, it needs the certificate the session was created with
    (R-GW-4: a stolen cookie alone cannot end the owner's session) and the session's CSRF
    token (R-SES-3), which the header's ログアウト form carries. Without a session cookie
    or with a session that already ended, there is nothing to end: the completion message.
    """
    form = await read_form(request)
    token = session_token(request)
    if await request.app[SESSIONS].lookup(token) is not None:
        _, session = await logged_in(request, allow_must_change=True)
        check_session_token(session, form)
        await request.app[SESSIONS].end(token)
        _log.info("logout", user_id=session.user_id)
    return _logged_out(request)


def add_routes(app: web.Application) -> None:
    """Register the login pages."""
    app.router.add_get("/auth/", landing)
    app.router.add_get("/auth/login", login_page)
    app.router.add_post("/auth/login", login)
    app.router.add_get("/auth/password", password_page)
    app.router.add_post("/auth/password", change_password)
    app.router.add_get("/auth/logout", logout_page)
    app.router.add_post("/auth/logout", logout)
