"""What every gateway page shares: cookies, CSRF tokens, the access gate, rendering.

Cookies (R-SES-3) use the `__Host-` prefix (Secure, Path=/, no Domain: no sibling host can
set or shadow them), HttpOnly and SameSite=Strict.

CSRF (R-SES-3): forms of a logged-in user carry the session's token; the forms used before
login (login, acquisition, renewal) carry a double-submit token, a random value that is both
in a `__Host-` cookie and in the form. Both are compared in constant time.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import aiohttp_jinja2
from aiohttp import web
from multidict import MultiDictProxy

from gateway import messages
from gateway.errors import BadRequest, CsrfFailed, MustChangePassword
from gateway.sessions import Session, SessionStore
from gateway.state import CLOCK, CONFIG, SESSIONS, VERIFIER
from gateway.verify import CertificateVerifier, ClientCertificate

SESSION_COOKIE = "__Host-sekisho-session"
FORM_COOKIE = "__Host-sekisho-form"
CSRF_FIELD = "csrf"
MAX_FIELD = 256

PAGE_HEADERS = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'self'; frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
    ),
    "Strict-Transport-Security": "max-age=31536000",
}


def redirect(location: str) -> web.Response:
    """A 303 See Other to `location` (a page of this gateway)."""
    return web.Response(status=303, headers={"Location": location, **PAGE_HEADERS})


def _cookie(response: web.StreamResponse, name: str, value: str) -> None:
    response.set_cookie(name, value, path="/", secure=True, httponly=True, samesite="Strict")


def set_session_cookie(response: web.StreamResponse, token: str) -> None:
    """Give the browser its (new) session cookie."""
    _cookie(response, SESSION_COOKIE, token)


def clear_session_cookie(response: web.StreamResponse) -> None:
    """Remove the session cookie from the browser."""
    response.del_cookie(SESSION_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")


def session_token(request: web.Request) -> str | None:
    """The session cookie of the request, if any.

    Read straight from the Cookie header (the last value wins, as in `request.cookies`)
    instead of building every cookie's Morsel on each proxied request.
    """
    header = request.headers.get("Cookie")
    if header is None or SESSION_COOKIE not in header:
        return None
    token = None
    for part in header.split(";"):
        name, sep, value = part.partition("=")
        if sep and name.strip() == SESSION_COOKIE:
            token = value.strip().strip('"')
    return token or None


def render(request: web.Request, template: str, context: Mapping[str, Any] | None = None, *,
           status: int = 200, form_token: str | None = None) -> web.Response:
    """Render a page with the message catalogue; sets the pre-login form cookie if given."""
    ctx = {"t": messages.text, "csrf": form_token, **(context or {})}
    response = aiohttp_jinja2.render_template(template, request, ctx, status=status)
    response.headers.update(PAGE_HEADERS)
    if form_token is not None and request.cookies.get(FORM_COOKIE) != form_token:
        _cookie(response, FORM_COOKIE, form_token)
    return response


def form_token(request: web.Request) -> str:
    """The double-submit token for forms shown before login (reused while the cookie lasts)."""
    existing = request.cookies.get(FORM_COOKIE)
    if existing and 20 <= len(existing) <= 64:
        return existing
    return secrets.token_urlsafe(32)


def _equal(a: str | None, b: str | None) -> bool:
    return bool(a) and bool(b) and hmac.compare_digest(str(a).encode(), str(b).encode())


async def read_form(request: web.Request) -> MultiDictProxy[str | Any]:
    """The posted form; a form that is not url-encoded or multipart is a BadRequest."""
    if request.content_type not in ("application/x-www-form-urlencoded", "multipart/form-data"):
        raise BadRequest("send the form as application/x-www-form-urlencoded")
    try:
        return await request.post()
    except ValueError:
        raise BadRequest("the form cannot be read") from None


def field(form: MultiDictProxy[str | Any], name: str, *, max_length: int = MAX_FIELD) -> str:
    """A text field of a form ("" when absent); too long or not text is a BadRequest."""
    value = form.get(name, "")
    if not isinstance(value, str) or len(value) > max_length:
        raise BadRequest(f"the field {name} is not acceptable")
    return value


def check_form_token(request: web.Request, form: MultiDictProxy[str | Any]) -> None:
    """R-SES-3: a pre-login form must echo the double-submit cookie."""
    if not _equal(request.cookies.get(FORM_COOKIE), field(form, CSRF_FIELD)):
        raise CsrfFailed("the form's security token is missing or wrong")


def check_session_token(session: Session, form: MultiDictProxy[str | Any]) -> None:
    """R-SES-3: a logged-in form must echo the session's token."""
    if not session.csrf_matches(field(form, CSRF_FIELD)):
        raise CsrfFailed("the form's security token is missing or wrong")


async def logged_in(request: web.Request, *, allow_must_change: bool = False,
                    ) -> tuple[ClientCertificate, Session]:
    """The gate for every page after login (R-GW-1..4, R-SES-1, R-PW-2): `check_access`
    with the app's verifier and sessions."""
    app = request.app
    return await check_access(app[VERIFIER], app[SESSIONS], request,
                              allow_must_change=allow_must_change)


async def check_access(verifier: CertificateVerifier, sessions: SessionStore,
                       request: web.Request, *, allow_must_change: bool = False,
                       ) -> tuple[ClientCertificate, Session]:
    """Certificate of this connection verified (revocation included), session active and bound
    to that certificate; a session that must change its password only reaches that page."""
    certificate = await verifier.required(request)
    session = await sessions.use(session_token(request), certificate.fingerprint)
    if session.must_change and not allow_must_change:
        raise MustChangePassword("change the password first")
    return certificate, session


def certificate_context(request: web.Request, certificate: ClientCertificate,
                        ) -> dict[str, object]:
    """The presented certificate as the login and renewal pages show it."""
    now = request.app[CLOCK].now()
    return {"user_id": certificate.user_id, "not_before": certificate.not_before,
            "not_after": certificate.not_after,
            "days_left": days_left(certificate.not_after, now)}


def days_left(not_after: datetime, now: datetime) -> int:
    """Days of validity left as the customer counts them: a started day counts, so a
    certificate issued a moment ago for 365 days shows 365, not 364 (issue 15 item 9)."""
    return max(0, -(-(not_after - now) // timedelta(days=1)))


def in_renewal_window(request: web.Request, certificate: ClientCertificate) -> bool:
    """§2.10.1(2): renewal is offered when the certificate expires within the window."""
    now = request.app[CLOCK].now()
    return certificate.not_after - now <= request.app[CONFIG].renewal_window
