"""The gateway's TLS: server context, trust bundle, demo server certificate (R-GW-1, R-GW-3).

* TLS 1.2 minimum (the manual's SSL3/TLS1.0 settings are obsolete), no renegotiation.
* The client certificate is optional at the TLS layer (`CERT_OPTIONAL`) so the login page and
  certificate acquisition work without one; routes that need one refuse without it.
* When a client does present a certificate, OpenSSL verifies it at the handshake: chain to one
  of the CA's issuing generations (fetched from the CA's public `/certs/bundle.pem` and kept
  only when they chain to the operator's root: gateway.trust) and the `sslclient` purpose
  (a certificate whose EKU lacks clientAuth fails). A failing certificate ends the
  handshake. Dates are NOT checked at the handshake (`X509_V_FLAG_NO_CHECK_TIME`): an
  expired certificate of ours must reach the page that tells its owner to get a new one,
  instead of a browser's TLS error. The application checks the leaf's and the chain's
  validity against the injected clock on every request that needs a certificate, with EKU
  and revocation (`gateway.verify`).
* The demo server certificate is a self-signed P-256 certificate made on first run (key 0600).
  Production uses a real server certificate from the bank's public CA: point `tls_cert` and
  `tls_key` at it.
"""

from __future__ import annotations

import re
import ssl
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from common.tlsfiles import tls_server_context

# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0+), which Python's ssl does not name.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


@dataclass(frozen=True)
class TrustBundle:
    """The CA's issuing generations and root, as fetched from `/certs/bundle.pem`."""

    pem: bytes
    certificates: tuple[x509.Certificate, ...] = field(repr=False)
    # issuer -> its chain's validity window: fixed for a bundle, so walked (with its signature
    # checks) once per issuer, not once per client certificate.
    _windows: dict[x509.Certificate, tuple[datetime, datetime]] = field(
        default_factory=dict, repr=False, compare=False)

    @classmethod
    def from_pem(cls, pem: bytes) -> TrustBundle:
        """Parse a PEM bundle; an empty or malformed one is a ValueError."""
        certificates = tuple(x509.load_pem_x509_certificates(pem))
        if not certificates:
            raise ValueError("the trust bundle holds no certificate")
        return cls(pem=pem, certificates=certificates)

    def chain_validity(self, issuer: x509.Certificate) -> tuple[datetime, datetime]:
        """When `issuer` and every bundle certificate above it are all valid: (from, until)."""
        window = self._windows.get(issuer)
        if window is None:
            window = self._windows[issuer] = self._walk_validity(issuer)
        return window

    def _walk_validity(self, issuer: x509.Certificate) -> tuple[datetime, datetime]:
        not_before, not_after = issuer.not_valid_before_utc, issuer.not_valid_after_utc
        current = issuer
        for _ in range(len(self.certificates)):
            if current.issuer == current.subject:
                break
            parent = self.issuer_of(current)
            if parent is None:
                break
            not_before = max(not_before, parent.not_valid_before_utc)
            not_after = min(not_after, parent.not_valid_after_utc)
            current = parent
        return not_before, not_after

    def issuer_of(self, certificate: x509.Certificate) -> x509.Certificate | None:
        """The bundle's certificate that signed `certificate`, or None."""
        for candidate in self.certificates:
            if candidate.subject != certificate.issuer:
                continue
            try:
                certificate.verify_directly_issued_by(candidate)
            except (ValueError, TypeError, InvalidSignature):
                continue
            return candidate
        return None


def server_context(cert_file: Path, key_file: Path, bundle: TrustBundle) -> ssl.SSLContext:
    """The listening context: TLS 1.2+, client certificate optional, trust = the CA bundle."""
    # No renegotiation (and no TLS 1.3 post-handshake authentication is ever requested): the
    # peer certificate of a connection cannot change, which `gateway.verify` relies on when it
    # remembers the parsed certificate per connection.
    context = tls_server_context(cert_file, key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME  # dates: gateway.verify, every request
    context.load_verify_locations(cadata=bundle.pem.decode("ascii"))
    # Python's ssl cannot set the CertificateRequest's CA list (SSL_CTX_set_client_CA_list):
    # browsers offer every client certificate they hold; the user picks CN = user ID (§2.2(2)).
    return context


_GENERATION_IN_NAME = re.compile(r"\bIssuing CA (g\d+)$")


def generation_of(issuer: x509.Certificate) -> str:
    """The generation an issuing CA certificate belongs to.

    The CA names every issuing generation "<organization> Issuing CA <gN>" (keys.hierarchy),
    so the name is the contract; no lookup at the CA is needed per request.
    """
    names = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    match = _GENERATION_IN_NAME.search(str(names[0].value)) if names else None
    return match.group(1) if match else ""
