"""Revocation status of client certificates (R-GW-1, R-GW-2), as the CA publishes it.

Three sources, one cache:

1. **The CA's revocation feed** (`GET /v1/revocations?after=N&wait=S`, a long poll on the
   internal API). The follower task keeps one request open; the CA answers it within 0.25 s
   of any revocation, including one made by the officer CLI in another process. Each event
   marks the fingerprint revoked, drops its cached answer and tells the listeners (the
   session store ends that certificate's sessions). This is what makes a revocation bite
   within about a second, for new connections and for logged-in sessions alike.
2. **OCSP** (RFC 6960) at our CA's configured `ca_public_url` + `/ocsp` (never the AIA URL
   written in the certificate being judged): a nonce-less POST, so the CA can serve
   its pre-signed answer. The signature, the delegated responder (issued by the same CA,
   EKU OCSPSigning, valid now), the CertID and thisUpdate/nextUpdate are checked.
3. **The CRL** (RFC 5280) at `ca_public_url` + `/crl/<generation>.crl` (never the
   certificate's distribution point), when OCSP fails: signature
   by the issuer, nextUpdate in the future. Cached per URL for the same lifetime.

With several CA nodes (issue 13) the feed, OCSP and the CRL are asked of the node in use and,
when it fails, of the next one (gateway/ca_nodes.py, gateway/ca_client.py): the feed's sequence
numbers are the shared database's, so following resumes on another node where it stopped.

Cache lifetimes: a "good" answer is re-asked after `cache_ttl` (default 5 min) while the
feed is followed, after `unfollowed_ttl` (2 s) while it is not (CA restarting, network cut),
and never later than its nextUpdate. "Revoked" answers are final and kept. When a re-ask
fails (CA unreachable), an answer is still used until its own nextUpdate (the CA promised it
until then); after that the gateway fails closed (`RevocationUnavailable`, a 503 page).
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509 import ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from gateway.ca_client import CaClient, CaRefused, CaUnavailable, RevocationEvent
from gateway.config import RevocationSettings
from gateway.errors import CertificateRefused, RevocationUnavailable
from gateway.tls import generation_of
from policy.clock import Clock

_log = structlog.get_logger("gateway.revocation")
CLOCK_SKEW = timedelta(minutes=5)
_MAX_CACHE = 100_000


class Status(enum.StrEnum):
    """What the CA says about a certificate."""

    GOOD = "good"
    REVOKED = "revoked"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Answer:
    """One revocation answer with the times that bound its use."""

    status: Status
    source: str  # "ocsp", "crl" or "feed"
    fetched_at: datetime
    next_update: datetime | None  # None: final (revoked)


@dataclass(frozen=True)
class _Crl:
    crl: x509.CertificateRevocationList
    fetched_at: datetime
    next_update: datetime


class _BadAnswer(Exception):
    """An OCSP or CRL answer that cannot be trusted (treated like an unreachable CA)."""


Listener = Callable[[RevocationEvent], None]


class RevocationChecker:
    """Answers "is this certificate revoked?" from the cache, OCSP, CRL and the CA's feed."""

    def __init__(self, ca: CaClient, settings: RevocationSettings, clock: Clock) -> None:
        self._ca = ca
        self._settings = settings
        self._clock = clock
        self._answers: dict[str, Answer] = {}
        self._crls: dict[str, _Crl] = {}
        self._inflight: dict[str, asyncio.Future[Answer]] = {}
        self._revoked_live: set[str] = set()
        self.listeners: list[Listener] = []
        self.following = False
        self.feed_seq = 0
        # When the feed last answered (GET /ready: how fresh our view of revocations is).
        self.last_contact: datetime | None = None

    # -- the per-request check ----------------------------------------------------------

    def _within(self, fetched_at: datetime, next_update: datetime, now: datetime) -> bool:
        """A cached answer or CRL is used until its nextUpdate, and no longer than the TTL
        (shorter while the revocation feed is not followed)."""
        ttl = self._settings.cache_ttl if self.following else self._settings.unfollowed_ttl
        return now < next_update and now < fetched_at + ttl

    def _fresh(self, answer: Answer, now: datetime) -> bool:
        return answer.next_update is None or self._within(answer.fetched_at,
                                                          answer.next_update, now)

    def cached_good(self, fingerprint: str, now: datetime) -> bool:
        """True when a fresh "good" answer is cached (the per-request fast path: a set and a
        dict lookup, no await); False sends the caller to `check`."""
        if fingerprint in self._revoked_live:
            return False
        answer = self._answers.get(fingerprint)
        return (answer is not None and answer.status is Status.GOOD
                and self._fresh(answer, now))

    async def check(self, fingerprint: str, certificate: x509.Certificate,
                    issuer: x509.Certificate) -> Answer:
        """The answer for a certificate; raises CertificateRefused or RevocationUnavailable."""
        if fingerprint in self._revoked_live:
            raise CertificateRefused("this certificate has been revoked", code="cert_revoked")
        now = self._clock.now()
        answer = self._answers.get(fingerprint)
        if answer is None or not self._fresh(answer, now):
            answer = await self._refresh(fingerprint, certificate, issuer, answer)
        if answer.status is Status.REVOKED:
            raise CertificateRefused("this certificate has been revoked", code="cert_revoked")
        if answer.status is Status.UNKNOWN:
            raise CertificateRefused("the CA does not know this certificate", code="cert_unknown")
        return answer

    async def _refresh(self, fingerprint: str, certificate: x509.Certificate,
                       issuer: x509.Certificate, previous: Answer | None) -> Answer:
        """Ask the CA once per certificate at a time; concurrent callers share the answer."""
        pending = self._inflight.get(fingerprint)
        if pending is not None:
            return await asyncio.shield(pending)
        pending = asyncio.get_running_loop().create_future()
        self._inflight[fingerprint] = pending
        try:
            answer = await self._resolve(fingerprint, certificate, issuer, previous)
        except Exception as exc:
            pending.set_exception(exc)
            pending.exception()  # marked as retrieved: no "never retrieved" warning
            raise
        except BaseException:
            pending.cancel()
            raise
        finally:
            self._inflight.pop(fingerprint, None)
        pending.set_result(answer)
        return answer

    async def _resolve(self, fingerprint: str, certificate: x509.Certificate,
                       issuer: x509.Certificate, previous: Answer | None) -> Answer:
        try:
            answer = await self._ask(certificate, issuer)
        except (CaUnavailable, _BadAnswer) as exc:
            now = self._clock.now()
            if previous is not None and previous.next_update is not None \
                    and now < previous.next_update:
                _log.warning("revocation_stale_answer_used", reason=str(exc),
                             next_update=previous.next_update.isoformat())
                return previous
            _log.error("revocation_unavailable_fail_closed", reason=str(exc))
            raise RevocationUnavailable(
                "the certificate's revocation status cannot be checked") from None
        if fingerprint in self._revoked_live:  # the feed spoke while we were asking
            answer = Answer(Status.REVOKED, "feed", self._clock.now(), None)
        if len(self._answers) >= _MAX_CACHE:
            self._answers.clear()
        self._answers[fingerprint] = answer
        return answer

    async def _ask(self, certificate: x509.Certificate, issuer: x509.Certificate) -> Answer:
        try:
            return await self._ask_ocsp(certificate, issuer)
        except (CaUnavailable, _BadAnswer) as exc:
            _log.warning("ocsp_failed_trying_crl", reason=str(exc))
        return await self._ask_crl(certificate, issuer)

    # -- OCSP ---------------------------------------------------------------------------

    async def _ask_ocsp(self, certificate: x509.Certificate,
                        issuer: x509.Certificate) -> Answer:
        # Only our CA's configured responder: never the AIA URL of the certificate being
        # judged (an attacker who writes that URL would choose who answers, and learn who
        # logs in when; cf. Keycloak fetching a certificate's URLs before trusting it).
        request = (ocsp.OCSPRequestBuilder()
                   .add_certificate(certificate, issuer, hashes.SHA1())  # noqa: S303 - RFC 5019 CertID
                   .build().public_bytes(serialization.Encoding.DER))
        # Any CA node answers (issue 13): the first that answers, the node in use first.
        der = await self._ca.fetch_public(
            "/ocsp", seconds=self._settings.fetch_timeout.total_seconds(), method="POST",
            data=request, content_type="application/ocsp-request")
        now = self._clock.now()
        return verify_ocsp_response(der, certificate, issuer, now)

    # -- CRL ----------------------------------------------------------------------------

    async def _ask_crl(self, certificate: x509.Certificate, issuer: x509.Certificate) -> Answer:
        # Our CA's configured CRL of the issuing generation, never the certificate's
        # distribution point (see _ask_ocsp). The name is the CA's contract (R-CERT-1).
        generation = generation_of(issuer)
        if not generation:
            raise _BadAnswer("the issuing CA is not one of our generations")
        # Cached per generation, whichever node served it: every node serves the same CRL
        # (the cluster's one signer, issue 13), checked against the issuer's key anyway.
        path = f"/crl/{generation}.crl"
        now = self._clock.now()
        cached = self._crls.get(path)
        if cached is None or not self._within(cached.fetched_at, cached.next_update, now):
            der = await self._ca.fetch_public(
                path, seconds=self._settings.fetch_timeout.total_seconds())
            cached = _verify_crl(der, issuer, now)
            self._crls[path] = cached
        entry = cached.crl.get_revoked_certificate_by_serial_number(certificate.serial_number)
        if entry is not None:
            return Answer(Status.REVOKED, "crl", now, None)
        return Answer(Status.GOOD, "crl", cached.fetched_at, cached.next_update)

    # -- the CA's revocation feed ---------------------------------------------------------

    def _apply(self, event: RevocationEvent) -> None:
        self._revoked_live.add(event.fingerprint_sha256)
        self._answers[event.fingerprint_sha256] = Answer(
            Status.REVOKED, "feed", self._clock.now(), None)
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:
                _log.exception("revocation_listener_failed")

    async def follow(self) -> None:
        """Follow the CA's revocation feed until cancelled (run from the app's cleanup_ctx).

        The first request (`after=latest`) only finds the current position: certificates
        revoked before start-up are caught by OCSP/CRL, whose answers start empty.
        """
        wait = self._settings.feed_wait.total_seconds()
        backoff = 0.25
        started = False
        while True:
            try:
                if not started:
                    self.feed_seq, _ = await self._ca.revocations("latest", 0)
                    started = True
                    _log.info("revocation_feed_following", position=self.feed_seq)
                else:
                    last, events = await self._ca.revocations(self.feed_seq, wait)
                    for event in events:
                        if event.seq > self.feed_seq:
                            self._apply(event)
                    self.feed_seq = max(self.feed_seq, last)
                self.following = True
                self.last_contact = self._clock.now()
                backoff = 0.25
            except (CaUnavailable, CaRefused, ValueError, KeyError, TypeError) as exc:
                if self.following:
                    _log.warning("revocation_feed_lost", reason=str(exc))
                self.following = False
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


