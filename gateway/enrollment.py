"""Certificate acquisition (§2.1, R-CERT-4/5) and renewal (§2.10.1, R-CERT-6) through the gateway.

* Acquisition needs no certificate (R-GW-3): user ID + login password (a counted try toward
  the login lock, R-LOCK-1) + acquisition password (checked and locked by the CA). The
  PKCS#12 the CA returns is handed over as a download named after the user ID.
* Renewal needs the current certificate and the login password of its user (a counted try);
  the CA encrypts the new PKCS#12 with that password.
"""

from __future__ import annotations

import structlog
from aiohttp import web

from gateway.access import check_form_token, field, form_token, read_form, render
from gateway.auth import LoginStatus
from gateway.ca_client import CaRefused, Delivered
from gateway.errors import (
    BadRequest,
    Conflict,
    GatewayError,
    Locked,
    TooManyAttempts,
    Unauthorized,
)
from gateway.state import AUTH, CA, VERIFIER

_log = structlog.get_logger("gateway.enrollment")

# The CA's error codes and the status our page answers with.
_CA_ERRORS: dict[str, tuple[type[GatewayError], str]] = {
    "bad_credentials": (Unauthorized, "acquisition_bad_credentials"),
    "acquisition_locked": (Locked, "acquisition_locked"),
    "usable_certificate_exists": (Conflict, "usable_certificate_exists"),
    "attempt_in_progress": (Conflict, "attempt_in_progress"),
    "invalid_user_id": (BadRequest, "bad_request"),
    "acquisition_not_open": (Conflict, "acquisition_not_open"),
    "renewal_not_open": (Conflict, "renewal_not_open"),
    "certificate_expired": (Conflict, "certificate_expired"),
    "certificate_revoked": (Conflict, "cert_revoked"),
    "not_newest_certificate": (Conflict, "not_newest_certificate"),
}


def _translate(exc: CaRefused) -> GatewayError:
    kind, code = _CA_ERRORS.get(exc.code, (Conflict, "default"))
    return kind(str(exc), code=code)


def _download(delivered: Delivered) -> web.Response:
    # The user ID matches USER_ID_PATTERN (letters, digits, '.', '_', '-'): safe in the header.
    return web.Response(
        body=delivered.pkcs12, content_type="application/x-pkcs12",
        headers={"Content-Disposition": f'attachment; filename="{delivered.user_id}.p12"',
                 "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"},
    )


async def _check_login_password(request: web.Request, user_id: str, password: str,
                                actor: str) -> None:
    result = await request.app[AUTH].verify_password(user_id, password, actor=actor)
    if result.status is LoginStatus.LOCKED:
        raise Locked("the login password is locked", code="locked")
    if result.status is LoginStatus.BUSY:
        raise TooManyAttempts("other tries are being checked; try again", code="busy")
    if not result.authenticated:
        raise Unauthorized("user ID or password is wrong", code="bad_credentials")


async def acquire_page(request: web.Request) -> web.Response:
    """GET /auth/acquire: 電子証明書発行申請 (§2.1(2)); no certificate needed."""
    return render(request, "acquire.html", form_token=form_token(request))


async def acquire(request: web.Request) -> web.Response:
    """POST /auth/acquire: login password, then the CA checks the acquisition password."""
    form = await read_form(request)
    check_form_token(request, form)
    user_id = field(form, "user_id", max_length=64).strip()
    password, acquisition_password = field(form, "password"), field(form, "acquisition_password")
    # A malformed or unknown user ID answers like a wrong password (R-LOCK-2).
    await _check_login_password(request, user_id, password, "acquisition")
    if not acquisition_password:
        raise Unauthorized("the acquisition password is wrong",
                           code="acquisition_bad_credentials")
    try:
        delivered = await request.app[CA].acquire(user_id, acquisition_password)
    except CaRefused as exc:
        raise _translate(exc) from None
    _log.info("certificate_acquired", user_id=user_id, serial=delivered.serial)
    return _download(delivered)


async def renew_page(request: web.Request) -> web.Response:
    """GET /auth/renew: the renewal form for the presented certificate (§2.10.1(3))."""
    certificate = await request.app[VERIFIER].required(request)
    return render(request, "renew.html", {"user_id": certificate.user_id,
                                          "not_after": certificate.not_after},
                  form_token=form_token(request))


async def renew(request: web.Request) -> web.Response:
    """POST /auth/renew: login password -> new PKCS#12 encrypted with it (R-CERT-6)."""
    certificate = await request.app[VERIFIER].required(request)
    form = await read_form(request)
    check_form_token(request, form)
    password = field(form, "password")
    await _check_login_password(request, certificate.user_id, password, "renewal")
    try:
        delivered = await request.app[CA].renew(certificate.serial, password)
    except CaRefused as exc:
        raise _translate(exc) from None
    _log.info("certificate_renewed", user_id=certificate.user_id, old_serial=certificate.serial,
              serial=delivered.serial)
    return _download(delivered)


def add_routes(app: web.Application) -> None:
    """Register the acquisition and renewal pages."""
    app.router.add_get("/auth/acquire", acquire_page)
    app.router.add_post("/auth/acquire", acquire)
    app.router.add_get("/auth/renew", renew_page)
    app.router.add_post("/auth/renew", renew)
