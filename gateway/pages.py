"""What the customer's pages share: templates, language, the header identity, dates (R-UI-*).

* Templates are Jinja2 (autoescaped) under `templates/`; CSS and JS are files under
  `static/`, served at `/auth/static/` without a certificate (the login page needs them,
  R-GW-3) and allowed by the pages' `default-src 'self'` policy: no inline code.
* Language (R-UI-3): Japanese unless the `lang` cookie says `en`. `?lang=en` or `?lang=ja`
  on any gateway page switches and sets the cookie (Secure, HttpOnly, SameSite=Strict, one
  year). Every string comes from `gateway.messages`; the middleware makes the request's
  language the default of `messages.text`, so handlers and templates need not pass it.
* The header (§2.2(5), R-UI-2) shows the identity of the session that this very
  certificate opened (same fingerprint, still active), never one a cookie alone points to.
* Times are shown in Japan time as the manual does (`2013/08/06 09:01:41`).
"""

from __future__ import annotations

import contextvars
import hmac
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import aiohttp_jinja2
import jinja2
from aiohttp import web

from gateway import messages
from gateway.access import SESSION_COOKIE
from gateway.sessions import Session
from gateway.state import SESSIONS, VERIFIER

TEMPLATES = Path(__file__).parent / "templates"
STATIC = Path(__file__).parent / "static"
STATIC_PREFIX = "/auth/static/"
LANG_COOKIE = "lang"
LANG_COOKIE_MAX_AGE = 365 * 24 * 3600
JST = timezone(timedelta(hours=9), "JST")
_WEEKDAYS_JA = "月火水木金土日"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# The request being handled, for the templates' header and language links.
_REQUEST: contextvars.ContextVar[web.Request | None] = contextvars.ContextVar(
    "sekisho_request", default=None)


@web.middleware
async def language_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Pick the page language (query, then cookie, then Japanese) for this request."""
    # Proxied requests rarely carry either: a substring test saves parsing the query string
    # and every cookie on the hot path (~7 us per proxied request, bench/gateway.py).
    asked = request.query.get("lang") if "lang=" in request.query_string else None
    remembered = (request.cookies.get(LANG_COOKIE)
                  if f"{LANG_COOKIE}=" in request.headers.get("Cookie", "") else None)
    lang, switched = messages.choose_language(asked, remembered)
    token = messages.use_language(lang)
    request_token = _REQUEST.set(request)
    try:
        response = await handler(request)
    finally:
        _REQUEST.reset(request_token)
        messages.reset_language(token)
    if switched and not response.prepared:
        response.set_cookie(LANG_COOKIE, lang, path="/", max_age=LANG_COOKIE_MAX_AGE,
                            secure=True, httponly=True, samesite="Strict")
    return response


def current_path() -> str:
    """The path of the page being rendered, for the language links ("/auth/" outside pages)."""
    request = _REQUEST.get()
    path = request.path if request is not None else ""
    return path if path.startswith("/auth/") else "/auth/"


def header_session() -> Session | None:
    """The session to show in the header: active and opened with this connection's certificate.

    Only for display; every page that acts on a session goes through `access.logged_in`.
    """
    request = _REQUEST.get()
    if request is None:
        return None
    sessions = request.app[SESSIONS]
    session = sessions.find(request.cookies.get(SESSION_COOKIE))
    if session is None or sessions.cached_active_for_user(session.user_id) is not session:
        return None
    fingerprint = request.app[VERIFIER].presented_fingerprint(request)
    if not fingerprint or not hmac.compare_digest(fingerprint, session.fingerprint):
        return None
    return session


def _as_datetime(value: datetime | str | None) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return None
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def jst_datetime(value: datetime | str | None) -> str:
    """`2013/08/06 09:01:41` in Japan time (§2.2(5)); "" for nothing."""
    when = _as_datetime(value)
    return when.astimezone(JST).strftime("%Y/%m/%d %H:%M:%S") if when else ""


def jst_date(value: datetime | str | None) -> str:
    """A day in Japan time in the page's language (`2021年2月24日(水)` / `Wed 24 Feb 2021`)."""
    when = _as_datetime(value)
    if when is None:
        return ""
    local = when.astimezone(JST)
    if messages.current_language() == "en":
        return f"{local:%a} {local.day} {local:%b %Y}"
    return f"{local.year}年{local.month}月{local.day}日({_WEEKDAYS_JA[local.weekday()]})"


def jst_moment(value: datetime | str | None) -> str:
    """A day, plus the time when it is not midnight in Japan (opening dates, cutovers)."""
    when = _as_datetime(value)
    if when is None:
        return ""
    local = when.astimezone(JST)
    day = jst_date(when)
    return day if (local.hour, local.minute) == (0, 0) else f"{day} {local:%H:%M}"


def setup_templates(app: web.Application) -> None:
    """Jinja2 with autoescape, the date filters and the header lookup."""
    env = aiohttp_jinja2.setup(app, loader=jinja2.FileSystemLoader(TEMPLATES),
                               autoescape=jinja2.select_autoescape(default=True),
                               undefined=jinja2.ChainableUndefined)
    env.filters["jst"] = jst_datetime
    env.filters["jst_date"] = jst_date
    env.filters["jst_moment"] = jst_moment
    env.globals["header_session"] = header_session
    env.globals["current_path"] = current_path
    env.globals["current_language"] = messages.current_language
    env.globals["error_text"] = messages.error_text
    env.globals["error_info"] = error_info
    env.globals["lang_name"] = messages.language_name
    env.globals["languages"] = messages.LANGUAGES