def _check_signature(public_key: object, signature: bytes, data: bytes,
                     algorithm: hashes.HashAlgorithm | None) -> None:
    if algorithm is None:
        raise _BadAnswer("unsupported signature algorithm")
    try:
        if isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif isinstance(public_key, rsa.RSAPublicKey):
            public_key.verify(signature, data, padding.PKCS1v15(), algorithm)
        else:
            raise _BadAnswer("unsupported responder key type")
    except InvalidSignature:
        raise _BadAnswer("bad signature") from None


def _key_hash(certificate: x509.Certificate) -> bytes:
    # RFC 6960 §4.1.1: SHA-1 of the subjectPublicKey BIT STRING's contents, which is RFC 5280
    # §4.2.1.2 method (1) for a key identifier.
    return x509.SubjectKeyIdentifier.from_public_key(certificate.public_key()).digest


def _responder(response: ocsp.OCSPResponse, issuer: x509.Certificate,
               now: datetime) -> x509.Certificate:
    """The certificate whose key signed the response: the issuer or a delegated responder."""
    if response.responder_name == issuer.subject or response.responder_key_hash == _key_hash(
            issuer):
        return issuer
    for candidate in response.certificates:
        if not (candidate.subject == response.responder_name
                or response.responder_key_hash == _key_hash(candidate)):
            continue
        try:
            candidate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise _BadAnswer("the OCSP responder is not issued by the certificate's CA") from None
        try:
            eku = candidate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            raise _BadAnswer("the OCSP responder lacks EKU OCSPSigning") from None
        if ExtendedKeyUsageOID.OCSP_SIGNING not in eku:
            raise _BadAnswer("the OCSP responder lacks EKU OCSPSigning")
        if not candidate.not_valid_before_utc <= now <= candidate.not_valid_after_utc:
            raise _BadAnswer("the OCSP responder certificate is not valid now")
        return candidate
    raise _BadAnswer("the OCSP response names no responder we can verify")


