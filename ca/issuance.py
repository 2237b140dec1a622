"""The CA service: acquisition, renewal, CSR issuance, revocation (R-CERT-*).

Policy decides whether (policy.certificates), the profile decides what (policy.profile), the
signer only signs (keys). Every certificate follows "record intent, then sign" (STYLE 5): the
serial is reserved in the store inside the same transaction that checks the user's other
certificates, then the certificate is signed, the PKCS#12 built, and the certificate committed
as issued before anything is returned (R-CERT-3).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

import structlog
from asn1crypto import csr as asn1_csr
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from ca import crl
from ca.config import CaConfig
from ca.errors import BadRequest, Busy, Conflict, Locked, NotFound, Unauthorized
from ca.issuers import Issuers
from ca.pkcs12 import KeyWorkers, public_key_of
from ca.storage import CaStore
from ca.store import CertRecord, Owner, serial_hex
from ca.tickets import AcquisitionTickets
from common import faults
from common.passwords import PasswordHasher, generate_secret
from keys.hierarchy import IssuerGeneration
from keys.signer import signature_hash_for
from policy import certificates as rules
from policy.clock import Clock
from policy.cutover import Cutover, check_reacquisition_open, cut_over_test, cutover_for
from policy.errors import AcquisitionNotYetOpen, PolicyViolation
from policy.profile import check_csr_key, validate_user_id

_log = structlog.get_logger("ca.issuance")

_MAX_CSR_BYTES = 16384


def parse_reason(text: str) -> str:
    """Normalise an RFC 5280 reason name (R-CERT-7); certificateHold is not offered."""
    try:
        return crl.parse_reason(text)
    except ValueError as exc:
        raise BadRequest(str(exc), code="bad_reason") from None


def parse_serial(text: str) -> str:
    """Accept a serial as hex (optionally 0x-prefixed or colon-separated); return canonical hex."""
    cleaned = re.sub(r"[:\s]", "", text or "").lower().removeprefix("0x")
    if not cleaned or len(cleaned) > 40 or not re.fullmatch(r"[0-9a-f]+", cleaned):
        raise BadRequest(f"{text!r} is not a certificate serial number (hex)", code="bad_serial")
    value = int(cleaned, 16)
    if value == 0:
        raise BadRequest("serial number 0 is never issued", code="bad_serial")
    return serial_hex(value)


def facts(record: CertRecord) -> rules.CertFacts:
    """The rule-relevant facts of a stored certificate."""
    return rules.CertFacts(
        serial=record.serial, generation=record.generation, not_before=record.not_before,
        not_after=record.not_after, revoked_at=record.revoked_at,
    )


@dataclass(frozen=True)
class Delivery:
    """A certificate with its server-generated key, inside an encrypted PKCS#12."""

    record: CertRecord
    pkcs12: bytes


@dataclass(frozen=True)
class Issued:
    """A certificate issued from a CSR, with its chain."""

    record: CertRecord
    chain_der: list[bytes]


RevocationListener = Callable[[list[CertRecord]], Awaitable[None]]
IssuanceListener = Callable[[CertRecord], Awaitable[None]]


