"""Client certificate checks in the application layer (R-GW-1, R-GW-2, R-GW-4).

OpenSSL has already verified the chain, the validity against the real time and the
`sslclient` purpose during the handshake (`gateway.tls`). Here, on every request:

* the DER certificate of *this* connection is read again (`getpeercert(binary_form=True)`),
  so TLS session resumption cannot carry an old decision: the fingerprint is recomputed and
  compared with the session's (R-GW-4);
* issuer in the trust bundle, EKU clientAuth, validity against the injected clock;
* revocation through `RevocationChecker` (cache, OCSP, CRL, the CA's feed).

Parsing is cached by DER bytes, and the parsed certificate is remembered per TLS connection
(keyed by the connection's `SSLObject`, gone with it): renegotiation is disabled
(`OP_NO_RENEGOTIATION`) and the server never asks for TLS 1.3 post-handshake
authentication, so the peer certificate of a connection cannot change. A keep-alive request
then costs a dictionary lookup and the checks above (validity, cutovers and revocation status
against the clock of that request); its fingerprint is still compared with the session's.
"""

from __future__ import annotations

import hashlib
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import web
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from gateway.errors import CertificateRefused, CertificateRequired
from gateway.revocation_client import RevocationChecker
from gateway.tls import TrustBundle, generation_of
from policy.certificates import CertFacts
from policy.clock import Clock
from policy.cutover import Cutover, cutover_for

_MAX_PARSED = 10_000


@dataclass(frozen=True)
class ClientCertificate:
    """The facts of a presented client certificate the gateway needs."""

    fingerprint: str  # SHA-256 of the DER, lowercase hex (as the CA records it)
    generation: str  # the issuing generation (g1, g2, ...), from the issuer's name
    serial: str  # lowercase hex, as the CA writes it
    user_id: str  # the subject CN (R-CERT-1)
    not_before: datetime
    not_after: datetime
    certificate: x509.Certificate = field(repr=False)
    issuer: x509.Certificate | None = field(repr=False)
    client_auth: bool
    # When the issuing CA and the certificates above it are all valid (None without issuer).
    chain_validity: tuple[datetime, datetime] | None = None


def parse_client_certificate(der: bytes, bundle: TrustBundle) -> ClientCertificate:
    """Parse a DER certificate into ClientCertificate (no policy decisions yet)."""
    try:
        certificate = x509.load_der_x509_certificate(der)
        names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        user_id = str(names[0].value) if names else ""
    except ValueError:
        raise CertificateRefused("the certificate cannot be read", code="cert_malformed") from None
    try:
        eku = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in eku
    except (x509.ExtensionNotFound, ValueError):
        client_auth = False
    issuer = bundle.issuer_of(certificate)
    return ClientCertificate(
        fingerprint=hashlib.sha256(der).hexdigest(),
        generation=generation_of(issuer) if issuer is not None else "",
        serial=format(certificate.serial_number, "x"), user_id=user_id,
        not_before=certificate.not_valid_before_utc, not_after=certificate.not_valid_after_utc,
        certificate=certificate, issuer=issuer, client_auth=client_auth,
        chain_validity=bundle.chain_validity(issuer) if issuer is not None else None,
    )


class CertificateVerifier:
    """Turns the presented certificate into a verified ClientCertificate, or refuses."""

    def __init__(self, bundle: TrustBundle, revocation: RevocationChecker, clock: Clock,
                 cutovers: Sequence[Cutover] = ()) -> None:
        self._bundle = bundle
        self._revocation = revocation
        self._clock = clock
        self._cutovers = tuple(cutovers)
        self._parsed: dict[bytes, ClientCertificate] = {}
        # The parsed peer certificate of each live TLS connection (None: it presented none).
        self._by_connection: weakref.WeakKeyDictionary[object, ClientCertificate | None] = (
            weakref.WeakKeyDictionary())

    def _parse(self, der: bytes) -> ClientCertificate:
        parsed = self._parsed.get(der)
        if parsed is None:
            parsed = parse_client_certificate(der, self._bundle)
            if len(self._parsed) >= _MAX_PARSED:
                self._parsed.clear()
            self._parsed[der] = parsed
        return parsed

    def presented(self, request: web.Request) -> ClientCertificate | None:
        """The (parsed, not yet verified) certificate of this request's TLS connection."""
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is None:
            return None
        try:
            return self._by_connection[ssl_object]
        except KeyError:
            pass
        der = ssl_object.getpeercert(binary_form=True)
        cert = self._parse(der) if der else None
        self._by_connection[ssl_object] = cert
        return cert

    def presented_fingerprint(self, request: web.Request) -> str:
        """The SHA-256 of this connection's certificate ("" without a readable one), to
        compare with the certificate a session or a renewal pickup is bound to."""
        try:
            cert = self.presented(request)
        except CertificateRefused:
            return ""
        return cert.fingerprint if cert is not None else ""

    async def verify(self, cert: ClientCertificate) -> ClientCertificate:
        """R-GW-1 on a parsed certificate: issuer, clientAuth, validity at the injected
        clock, cutovers, revocation (from the cache while it is fresh)."""
        if cert.issuer is None:
            raise CertificateRefused("the certificate is not from this service's CA",
                                     code="cert_untrusted")
        if not cert.client_auth:
            raise CertificateRefused("the certificate is not for client authentication",
                                     code="cert_wrong_usage")
        now = self._clock.now()
        if now < cert.not_before:
            raise CertificateRefused("the certificate is not valid yet", code="cert_not_yet_valid")
        if now > cert.not_after:
            raise CertificateRefused("the certificate has expired", code="cert_expired")
        if cert.chain_validity is not None and not (
                cert.chain_validity[0] <= now <= cert.chain_validity[1]):
            raise CertificateRefused("the issuing CA's certificate is not valid now",
                                     code="cert_issuer_invalid")
        if not cert.user_id:
            raise CertificateRefused("the certificate names no user", code="cert_malformed")
        if self._cutovers:
            facts = CertFacts(cert.serial, cert.generation, cert.not_before, cert.not_after)
            cutover = cutover_for(self._cutovers, facts, now)
            if cutover is not None:
                # R-CUT-1: refused from the cutover day; the page explains the migration.
                raise CertificateRefused(
                    "the certificate was retired by the certificate authority's migration",
                    code="cert_cut_over", since=cutover.effective_at,
                    cutover=cutover.name,
                )
        if not self._revocation.cached_good(cert.fingerprint, now):
            await self._revocation.check(cert.fingerprint, cert.certificate, cert.issuer)
        return cert

    async def optional(self, request: web.Request) -> ClientCertificate | None:
        """The verified certificate of this connection, None when none was presented."""
        cert = self.presented(request)
        return None if cert is None else await self.verify(cert)

    async def required(self, request: web.Request) -> ClientCertificate:
        """The verified certificate of this connection; CertificateRequired when absent."""
        cert = self.presented(request)
        if cert is None:
            raise CertificateRequired("this page needs your electronic certificate")
        return await self.verify(cert)