def verify_ocsp_response(der: bytes, certificate: x509.Certificate, issuer: x509.Certificate,
                         now: datetime) -> Answer:
    """Check an OCSP response for `certificate` (RFC 6960 §3.2) and turn it into an Answer."""
    try:
        response = ocsp.load_der_ocsp_response(der)
    except ValueError:
        raise _BadAnswer("malformed OCSP response") from None
    if response.response_status is not ocsp.OCSPResponseStatus.SUCCESSFUL:
        raise _BadAnswer(f"OCSP {response.response_status.name}")
    signer = _responder(response, issuer, now)
    _check_signature(signer.public_key(), response.signature, response.tbs_response_bytes,
                     response.signature_hash_algorithm)
    if response.serial_number != certificate.serial_number or (
            isinstance(response.hash_algorithm, hashes.SHA1)
            and response.issuer_key_hash != _key_hash(issuer)):
        raise _BadAnswer("the OCSP response is about another certificate")
    next_update = response.next_update_utc
    if response.this_update_utc > now + CLOCK_SKEW or next_update is None or next_update <= now:
        raise _BadAnswer("the OCSP response is not current")
    if response.certificate_status is ocsp.OCSPCertStatus.REVOKED:
        return Answer(Status.REVOKED, "ocsp", now, None)
    if response.certificate_status is ocsp.OCSPCertStatus.UNKNOWN:
        return Answer(Status.UNKNOWN, "ocsp", now, next_update)
    return Answer(Status.GOOD, "ocsp", now, next_update)


def _verify_crl(der: bytes, issuer: x509.Certificate, now: datetime) -> _Crl:
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError:
        raise _BadAnswer("malformed CRL") from None
    if crl.issuer != issuer.subject or not crl.is_signature_valid(
            issuer.public_key()):  # type: ignore[arg-type]
        raise _BadAnswer("the CRL is not signed by the certificate's CA")
    next_update = crl.next_update_utc
    if next_update is None or next_update <= now:
        raise _BadAnswer("the CRL is past its nextUpdate")
    return _Crl(crl, now, next_update)
