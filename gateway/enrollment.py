"""Certificate acquisition (§2.1, R-CERT-4/5) and renewal (§2.10.1, R-CERT-6) through the gateway.

The manual's flow: form -> issuing screen -> download page with [ダウンロード] -> the file.

* Acquisition needs no certificate (R-GW-3): user ID + login password + acquisition password.
  Order of checks (issue 10 item 3): the client's address is throttled; the CA checks the
  acquisition password first (counted, locked there) and returns a single-use ticket; only
  then is the login password checked (a counted try toward the login lock, R-LOCK-1); then
  the CA issues against the ticket. A client without the officer-issued acquisition password
  therefore can neither test nor lock the login password, and a wrong acquisition password,
  a locked one, an unknown ID and a wrong login password all get the same form, status and
  (one password check's) cost: the answer never says which secret was wrong.
* Renewal needs the current certificate and the login password of its user (a counted try);
  the CA encrypts the new PKCS#12 with that password.
* The form's POST shows the issuing screen while it runs (static/pages.js), then answers
  303 to the download page. The PKCS#12 waits in the gateway's store (issue 12: whichever
  gateway process the download reaches) for `PICKUP_LIFETIME`, under a random one-time
  ticket held in an HttpOnly `__Host-` cookie, sealed with AES-256-GCM under a key derived
  from that ticket (HKDF-SHA256): the store keeps only the ticket's SHA-256, so a database
  reader or a backup never holds a usable file, and it is deleted when taken or expired;
  the [ダウンロード] button (a POST with the form's CSRF token, so no prefetcher or link
  scanner can spend it) takes it out: it is handed over once, with `Cache-Control: no-store`.
  A renewed file is also bound to the certificate that asked for it. The file bytes (already
  encrypted by the CA) are never logged.
* Refusals the user can fix (wrong passwords, not open yet, a certificate already exists)
  show the form again with the reason; a lock shows the lock page.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import structlog
from aiohttp import web
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from gateway.access import (
    PAGE_HEADERS,
    certificate_context,
    check_form_token,
    form_token,
    in_renewal_window,
    read_form,
    redirect,
    render,
)
from gateway.access import (
    field as form_field,
)
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
from gateway.state import AUTH, CA, CLOCK, CONFIG, USERS, VERIFIER
from gateway.store import PickupBackend
from gateway.throttle import AddressThrottle
from gateway.users import PickupRecord
from gateway.verify import ClientCertificate
from policy.clock import Clock

_log = structlog.get_logger("gateway.enrollment")

PICKUP_COOKIE = "__Host-sekisho-pickup"
PICKUP_LIFETIME = timedelta(minutes=10)
MAX_PICKUPS = 1000

# The CA's error codes and the status our page answers with.
_CA_ERRORS: dict[str, tuple[type[GatewayError], str]] = {
    "bad_credentials": (Unauthorized, "acquisition_bad_credentials"),
    "acquisition_locked": (Locked, "acquisition_locked"),
    "usable_certificate_exists": (Conflict, "usable_certificate_exists"),
    "attempt_in_progress": (Conflict, "attempt_in_progress"),
    # Other tries of the same acquisition password are being checked: try again (depends
    # on concurrency only, never on which secret was wrong).
    "busy": (TooManyAttempts, "busy"),
    "invalid_user_id": (BadRequest, "bad_request"),
    "acquisition_not_open": (Conflict, "acquisition_not_open"),
    "renewal_not_open": (Conflict, "renewal_not_open"),
    "certificate_expired": (Conflict, "certificate_expired"),
    "certificate_revoked": (Conflict, "cert_revoked"),
    "not_newest_certificate": (Conflict, "not_newest_certificate"),
}
# Refusals shown on the form itself, so that the user can correct and resend.
_FORM_ERRORS = frozenset({
    "bad_credentials", "acquisition_bad_credentials", "too_many_attempts",
    "usable_certificate_exists",
    "attempt_in_progress", "busy", "bad_request", "acquisition_not_open", "renewal_not_open",
    "certificate_expired", "not_newest_certificate",
})


def _translate(exc: CaRefused) -> GatewayError:
    kind, code = _CA_ERRORS.get(exc.code, (Conflict, "default"))
    details: dict[str, object] = {}
    opens_at = exc.body.get("opens_at")
    if isinstance(opens_at, str):
        with contextlib.suppress(ValueError):
            details["opens_at"] = datetime.fromisoformat(opens_at)
    return kind(str(exc), code=code, **details)


# -- the one-time pickup of an issued PKCS#12 ---------------------------------------------


@dataclass(eq=False)
class Pickup:
    """An issued certificate waiting for its [ダウンロード] (§2.1(4), §2.10.1(5))."""

    kind: str  # "acquire" (file protected by the acquisition password) or "renew" (login pw)
    user_id: str
    serial: str
    not_after: str
    expires_at: datetime
    fingerprint: str | None  # renewal: only the certificate that asked may take it
    pkcs12: bytes = field(repr=False)

    @property
    def filename(self) -> str:
        """The download's file name (the user ID matches USER_ID_PATTERN: header-safe)."""
        return f"{self.user_id}.p12"


