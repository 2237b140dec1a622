"""The two-tier hierarchy: a root CA, issuing CA generations under it, and per generation a
delegated OCSP responder (RFC 5280 profiles, RFC 6960 §4.2.2.2).

Files in the key folder: `<label>.crt.pem` for `root`, each generation (`g1`, `g2`, ...) and
its responder (`g1-ocsp`, ...); the keys of the same labels live in the key store
(keys/custody.py): `<label>.key.pem` files (encrypted, 0600) or objects in a PKCS#11 token.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from keys.errors import KeyCustodyError, KeyExists, KeyNotFound
from keys.signer import ForwardingEcSigner, signature_hash_for

if TYPE_CHECKING:
    from keys.custody import KeyStore

ROOT_LABEL = "root"
ROOT_VALIDITY = timedelta(days=20 * 365 + 5)
GENERATION_VALIDITY = timedelta(days=10 * 365 + 2)
_GENERATION_RE = re.compile(r"g(\d+)")


def generation_names(directory: Path) -> list[str]:
    """The issuing generations whose certificates are in `directory`, oldest first (g1, g2,
    ...); reading them needs no passphrase."""
    names = []
    for path in directory.glob("g*.crt.pem"):
        label = path.name.removesuffix(".crt.pem")
        if _GENERATION_RE.fullmatch(label):
            names.append(label)
    return sorted(names, key=lambda n: int(n[1:]))


@dataclass(frozen=True)
class IssuerGeneration:
    """One issuing CA generation with its delegated OCSP responder."""

    name: str
    certificate: x509.Certificate
    signer: ForwardingEcSigner
    ocsp_certificate: x509.Certificate
    ocsp_signer: ForwardingEcSigner


def _name(organization: str, common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def _ca_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=False, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
        encipher_only=False, decipher_only=False,
    )


def _signing_key_usage() -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False,
        data_encipherment=False, key_agreement=False, key_cert_sign=False, crl_sign=False,
        encipher_only=False, decipher_only=False,
    )


def _whole_seconds(when: datetime) -> datetime:
    return when.replace(microsecond=0)


class Hierarchy:
    """Creates and opens the root, the issuing generations and their OCSP responders."""

    def __init__(self, keystore: KeyStore, directory: Path, organization: str) -> None:
        self._keystore = keystore
        self._directory = directory
        self._organization = organization

    @property
    def keystore(self) -> KeyStore:
        """Where the keys live (file or token), for `keys list`, `keys check`, `keys import`."""
        return self._keystore

    # -- reading -------------------------------------------------------------------------

    def cert_path(self, label: str) -> Path:
        """Where the certificate called `label` is stored."""
        return self._directory / f"{label}.crt.pem"

    def is_initialised(self) -> bool:
        """Whether `init` has run (a root certificate exists)."""
        return self.cert_path(ROOT_LABEL).exists()

    def load_certificate(self, label: str) -> x509.Certificate:
        """Read a stored certificate."""
        path = self.cert_path(label)
        if not path.exists():
            raise KeyNotFound(f"certificate {label!r} not found at {path}; run `sekisho-ca init`")
        return x509.load_pem_x509_certificate(path.read_bytes())

    def root_certificate(self) -> x509.Certificate:
        """The self-signed root."""
        return self.load_certificate(ROOT_LABEL)

    def generation_names(self) -> list[str]:
        """All issuing generations, oldest first (g1, g2, ...)."""
        return generation_names(self._directory)

    def load_generation(self, name: str) -> IssuerGeneration:
        """Open a generation's certificates and signers (checks key file modes)."""
        return IssuerGeneration(
            name=name,
            certificate=self.load_certificate(name),
            signer=self._keystore.load(name),
            ocsp_certificate=self.load_certificate(f"{name}-ocsp"),
            ocsp_signer=self._keystore.load(f"{name}-ocsp"),
        )

    # -- creating ------------------------------------------------------------------------

    def init(
        self, now: datetime, *, root_algorithm: str, generation_algorithm: str,
        ocsp_validity: timedelta,
    ) -> IssuerGeneration:
        """Create the root and generation g1 with its responder; refuses to overwrite."""
        if self.is_initialised():
            raise KeyExists(f"a CA already exists in {self._directory}; refusing to overwrite it")
        if self._keystore.exists(ROOT_LABEL):
            # No root certificate but a root key: an interrupted init, or another CA using the
            # same token labels. Deleting a key is the key officer's decision, never ours.
            raise KeyExists("a root key already exists in the key store but no root "
                            f"certificate in {self._directory}; refusing to overwrite it")
        now = _whole_seconds(now)
        root_signer = self._keystore.create(ROOT_LABEL, root_algorithm)
        subject = _name(self._organization, f"{self._organization} Root CA")
        public_key = root_signer.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(now + ROOT_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=1), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .sign(root_signer, signature_hash_for(root_signer))
        )
        self._write_certificate(ROOT_LABEL, certificate)
        return self.new_generation(
            now, algorithm=generation_algorithm, ocsp_validity=ocsp_validity
        )

    def new_generation(
        self, now: datetime, *, algorithm: str, ocsp_validity: timedelta
    ) -> IssuerGeneration:
        """Create the next issuing generation (g1, g2, ...) signed by the root."""
        now = _whole_seconds(now)
        existing = self.generation_names()
        name = f"g{int(existing[-1][1:]) + 1}" if existing else "g1"
        root_cert = self.root_certificate()
        root_signer = self._keystore.load(ROOT_LABEL)
        signer = self._keystore.create(name, algorithm)
        public_key = signer.public_key()
        not_after = min(now + GENERATION_VALIDITY, root_cert.not_valid_after_utc)
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(self._organization, f"{self._organization} Issuing CA {name}"))
            .issuer_name(root_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_ca_key_usage(), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki_of(root_cert), critical=False)
            .sign(root_signer, signature_hash_for(root_signer))
        )
        self._write_certificate(name, certificate)
        self.issue_ocsp_responder(name, now, ocsp_validity)
        return self.load_generation(name)

    def issue_ocsp_responder(
        self, name: str, now: datetime, validity: timedelta
    ) -> IssuerGeneration:
        """(Re)issue the delegated OCSP responder of generation `name` with a fresh key.

        The certificate carries id-pkix-ocsp-nocheck, so it cannot itself be revoked: it is kept
        short-lived instead, and the daemon renews it well before it expires.
        """
        now = _whole_seconds(now)
        issuer_cert = self.load_certificate(name)
        issuer_signer = self._keystore.load(name)
        label = f"{name}-ocsp"
        responder = self._keystore.replace(label, "p256")
        public_key = responder.public_key()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(_name(self._organization, f"{self._organization} OCSP Responder {name}"))
            .issuer_name(issuer_cert.subject)
            .public_key(public_key)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now)
            .not_valid_after(min(now + validity, issuer_cert.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_signing_key_usage(), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.OCSP_SIGNING]), critical=False
            )
            .add_extension(x509.OCSPNoCheck(), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
            .add_extension(_aki_of(issuer_cert), critical=False)
            .sign(issuer_signer, signature_hash_for(issuer_signer))
        )
        self._write_certificate(label, certificate, overwrite=True)
        return self.load_generation(name)

    def responder_key_file(self, name: str) -> bytes | None:
        """The encrypted key file of generation `name`'s OCSP responder, or None when the
        key is in a token (issue 13: what a cluster's leader publishes with a renewal)."""
        return self._keystore.key_file(f"{name}-ocsp")

    def install_ocsp_responder(
        self, name: str, certificate_der: bytes, key_pem: bytes | None
    ) -> IssuerGeneration:
        """Install the OCSP responder another node issued for generation `name` (issue 13):
        its certificate and, for file keys, its encrypted key file (the same passphrase on
        every node); a token key is found in the shared token. Refuses a certificate our
        issuer did not sign or without the OCSP signing usage, or a key that is not the
        certificate's."""
        label = f"{name}-ocsp"
        certificate = x509.load_der_x509_certificate(certificate_der)
        issuer = self.load_certificate(name)
        try:
            certificate.verify_directly_issued_by(issuer)
        except (ValueError, TypeError, InvalidSignature):
            raise KeyCustodyError(f"the published responder of {name} is not signed by "
                                  f"{name}'s certificate") from None
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage)
        except x509.ExtensionNotFound:
            usages = None
        if usages is None or ExtendedKeyUsageOID.OCSP_SIGNING not in usages.value:
            raise KeyCustodyError(f"the published responder of {name} is not an OCSP "
                                  "signing certificate")
        if key_pem is not None:
            self._keystore.install_key_file(label, key_pem)
        else:
            token = getattr(self._keystore, "keys_changed_elsewhere", None)
            if token is not None:
                token()
        signer = self._keystore.load(label)
        if signer.public_key() != certificate.public_key():
            raise KeyCustodyError(f"the responder key {label!r} is not the published "
                                  "certificate's key")
        current = self.cert_path(label)
        if not current.exists() or current.read_bytes() != certificate.public_bytes(
                serialization.Encoding.PEM):
            self._write_certificate(label, certificate, overwrite=True)
        return self.load_generation(name)

    def _write_certificate(
        self, label: str, certificate: x509.Certificate, *, overwrite: bool = False
    ) -> None:
        path = self.cert_path(label)
        if path.exists() and not overwrite:
            raise KeyExists(f"{path} already exists; refusing to overwrite it")
        self._directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        tmp.replace(path)


def _aki_of(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public_key = issuer.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise KeyCustodyError("issuer key must be EC") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public_key)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
