"""A self-contained throwaway PKI for the CRL and OCSP protocol tests.

root -> issuing CAs G1 and G2 (P-256) -> a delegated OCSP responder and clientAuth leaves
each, plus a foreign CA whose certificates we must not vouch for. Built directly with
cryptography so the protocol modules are tested apart from the store and key custody code.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.signer import ForwardingEcSigner

BASE_URL = "http://127.0.0.1:8700"


@dataclass
class Party:
    """A certificate with its private key."""

    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate

    @property
    def serial(self) -> int:
        """The certificate's serial number."""
        return self.cert.serial_number

    @property
    def pem(self) -> bytes:
        """The certificate in PEM."""
        return self.cert.public_bytes(Encoding.PEM)


@dataclass
class ProtocolPki:
    """The hierarchy under one root.

    `leaves` and `responder` are issued by `issuer` (generation G1); `leaf2` and `responder2`
    by `issuer2` (generation G2); `foreign_leaf` by `foreign_issuer`, under another root.
    """

    now: datetime
    root: Party
    issuer: Party
    responder: Party
    leaves: dict[str, Party]
    issuer2: Party
    responder2: Party
    leaf2: Party
    foreign_issuer: Party
    foreign_leaf: Party

    def write(self, directory: Path) -> dict[str, Path]:
        """Write every certificate as `<name>.pem` under `directory`; return the paths by name.

        `chain` is issuer + root, `chain2` issuer2 + root; `leaf_alice_key` is alice's key.
        """
        parts = {
            "root": self.root.pem, "issuer": self.issuer.pem, "responder": self.responder.pem,
            "chain": self.issuer.pem + self.root.pem,
            "issuer2": self.issuer2.pem, "responder2": self.responder2.pem,
            "leaf2": self.leaf2.pem, "chain2": self.issuer2.pem + self.root.pem,
            "foreign_issuer": self.foreign_issuer.pem, "foreign_leaf": self.foreign_leaf.pem,
            **{f"leaf_{name}": party.pem for name, party in self.leaves.items()},
            "leaf_alice_key": self.leaves["alice"].key.private_bytes(
                Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()),
        }
        paths = {}
        for name, pem in parts.items():
            path = directory / f"{name}.pem"
            path.write_bytes(pem)
            paths[name] = path
        return paths


def _name(common_name: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho Protocol Test"),
        x509.NameAttribute(NameOID.COMMON_NAME, common_name),
    ])


def _issue(
    subject: str, issuer: Party | None, now: datetime, *, ca: bool,
    usage: x509.ObjectIdentifier | None = None, days: int = 365, ocsp_no_check: bool = False,
) -> Party:
    key = ec.generate_private_key(ec.SECP256R1())
    signing_key = issuer.key if issuer else key
    issuer_name = issuer.cert.subject if issuer else _name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1))
        .not_valid_after(now + timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.KeyUsage(
            digital_signature=not ca, content_commitment=False, key_encipherment=False,
            data_encipherment=False, key_agreement=False, key_cert_sign=ca, crl_sign=ca,
            encipher_only=False, decipher_only=False,
        ), critical=True)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()),
            critical=False,
        )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if ocsp_no_check:
        builder = builder.add_extension(x509.OCSPNoCheck(), critical=False)
    if usage == ExtendedKeyUsageOID.CLIENT_AUTH:
        builder = builder.add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            full_name=[x509.UniformResourceIdentifier(f"{BASE_URL}/crl/g1.crl")],
            relative_name=None, reasons=None, crl_issuer=None,
        )]), critical=False).add_extension(x509.AuthorityInformationAccess([
            x509.AccessDescription(x509.oid.AuthorityInformationAccessOID.OCSP,
                                   x509.UniformResourceIdentifier(f"{BASE_URL}/ocsp")),
        ]), critical=False)
    return Party(key, builder.sign(signing_key, hashes.SHA256()))


@pytest.fixture(scope="session")
def protocol_pki() -> ProtocolPki:
    """A fresh root -> issuing CA -> responder/leaves hierarchy, valid around the wall clock.

    The openssl CLI checks validity against the real time, so this fixture uses it rather than
    the FakeClock the service tests use.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    root = _issue("Protocol Root", None, now, ca=True, days=3650)
    issuer = _issue("Protocol Issuing G1", root, now, ca=True, days=1825)
    responder = _issue("Protocol OCSP G1", issuer, now, ca=False, days=90,
                       usage=ExtendedKeyUsageOID.OCSP_SIGNING, ocsp_no_check=True)
    leaves = {
        name: _issue(name, issuer, now, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
        for name in ("alice", "bob", "carol")
    }
    issuer2 = _issue("Protocol Issuing G2", root, now, ca=True, days=1825)
    responder2 = _issue("Protocol OCSP G2", issuer2, now, ca=False, days=90,
                        usage=ExtendedKeyUsageOID.OCSP_SIGNING, ocsp_no_check=True)
    leaf2 = _issue("dave", issuer2, now, ca=False, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    foreign_root = _issue("Someone Else's CA", None, now, ca=True, days=3650)
    foreign_leaf = _issue("mallory", foreign_root, now, ca=False,
                          usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    return ProtocolPki(now, root, issuer, responder, leaves, issuer2, responder2, leaf2,
                       foreign_root, foreign_leaf)


@pytest.fixture
def pki_files(protocol_pki: ProtocolPki, tmp_path: Path) -> dict[str, Path]:
    """The hierarchy's certificates as PEM files in the test's temporary folder."""
    return protocol_pki.write(tmp_path)


@pytest.fixture
def issuer_signer(protocol_pki: ProtocolPki) -> ForwardingEcSigner:
    """The issuing CA's key behind the project's signer seam (sign and public_key only)."""
    return ForwardingEcSigner(protocol_pki.issuer.key, "protocol-issuer")


def _openssl(*args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", *map(str, args)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, check=check, timeout=30,
    )


@pytest.fixture(scope="session")
def openssl_cli() -> Callable[..., subprocess.CompletedProcess[str]]:
    """The real openssl CLI: `openssl_cli(*args, check=True)`; stdout holds stderr too."""
    return _openssl


class CountingSigner:
    """A signer with nothing but sign() and public_key(), as an HSM session would offer;
    counts signatures."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.signatures = 0

    def sign(self, data: bytes, algorithm: ec.ECDSA) -> bytes:
        """Sign and count."""
        self.signatures += 1
        return self._key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        return self._key.public_key()