class PickupStore:
    """Issued files by ticket hash, in the gateway's store; each can be taken once, within
    its lifetime, by whichever process the request reaches (module docstring)."""

    def __init__(self, clock: Clock, backend: PickupBackend, *,
                 lifetime: timedelta = PICKUP_LIFETIME, limit: int = MAX_PICKUPS) -> None:
        self._clock = clock
        self._backend = backend
        self._lifetime = lifetime
        self._limit = limit

    @property
    def lifetime(self) -> timedelta:
        """How long an issued file waits."""
        return self._lifetime

    async def put(self, kind: str, delivered: Delivered, fingerprint: str | None) -> str:
        """Keep a delivered file, sealed; returns the ticket for the cookie."""
        ticket = secrets.token_urlsafe(32)
        key = _ticket_key(ticket)
        nonce = secrets.token_bytes(12)
        sealed = nonce + AESGCM(_sealing_key(ticket)).encrypt(nonce, delivered.pkcs12, key)
        now = self._clock.now()
        await self._backend.put_pickup(PickupRecord(
            ticket_hash=key, kind=kind, user_id=delivered.user_id, serial=delivered.serial,
            not_after=delivered.not_after, expires_at=(now + self._lifetime).timestamp(),
            fingerprint=fingerprint, sealed=sealed), now.timestamp(), self._limit)
        return ticket

    async def peek(self, ticket: str | None) -> Pickup | None:
        """The waiting file of a ticket, left in place."""
        if not ticket:
            return None
        record = await self._backend.peek_pickup(_ticket_key(ticket),
                                                 self._clock.now().timestamp())
        return _unsealed(record, ticket)

    async def expire(self) -> int:
        """Delete every pickup past its lifetime (R-CERT-4: the file is gone after 10 min)."""
        return await self._backend.expire_pickups(self._clock.now().timestamp())

    async def take(self, ticket: str | None) -> Pickup | None:
        """The waiting file of a ticket, removed: a second take gets None."""
        if not ticket:
            return None
        record = await self._backend.take_pickup(_ticket_key(ticket),
                                                 self._clock.now().timestamp())
        return _unsealed(record, ticket)


def _ticket_key(ticket: str) -> bytes:
    return hashlib.sha256(ticket.encode()).digest()


