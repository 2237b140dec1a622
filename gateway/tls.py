"""The gateway's TLS: server context, trust bundle, demo server certificate (R-GW-1, R-GW-3).

* TLS 1.2 minimum (the manual's SSL3/TLS1.0 settings are obsolete), no renegotiation.
* The client certificate is optional at the TLS layer (`CERT_OPTIONAL`) so the login page and
  certificate acquisition work without one; routes that need one refuse without it.
* When a client does present a certificate, OpenSSL verifies it at the handshake: chain to one
  of the CA's issuing generations (the trust bundle fetched from the CA's public
  `/certs/bundle.pem`) and the `sslclient` purpose (a certificate whose EKU lacks clientAuth
  fails). A failing certificate ends the handshake. Dates are NOT checked at the handshake
  (`X509_V_FLAG_NO_CHECK_TIME`): an expired certificate of ours must reach the page that tells
  its owner to get a new one, instead of a browser's TLS error. The application checks the
  leaf's and the chain's validity against the injected clock on every request that needs a
  certificate, with EKU and revocation (`gateway.verify`).
* The demo server certificate is a self-signed P-256 certificate made on first run (key 0600).
  Production uses a real server certificate from the bank's public CA: point `tls_cert` and
  `tls_key` at it.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from policy.clock import Clock

# Forward-secret AEAD suites only for TLS 1.2 (TLS 1.3 suites are fixed by OpenSSL).
TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"
# OpenSSL's X509_V_FLAG_NO_CHECK_TIME (1.1.0+), which Python's ssl does not name.
X509_V_FLAG_NO_CHECK_TIME = 0x200000


@dataclass(frozen=True)
class TrustBundle:
    """The CA's issuing generations and root, as fetched from `/certs/bundle.pem`."""

    pem: bytes
    certificates: tuple[x509.Certificate, ...] = field(repr=False)

    @classmethod
    def from_pem(cls, pem: bytes) -> TrustBundle:
        """Parse a PEM bundle; an empty or malformed one is a ValueError."""
        certificates = tuple(x509.load_pem_x509_certificates(pem))
        if not certificates:
            raise ValueError("the trust bundle holds no certificate")
        return cls(pem=pem, certificates=certificates)

    def chain_validity(self, issuer: x509.Certificate) -> tuple[datetime, datetime]:
        """When `issuer` and every bundle certificate above it are all valid: (from, until)."""
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
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    # No renegotiation (and no TLS 1.3 post-handshake authentication is ever requested): the
    # peer certificate of a connection cannot change, which `gateway.verify` relies on when it
    # remembers the parsed certificate per connection.
    context.options |= ssl.OP_NO_RENEGOTIATION | ssl.OP_CIPHER_SERVER_PREFERENCE
    context.load_cert_chain(cert_file, key_file)
    context.verify_mode = ssl.CERT_OPTIONAL
    context.verify_flags |= X509_V_FLAG_NO_CHECK_TIME  # dates: gateway.verify, every request
    context.load_verify_locations(cadata=bundle.pem.decode("ascii"))
    # Python's ssl cannot set the CertificateRequest's CA list (SSL_CTX_set_client_CA_list):
    # browsers offer every client certificate they hold; the user picks CN = user ID (§2.2(2)).
    return context


def ensure_server_certificate(cert_file: Path, key_file: Path, public_url: str,
                              clock: Clock) -> bool:
    """Create a self-signed demo server certificate when none exists; True when created.

    The subject alternative names cover the host of `public_url`, localhost and 127.0.0.1.
    """
    if cert_file.exists() and key_file.exists():
        return False
    host = public_url.split("://", 1)[1].split("/", 1)[0].rsplit(":", 1)[0].strip("[]")
    names: list[x509.GeneralName] = [x509.DNSName("localhost"),
                                     x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    try:
        address = ipaddress.ip_address(host)
        if str(address) != "127.0.0.1":
            names.append(x509.IPAddress(address))
    except ValueError:
        if host != "localhost":
            names.append(x509.DNSName(host))
    key = ec.generate_private_key(ec.SECP256R1())
    now = clock.now().replace(microsecond=0)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host or "localhost"),
                         x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho demo gateway")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject).issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=397))
        .add_extension(x509.SubjectAlternativeName(names), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    cert_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    descriptor = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "wb") as handle:
        handle.write(key_pem)
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return True