class CertificateAuthority:
    """Issues, renews and revokes client certificates for one CA."""

    def __init__(
        self, *, config: CaConfig, clock: Clock, store: CaStore, issuers: Issuers,
        workers: KeyWorkers, hasher: PasswordHasher, cutovers: Sequence[Cutover] = (),
        owner: Owner | None = None,
    ) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self.issuers = issuers
        self._workers = workers
        self._hasher = hasher
        self.cutovers = tuple(cutovers)
        self._is_cut_over = cut_over_test(self.cutovers)
        # Holds this process's intents and counted tries (R-FAULT-2/3).
        self.owner = owner or Owner("ca-process", secrets.token_hex(8))
        self.revocation_listeners: list[RevocationListener] = []
        self.issuance_listeners: list[IssuanceListener] = []
        self.tickets = AcquisitionTickets(clock, store)

    # -- acquisition passwords (R-CERT-5) ----------------------------------------------

    async def issue_acquisition_password(self, user_id: str, *, actor: str) -> str:
        """Create or replace a user's acquisition password; returns it once, stores a hash."""
        user_id = self._user_id(user_id)
        password = generate_secret(self._config.acquisition_password_length)
        password_hash = await self._hasher.hash(password)
        await self._store.set_acquisition_secret(user_id, password_hash, self._clock.now(), actor)
        return password

    async def _check_acquisition_password(self, user_id: str, password: str, actor: str) -> None:
        """Verify with lockout; unknown users cost the same and fail the same (R-LOCK-2)."""
        lockout = self._config.acquisition_lockout
        secret = await self._store.get_acquisition_secret(user_id)
        if secret is None:
            await self._hasher.verify(None, password)
            raise Unauthorized("user ID or acquisition password is wrong", code="bad_credentials")
        now = self._clock.now()
        reservation = await self._store.reserve_acquisition_attempt(
            user_id, lockout.max_failures, now=now, deadline=now + self._config.request_deadline,
            owner=self.owner,
        )
        if reservation == "busy":
            raise Busy("other tries with this acquisition password are being checked; retry")
        if reservation == "locked":
            # The cost of a check: a locked password must not answer faster (which would
            # tell a stranger that this user exists and was locked).
            await self._hasher.verify(None, password)
            raise Locked(
                "the acquisition password is locked after too many wrong tries; ask the bank "
                "to issue a new one",
                code="acquisition_locked",
            )
        await faults.reached("ca.after_attempt_counted")
        if await self._hasher.verify(secret.password_hash, password):
            if await self._store.acquisition_succeeded(user_id, self._clock.now()):
                return
            raise Locked(
                "the acquisition password is locked after too many wrong tries; ask the bank "
                "to issue a new one",
                code="acquisition_locked",
            )
        failures, locked = await self._store.acquisition_failed(
            user_id, self._clock.now(), lockout.max_failures, actor
        )
        if locked:
            raise Locked(
                "the acquisition password is now locked; ask the bank to issue a new one",
                code="acquisition_locked",
            )
        raise Unauthorized(
            "user ID or acquisition password is wrong", code="bad_credentials",
            remaining_tries=lockout.remaining(failures),
        )

    # -- issuance ------------------------------------------------------------------------

    async def open_acquisition(self, user_id: str, acquisition_password: str, *,
                               actor: str) -> tuple[str, datetime]:
        """Check the acquisition password (counted, locking) and return a single-use ticket
        for `acquire` (ca.tickets: the gateway checks the login password in between)."""
        user_id = self._user_id(user_id)
        await self._check_acquisition_password(user_id, acquisition_password, actor)
        return await self.tickets.issue(user_id, acquisition_password)

    async def acquire(self, user_id: str, acquisition_password: str, *, actor: str,
                      ticket: str | None = None) -> Delivery:
        """First acquisition or re-acquisition with a server-side key (R-CERT-4, R-CERT-5);
        with a `ticket` from `open_acquisition`, the password is not evaluated again."""
        user_id = self._user_id(user_id)
        if ticket is None:
            await self._check_acquisition_password(user_id, acquisition_password, actor)
        elif not await self.tickets.redeem(ticket, user_id, acquisition_password):
            raise Unauthorized("the acquisition ticket is not valid", code="bad_credentials")
        now = self._clock.now()
        try:
            delivery = await self._issue_with_server_key(
                user_id, acquisition_password, now=now, actor=actor,
                check=lambda existing: self._check_may_acquire(existing, now),
            )
        except AcquisitionNotYetOpen as refused:
            await self._store.audit(
                at=now, actor=actor, action="cutover.reacquisition_refused", subject=user_id,
                details={"opens_at": refused.opens_at.isoformat()},
            )
            raise
        await self._audit_cutover_reacquisition(delivery.record, now, actor)
        return delivery

    async def _audit_cutover_reacquisition(
        self, record: CertRecord, now: datetime, actor: str
    ) -> None:
        """R-CUT-1: record that a user under a cutover has re-acquired."""
        if not self.cutovers:
            return
        for previous in await self._store.certificates_of(record.user_id):
            cutover = cutover_for(self.cutovers, facts(previous), now)
            if previous.serial != record.serial and cutover is not None:
                await self._store.audit(
                    at=now, actor=actor, action="cutover.reacquired", subject=record.user_id,
                    details={"cutover": cutover.name, "old_serial": previous.serial,
                             "new_serial": record.serial},
                )
                return

    def _check_may_acquire(self, existing: list[CertRecord], now: datetime) -> None:
        """R-CERT-5 plus R-CUT-1: not while a usable certificate is held, and for holders of
        a certificate under a cutover, not before the cutover day."""
        issued = [facts(record) for record in existing if record.state == "issued"]
        check_reacquisition_open(self.cutovers, issued, now)
        rules.check_may_acquire(
            [facts(record) for record in existing], now, self._is_cut_over
        )

    async def renew(self, serial: str, password: str, *, actor: str) -> Delivery:
        """Renew the user's newest certificate in its last `window` days (R-CERT-6).

        The caller (the gateway) has authenticated the current certificate and the login
        password; the new PKCS#12 is encrypted with that password.
        """
        serial = parse_serial(serial)
        current = await self._store.get(serial)
        if current is None or current.state != "issued":
            raise NotFound(f"no issued certificate with serial {serial}")
        if not password:
            raise BadRequest("a password to protect the PKCS#12 is required")
        now = self._clock.now()
        window = self._config.profile.renewal_window

        def check(existing: list[CertRecord]) -> None:
            # `existing` holds the intents still in progress too: a renewal (or acquisition)
            # under way for this user refuses a second one, as acquisition does (R-CERT-6).
            if any(record.state == "intended" for record in existing):
                raise Conflict("a certificate for this user is being issued right now",
                               code="attempt_in_progress")
            issued = [record for record in existing if record.state == "issued"]
            newest = issued[-1].serial if issued else serial
            rules.check_may_renew(facts(current), newest, now, window, self._is_cut_over)

        return await self._issue_with_server_key(
            current.user_id, password, now=now, actor=actor, check=check,
            renewed_from=serial,
        )

    async def issue_from_csr(
        self, user_id: str, csr_data: bytes, *, acquisition_password: str | None, actor: str
    ) -> Issued:
        """R-CERT-8: the same policy for a key the client generated itself.

        Through the API the acquisition password is required; an officer's CLI call is
        authorised by the officer and passes None.
        """
        user_id = self._user_id(user_id)
        csr = _load_csr(csr_data)
        public_key = csr.public_key()
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            check_csr_key("ec", public_key.curve.key_size, _named_curve_oid(csr))
        elif isinstance(public_key, rsa.RSAPublicKey):
            check_csr_key("rsa", public_key.key_size)
        else:
            raise BadRequest("the CSR key must be EC P-256/P-384 or RSA >= 2048", code="bad_key")
        names = csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        if names and names[0].value != user_id:
            raise BadRequest(
                f"the CSR's CN {names[0].value!r} does not match user ID {user_id!r}",
                code="csr_subject_mismatch",
            )
        if acquisition_password is not None:
            await self._check_acquisition_password(user_id, acquisition_password, actor)
        now = self._clock.now()
        record, _ = await self._sign_and_store(
            user_id, public_key, kind="csr", now=now, actor=actor,
            check=lambda existing: self._check_may_acquire(existing, now),
        )
        return Issued(record=record, chain_der=self.issuers.chain_der(record.generation))

    async def _issue_with_server_key(
        self, user_id: str, password: str, *, now: datetime, actor: str,
        check: Callable[[list[CertRecord]], None], renewed_from: str | None = None,
    ) -> Delivery:
        key_der = await self._workers.generate_key(self._config.profile.server_key_algorithm)
        record, pkcs12_der = await self._sign_and_store(
            user_id, public_key_of(key_der), kind="server_key", now=now, actor=actor,
            check=check, deliver=lambda der, generation: self._workers.pkcs12(
                key_der, der, self.issuers.chain_der(generation), password,
                self._config.pkcs12_kdf_rounds, user_id,
            ), renewed_from=renewed_from,
        )
        return Delivery(record=record, pkcs12=pkcs12_der)

    async def _sign_and_store(
        self, user_id: str, public_key: CertificatePublicKeyTypes, *, kind: str,
        now: datetime, actor: str, check: Callable[[list[CertRecord]], None],
        deliver: Callable[[bytes, str], Awaitable[bytes]] | None = None,
        renewed_from: str | None = None,
    ) -> tuple[CertRecord, bytes]:
        """Reserve, sign, (build the delivery,) commit. Returns the record and the delivery.

        Without `deliver`, the second element is the certificate DER.
        """
        generation = self.issuers.for_issuance(now)
        spec = self._config.profile.client_certificate(user_id, generation.name, now)
        serial = x509.random_serial_number()
        serial_text = serial_hex(serial)
        await self._store.reserve(
            serial=serial_text, user_id=user_id, generation=generation.name, kind=kind,
            not_before=spec.not_before, not_after=spec.not_after, now=now,
            check=check, actor=actor, owner=self.owner.id,
            deadline=self._clock.now() + self._config.request_deadline,
        )
        await faults.reached("ca.after_intent")
        der: bytes | None = None
        try:
            # Off the event loop: with keys.backend = "pkcs11" this waits on the token
            # (R-KEY-1); a token that cannot sign fails the issuance here (fail-closed).
            certificate = await asyncio.to_thread(
                _build_client_certificate, generation, public_key, serial, spec.common_name,
                spec.not_before, spec.not_after, spec.crl_url, spec.ocsp_url,
            )
            der = certificate.public_bytes(serialization.Encoding.DER)
            delivery = await deliver(der, generation.name) if deliver is not None else der
            await faults.reached("ca.after_sign")
            record = await self._store.complete(
                serial_text, der, hashlib.sha256(der).hexdigest(), self._clock.now(), actor
            )
        except BaseException as exc:
            # Not stored as issued, so never delivered. On a full disk this fails too; the
            # intent then stays until its deadline and `recover` settles it (R-FAULT-2).
            with contextlib.suppress(Exception):
                await self._store.abandon(serial_text, der, self._clock.now(),
                                          type(exc).__name__)
            raise
        await faults.reached("ca.after_issued")
        _log.info(
            "certificate_issued", user_id=user_id, serial=serial_text, generation=generation.name,
            kind=kind, not_after=record.not_after.isoformat(), renewed_from=renewed_from,
        )
        for listener in self.issuance_listeners:
            await listener(record)
        return record, delivery

    # -- revocation (R-CERT-7) -----------------------------------------------------------

    async def revoke_serial(self, serial: str, reason: str, *, actor: str) -> list[CertRecord]:
        """Revoke one certificate by serial."""
        serial = parse_serial(serial)
        reason = parse_reason(reason)
        record = await self._store.get(serial)
        # Intended and abandoned rows too (R-FAULT-2): revoking one puts its serial on the CRL
        # and makes sure it can never be issued.
        if record is None:
            raise NotFound(f"no certificate with serial {serial}", code="unknown_serial")
        if record.revoked_at is not None:
            raise Conflict(
                f"certificate {serial} was already revoked at {record.revoked_at:%Y-%m-%d %H:%M}"
                f" UTC ({record.revocation_reason})",
                code="already_revoked",
            )
        return await self._revoke([serial], reason, actor)

    async def revoke_user(self, user_id: str, reason: str, *, actor: str) -> list[CertRecord]:
        """Revoke every unrevoked, unexpired certificate of a user (e.g. a replaced PC)."""
        user_id = self._user_id(user_id)
        reason = parse_reason(reason)
        now = self._clock.now()
        targets = [
            record.serial for record in await self._store.certificates_of(user_id)
            if record.revoked_at is None and record.not_after >= now
        ]
        if not targets:
            raise NotFound(
                f"user {user_id} holds no unrevoked, unexpired certificate",
                code="nothing_to_revoke",
            )
        return await self._revoke(targets, reason, actor)

    async def revoke_many(
        self, serials: list[str], reason: str, *, actor: str, details: dict[str, object]
    ) -> list[CertRecord]:
        """Revoke a list of certificates in one audited transaction (bulk operations)."""
        return await self._revoke(serials, parse_reason(reason), actor, details)

    async def _revoke(
        self, serials: list[str], reason: str, actor: str,
        details: dict[str, object] | None = None,
    ) -> list[CertRecord]:
        revoked = await self._store.revoke(
            serials, at=self._clock.now(), reason=reason, actor=actor, details=details
        )
        for record in revoked:
            _log.info("certificate_revoked", serial=record.serial, user_id=record.user_id,
                      reason=reason, actor=actor)
        if revoked:
            for listener in self.revocation_listeners:
                await listener(revoked)
        return revoked

    # -- crash recovery (R-FAULT-2, R-FAULT-3) ------------------------------------------

    async def recover(self) -> tuple[list[tuple[str, str]], list[str]]:
        """Settle what no request can finish any more: intents and counted acquisition
        tries past their deadline or left by an earlier run of this process's instance.
        Run at start-up (before listening) and every few seconds. Returns both lists."""
        now = self._clock.now()
        intents = await self._store.reconcile_intents(now, self.owner)
        attempts = await self._store.expire_acquisition_attempts(
            now, self._config.acquisition_lockout.max_failures, self.owner)
        for serial, user_id in intents:
            _log.warning("intent_abandoned", serial=serial, user_id=user_id,
                         why="its request can no longer complete")
        for user_id in attempts:
            _log.warning("acquisition_attempt_expired", user_id=user_id,
                         why="its check can no longer complete; counted as a failure")
        return intents, attempts

    # -- queries -------------------------------------------------------------------------

    async def certificate(self, serial: str) -> CertRecord:
        """One certificate by serial, any state."""
        serial = parse_serial(serial)
        record = await self._store.get(serial)
        if record is None or record.der is None:
            raise NotFound(f"no certificate with serial {serial}", code="unknown_serial")
        return record

    def state_of(self, record: CertRecord) -> rules.CertState:
        """Where a certificate stands now."""
        return rules.state_at(facts(record), self._clock.now(), self._is_cut_over)

    async def certificates_of(self, user_id: str) -> list[CertRecord]:
        """A user's issued certificates, oldest first."""
        return await self._store.certificates_of(self._user_id(user_id))

    @staticmethod
    def _user_id(user_id: str) -> str:
        try:
            return validate_user_id(user_id)
        except PolicyViolation as exc:
            raise BadRequest(str(exc), code=exc.code) from None