def _sealing_key(ticket: str) -> bytes:
    """The AES-256 key of a pickup: HKDF-SHA256 of the ticket (RFC 5869), a function apart
    from the SHA-256 the store keys it by."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None,
                info=b"sekisho pickup seal v1").derive(ticket.encode())


def _unsealed(record: PickupRecord | None, ticket: str) -> Pickup | None:
    """The file of a stored pickup, opened with the ticket (None when it does not open)."""
    if record is None:
        return None
    try:
        pkcs12 = AESGCM(_sealing_key(ticket)).decrypt(record.sealed[:12], record.sealed[12:],
                                                      record.ticket_hash)
    except InvalidTag:
        return None
    return Pickup(kind=record.kind, user_id=record.user_id, serial=record.serial,
                  not_after=record.not_after, expires_at=datetime.fromtimestamp(
                      record.expires_at, UTC), fingerprint=record.fingerprint, pkcs12=pkcs12)


PICKUPS = web.AppKey("pickups", PickupStore)
THROTTLE = web.AppKey("acquire_throttle", AddressThrottle)


async def _hand_over(request: web.Request, kind: str, delivered: Delivered,
               fingerprint: str | None = None) -> web.Response:
    """303 to the download page; the ticket goes into its own short-lived cookie."""
    ticket = await request.app[PICKUPS].put(kind, delivered, fingerprint)
    response = redirect("/auth/download")
    response.set_cookie(PICKUP_COOKIE, ticket, path="/", secure=True, httponly=True,
                        samesite="Strict",
                        max_age=int(request.app[PICKUPS].lifetime.total_seconds()))
    return response


def _own(pickup: Pickup | None, request: web.Request) -> Pickup | None:
    """A renewal's file only for the certificate that asked for it."""
    if pickup is None or pickup.fingerprint is None:
        return pickup
    presented = request.app[VERIFIER].presented_fingerprint(request)
    return pickup if hmac.compare_digest(presented, pickup.fingerprint) else None