def add_static_route(app: web.Application) -> None:
    """CSS and JS at /auth/static/ (no certificate needed: the login page uses them)."""
    app.router.add_static(STATIC_PREFIX, STATIC, name="static")


@dataclass(frozen=True)
class ErrorPage:
    """How an error page reads: its title, what to do next, and where its buttons lead."""

    title: str
    next: tuple[str, ...] = ()
    actions: tuple[tuple[str, str, str], ...] = (("/auth/", "back_to_top", "secondary"),)
    warning: bool = False  # the lockout warning of §2.3


_LOGIN = ("/auth/login", "back_to_login", "primary")
_ACQUIRE = ("/auth/acquire", "cert_acquire", "primary")
_TOP = ("/auth/", "back_to_top", "secondary")
_SERVICE = ("/", "back_to_service", "primary")
_CERT_REFUSED = ErrorPage("title_cert_refused", ("cert_refused_next",), (_TOP,))

ERROR_PAGES: dict[str, ErrorPage] = {
    # §2.3: the login failure page, with the warning that the third failure locks.
    "bad_credentials": ErrorPage("title_login_failed", (), (_LOGIN,), warning=True),
    # §2.7: locked; only the branch or the helpdesk can unlock.
    "locked": ErrorPage("title_locked", ("locked_steps", "locked_seal"), (_TOP,)),
    # §2.8: the session timeout page.
    "session_timeout": ErrorPage("title_timeout", ("timeout_next",), (_LOGIN,)),
    "session_required": ErrorPage("title_session_required", (), (_LOGIN,)),
    # Issue 15 item 1: a session ended elsewhere says why, once, and what to do.
    "session_ended_relogin": ErrorPage("title_session_ended", ("relogin_next",), (_TOP,)),
    "session_ended_locked": ErrorPage("title_session_ended", ("locked_steps", "locked_seal"),
                                      (_TOP,)),
    "session_ended_password_reset": ErrorPage("title_session_ended", ("password_reset_next",),
                                              (_LOGIN,)),
    "session_ended_disabled": ErrorPage("title_session_ended", ("disabled_next",), (_TOP,)),
    "session_ended_revoked": ErrorPage("title_session_ended", ("cert_revoked_next",),
                                       (_ACQUIRE, _TOP)),
    "session_cert_mismatch": ErrorPage("title_session_required", (), (_LOGIN,)),
    "must_change_password": ErrorPage("title_password",
                                      (), (("/auth/password", "password_change", "primary"),)),
    # No certificate presented: not acquired yet, or not chosen in the browser.
    "cert_required": ErrorPage("title_cert_required",
                               ("cert_required_first", "cert_required_have"), (_ACQUIRE, _TOP)),
    # §2.9: revoked (e.g. a replaced PC): re-acquire on the new PC.
    "cert_revoked": ErrorPage("title_cert_revoked", ("cert_revoked_next",), (_ACQUIRE, _TOP)),
    # §2.10.2: expired: acquire a new one as in §2.1.
    "cert_expired": ErrorPage("title_cert_expired", ("cert_expired_next",), (_ACQUIRE, _TOP)),
    # The notice: cut over by the CA's migration; re-acquire with the original passwords.
    "cert_cut_over": ErrorPage("title_cert_cut_over", ("cut_over_next", "cut_over_lost"),
                               (_ACQUIRE, _TOP)),
    "cert_refused": _CERT_REFUSED,
    "cert_not_yet_valid": _CERT_REFUSED,
    "cert_untrusted": _CERT_REFUSED,
    "cert_issuer_invalid": _CERT_REFUSED,
    "cert_wrong_usage": _CERT_REFUSED,
    "cert_unknown": _CERT_REFUSED,
    "cert_malformed": _CERT_REFUSED,
    "cert_user_mismatch": _CERT_REFUSED,
    "revocation_unavailable": ErrorPage("title_unavailable", ("try_later",), (_LOGIN,)),
    "busy": ErrorPage("title_busy", ("try_later",), (_LOGIN,)),
    "ca_unavailable": ErrorPage("title_unavailable", ("try_later",),
                                (("/auth/acquire", "back_to_acquire", "primary"), _TOP)),
    "backend_unavailable": ErrorPage("title_unavailable", ("try_later",), (_SERVICE,)),
    "backend_timeout": ErrorPage("title_unavailable", ("try_later",), (_SERVICE,)),
    "role_forbidden": ErrorPage("title_forbidden", (), (_SERVICE,)),
    "csrf_failed": ErrorPage("title_form_expired", ("form_expired_next",), (_TOP,)),
    "not_found": ErrorPage("title_not_found", (), (_TOP,)),
    "acquisition_locked": ErrorPage("title_locked", ("acquisition_locked_next", "locked_seal"),
                                    (_TOP,)),
}
_DEFAULT_ERROR_PAGE = ErrorPage("title_error", ("try_later",), (_TOP,))


def error_info(code: str) -> ErrorPage:
    """The error page layout for an error code (a generic one for codes not listed)."""
    return ERROR_PAGES.get(code, _DEFAULT_ERROR_PAGE)