def _named_curve_oid(csr: x509.CertificateSigningRequest) -> str | None:
    """The namedCurve OID of the CSR's own EC SubjectPublicKeyInfo (RFC 5480), or None when
    the key carries explicit curve parameters."""
    info = asn1_csr.CertificationRequest.load(csr.public_bytes(serialization.Encoding.DER))
    parameters = info["certification_request_info"]["subject_pk_info"]["algorithm"]["parameters"]
    return parameters.chosen.dotted if parameters.name == "named" else None


def _load_csr(data: bytes) -> x509.CertificateSigningRequest:
    if not data or len(data) > _MAX_CSR_BYTES:
        raise BadRequest("the CSR is empty or too large", code="bad_csr")
    try:
        csr = (
            x509.load_pem_x509_csr(data) if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_csr(data)
        )
        valid = csr.is_signature_valid
    except (ValueError, TypeError):
        raise BadRequest(
            "the CSR is not a valid PEM or DER PKCS#10 request", code="bad_csr"
        ) from None
    if not valid:
        raise BadRequest("the CSR's self-signature does not verify", code="bad_csr")
    return csr


def _build_client_certificate(
    generation: IssuerGeneration, public_key: CertificatePublicKeyTypes, serial: int,
    common_name: str, not_before: datetime, not_after: datetime, crl_url: str, ocsp_url: str,
) -> x509.Certificate:
    """R-CERT-1: CN = user ID, clientAuth, CRL DP and OCSP AIA of this CA."""
    issuer = generation.certificate
    ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    is_rsa = isinstance(public_key, rsa.RSAPublicKey)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
        .issuer_name(issuer.subject)
        .public_key(public_key)
        .serial_number(serial)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, content_commitment=False, key_encipherment=is_rsa,
                data_encipherment=False, key_agreement=False, key_cert_sign=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .add_extension(
            x509.CRLDistributionPoints([
                x509.DistributionPoint(
                    full_name=[x509.UniformResourceIdentifier(crl_url)], relative_name=None,
                    reasons=None, crl_issuer=None,
                )
            ]),
            critical=False,
        )
        .add_extension(
            x509.AuthorityInformationAccess([
                x509.AccessDescription(
                    AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url)
                )
            ]),
            critical=False,
        )
        .sign(generation.signer, signature_hash_for(generation.signer))
    )