async def download_page(request: web.Request) -> web.Response:
    """GET /auth/download: 証明書ダウンロード画面 with [ダウンロード] and import help."""
    pickup = _own(await request.app[PICKUPS].peek(request.cookies.get(PICKUP_COOKIE)), request)
    minutes = int(request.app[PICKUPS].lifetime.total_seconds() // 60)
    return render(request, "download.html", {"pickup": pickup, "pickup_minutes": minutes,
                                             "kind": await _wording(request, pickup)},
                  status=200 if pickup else 404, form_token=form_token(request))


async def _wording(request: web.Request, pickup: Pickup | None) -> str:
    """Which instructions the download page gives (issue 15 item 5): a first acquisition
    (log in with the temporary password next), a re-acquisition by a user who already chose
    a password (new PC §2.9, expiry §2.10.2, a migration campaign) or a renewal."""
    if pickup is None or pickup.kind != "acquire":
        return pickup.kind if pickup else ""
    user = await request.app[USERS].get(pickup.user_id)
    return "acquire" if user is None or user.must_change else "reacquire"


async def download(request: web.Request) -> web.Response:
    """POST /auth/download: the PKCS#12, once, never cached (R-CERT-4)."""
    form = await read_form(request)
    check_form_token(request, form)
    store = request.app[PICKUPS]
    ticket = request.cookies.get(PICKUP_COOKIE)
    pickup = _own(await store.peek(ticket), request)
    if pickup is not None:
        pickup = await store.take(ticket)  # one taker wins, whichever process it reaches
    if pickup is None:
        return render(request, "download.html", {"pickup": None}, status=404,
                      form_token=form_token(request))
    _log.info("certificate_downloaded", user_id=pickup.user_id, serial=pickup.serial,
              kind=pickup.kind)
    response = web.Response(
        body=pickup.pkcs12, content_type="application/x-pkcs12",
        headers={**PAGE_HEADERS, "Pragma": "no-cache",
                 "Content-Disposition": f'attachment; filename="{pickup.filename}"'},
    )
    response.del_cookie(PICKUP_COOKIE, path="/", secure=True, httponly=True, samesite="Strict")
    return response


# -- acquisition and renewal ----------------------------------------------------------------


async def _check_login_password(request: web.Request, user_id: str, password: str,
                                actor: str) -> None:
    result = await request.app[AUTH].verify_password(user_id, password, actor=actor)
    result.require_user()


async def acquire_page(request: web.Request) -> web.Response:
    """GET /auth/acquire: 電子証明書発行申請 (§2.1(2)); no certificate needed."""
    return render(request, "acquire.html", form_token=form_token(request))


# Whatever was wrong - the acquisition password, its lock, the user ID, the login password -
# the form says the same (issue 10 item 3); the wording warns about both locks (issue 15
# item 7).
_SAME_ANSWER_CODE = "acquisition_bad_credentials"


async def _acquire(request: web.Request, user_id: str, password: str,
                   acquisition_password: str) -> Delivered:
    if not await request.app[THROTTLE].allow(request.remote):
        _log.warning("acquisition_throttled", remote=request.remote)
        raise TooManyAttempts("too many attempts from this address", code="too_many_attempts")
    auth, ca = request.app[AUTH], request.app[CA]
    try:
        if not acquisition_password:
            raise CaRefused("empty", code="bad_credentials", ca_status=401, body={})
        ticket = await ca.open_acquisition(user_id, acquisition_password)
    except CaRefused as exc:
        if exc.code not in ("bad_credentials", "acquisition_locked", "invalid_user_id",
                            "bad_field"):
            raise _translate(exc) from None
        # As long as the answer below after a right acquisition password and a wrong
        # login password (one more password check).
        await auth.spend_one_check(password)
        raise Unauthorized("a secret is wrong", code=_SAME_ANSWER_CODE) from None
    result = await auth.verify_password(user_id, password, actor="acquisition")
    if result.status is LoginStatus.BAD_CREDENTIALS:
        raise Unauthorized("a secret is wrong", code=_SAME_ANSWER_CODE)
    result.require_user()  # the login lock (the client proved the acquisition password)
    try:
        return await ca.acquire(user_id, acquisition_password, ticket=ticket)
    except CaRefused as exc:
        raise _translate(exc) from None


async def acquire(request: web.Request) -> web.Response:
    """POST /auth/acquire: throttle, the acquisition password at the CA (a ticket), then the
    login password, then issuance with the ticket (see the module docstring)."""
    form = await read_form(request)
    check_form_token(request, form)
    user_id = form_field(form, "user_id", max_length=64).strip()
    try:
        delivered = await _acquire(request, user_id, form_field(form, "password"),
                                   form_field(form, "acquisition_password"))
    except GatewayError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        return render(request, "acquire.html", {"error": exc, "user_id": user_id},
                      status=exc.status, form_token=form_token(request))
    _log.info("certificate_acquired", user_id=user_id, serial=delivered.serial)
    return await _hand_over(request, "acquire", delivered)


async def renew_page(request: web.Request) -> web.Response:
    """GET /auth/renew: the renewal form for the presented certificate (§2.10.1(3))."""
    certificate = await request.app[VERIFIER].required(request)
    context = certificate_context(request, certificate)
    if not in_renewal_window(request, certificate):
        # Issue 15 item 6: say when renewal opens before asking for anything.
        context["opens_at"] = certificate.not_after - request.app[CONFIG].renewal_window
    return render(request, "renew.html", context, form_token=form_token(request))


async def _renew(request: web.Request, certificate: ClientCertificate,
                 password: str) -> Delivered:
    await _check_login_password(request, certificate.user_id, password, "renewal")
    try:
        return await request.app[CA].renew(certificate.serial, password)
    except CaRefused as exc:
        raise _translate(exc) from None


async def renew(request: web.Request) -> web.Response:
    """POST /auth/renew: login password -> new PKCS#12 encrypted with it (R-CERT-6)."""
    certificate = await request.app[VERIFIER].required(request)
    form = await read_form(request)
    check_form_token(request, form)
    try:
        delivered = await _renew(request, certificate, form_field(form, "password"))
    except GatewayError as exc:
        if exc.code not in _FORM_ERRORS:
            raise
        return render(request, "renew.html", {**certificate_context(request, certificate),
                                              "error": exc},
                      status=exc.status, form_token=form_token(request))
    _log.info("certificate_renewed", user_id=certificate.user_id, old_serial=certificate.serial,
              serial=delivered.serial)
    return await _hand_over(request, "renew", delivered, certificate.fingerprint)


def add_routes(app: web.Application) -> None:
    """Register the acquisition, renewal and download pages (and the pickup store)."""
    app[PICKUPS] = PickupStore(app[CLOCK], app[USERS])
    config = app[CONFIG]
    app[THROTTLE] = AddressThrottle(app[CLOCK], app[USERS],
                                    limit=config.acquire_attempts_per_address,
                                    window=config.acquire_throttle_window)
    app.router.add_get("/auth/acquire", acquire_page)
    app.router.add_post("/auth/acquire", acquire)
    app.router.add_get("/auth/renew", renew_page)
    app.router.add_post("/auth/renew", renew)
    app.router.add_get("/auth/download", download_page)
    app.router.add_post("/auth/download", download)
