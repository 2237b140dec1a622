"""Which CAs may issue login certificates: decided by the operator, not by the network.

The gateway fetches the CA's issuer bundle (`/certs/bundle.pem`) from `ca_public_url` at
start-up, over plain HTTP: whoever answers on that address (a network position, or a local
process bound to the port while the CA is down) controls what arrives. So the fetched bytes
are only a *candidate* list. The trust anchor comes from the operator's configuration:

* `gateway.ca_root`: the CA's root certificate file (the demo points at the one `sekisho-ca
  init` writes under var/keys/), and/or
* `gateway.ca_root_sha256`: the SHA-256 fingerprint of that root's DER (a pin an operator can
  read off `openssl x509 -fingerprint -sha256` and put in the configuration management).

From the candidates, only certificates that chain to that root are kept: each is signed by
the root or by an already kept CA, names it as issuer, is a CA (basicConstraints cA=TRUE,
keyUsage keyCertSign) and fits the issuer's pathLenConstraint (RFC 5280 §6.1). Every other
certificate (a second root, an attacker's CA, a leaf, an unparsable block) is dropped and
logged as an error. The cache file is written only with the kept certificates (re-encoded,
never the fetched bytes), atomically and 0600; when it is read back (CA down at start) it is
filtered again with the same rule, so a cache edited on disk cannot widen trust either.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass
from pathlib import Path

import structlog
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from gateway.tls import TrustBundle

_log = structlog.get_logger("gateway.trust")
_PEM_BEGIN = b"-----BEGIN CERTIFICATE-----"


class TrustAnchorError(Exception):
    """The configured anchor is missing or unreadable, or no candidate chains to it."""


@dataclass(frozen=True)
class TrustAnchor:
    """The operator's root: a certificate, a SHA-256 pin of its DER, or both (then both must
    agree)."""

    root: x509.Certificate | None = None
    sha256: bytes | None = None

    @classmethod
    def from_config(cls, root_file: Path | None, sha256_hex: str | None) -> TrustAnchor:
        """Read `gateway.ca_root` / `gateway.ca_root_sha256`; TrustAnchorError names the key."""
        if root_file is None and not sha256_hex:
            raise TrustAnchorError("set gateway.ca_root (the CA's root certificate file) or "
                                   "gateway.ca_root_sha256 (its SHA-256 fingerprint)")
        pin = None
        if sha256_hex:
            cleaned = sha256_hex.replace(":", "").strip().lower()
            try:
                pin = bytes.fromhex(cleaned)
            except ValueError:
                pin = b""
            if len(pin) != 32:
                raise TrustAnchorError("gateway.ca_root_sha256 must be 64 hex digits "
                                       "(colons allowed)")
        root = None
        if root_file is not None:
            try:
                root = x509.load_pem_x509_certificate(root_file.read_bytes())
            except FileNotFoundError:
                raise TrustAnchorError(f"gateway.ca_root: {root_file} does not exist (run "
                                       "`sekisho-ca init`, or copy the CA's root there)"
                                       ) from None
            except ValueError:
                raise TrustAnchorError(f"gateway.ca_root: {root_file} is not a PEM "
                                       "certificate") from None
            if not _is_self_signed_ca(root):
                raise TrustAnchorError(f"gateway.ca_root: {root_file} is not a self-signed "
                                       "CA certificate")
            if pin is not None and not hmac.compare_digest(_sha256(root), pin):
                raise TrustAnchorError("gateway.ca_root and gateway.ca_root_sha256 disagree")
        return cls(root=root, sha256=pin)

    def find_root(self, candidates: list[x509.Certificate]) -> x509.Certificate | None:
        """The anchor itself: the configured certificate, or the self-signed candidate whose
        SHA-256 is the pin."""
        if self.root is not None:
            return self.root
        for candidate in candidates:
            if self.sha256 is not None and hmac.compare_digest(_sha256(candidate), self.sha256) \
                    and _is_self_signed_ca(candidate):
                return candidate
        return None

    def filter(self, pem: bytes, *, source: str) -> TrustBundle:
        """The candidates that chain to the anchor, as a bundle (root last); TrustAnchorError
        when none but the root is left. Dropped candidates are logged (an attack or a
        misconfiguration: either way someone must look)."""
        candidates = _parse_each(pem, source)
        root = self.find_root(candidates)
        if root is None:
            raise TrustAnchorError(f"{source}: no certificate matches gateway.ca_root_sha256")
        root_der = root.public_bytes(serialization.Encoding.DER)
        kept: list[x509.Certificate] = []
        # (certificate, how many more CAs may follow it below: pathLenConstraint)
        authorities: list[tuple[x509.Certificate, int | None]] = [(root, _path_length(root))]
        pending = [c for c in candidates
                   if c.public_bytes(serialization.Encoding.DER) != root_der]
        progress = True
        while pending and progress:
            progress = False
            for candidate in list(pending):
                depth = _issued_by_any(candidate, authorities)
                if depth is _NOT_ISSUED:
                    continue
                pending.remove(candidate)
                progress = True
                if not _is_ca(candidate):
                    _log.error("trust_bundle_certificate_rejected", source=source,
                               subject=candidate.subject.rfc4514_string(),
                               reason="not a CA certificate")
                    continue
                own = _path_length(candidate)
                remaining = depth - 1 if isinstance(depth, int) else None
                limit = own if remaining is None else (
                    remaining if own is None else min(own, remaining))
                kept.append(candidate)
                authorities.append((candidate, limit))
        for candidate in pending:
            _log.error("trust_bundle_certificate_rejected", source=source,
                       subject=candidate.subject.rfc4514_string(),
                       sha256=_sha256(candidate).hex(),
                       reason="does not chain to the configured root")
        if not kept:
            raise TrustAnchorError(f"{source}: no issuing CA chains to the configured root")
        pem_out = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (*kept, root))
        return TrustBundle.from_pem(pem_out)


_NOT_ISSUED = object()


def _issued_by_any(candidate: x509.Certificate,
                   authorities: list[tuple[x509.Certificate, int | None]]) -> object:
    """The pathLen budget of the kept CA that signed `candidate`, or _NOT_ISSUED."""
    for authority, budget in authorities:
        if candidate.issuer != authority.subject:
            continue
        if isinstance(budget, int) and budget < 1 and _is_ca(candidate):
            continue  # a CA below an issuer whose pathLenConstraint is used up
        try:
            candidate.verify_directly_issued_by(authority)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return budget
    return _NOT_ISSUED


def _parse_each(pem: bytes, source: str) -> list[x509.Certificate]:
    """Each PEM block parsed on its own: one bad block is dropped, not the whole file."""
    out = []
    for index, block in enumerate(pem.split(_PEM_BEGIN)[1:]):
        try:
            out.append(x509.load_pem_x509_certificate(_PEM_BEGIN + block))
        except ValueError:
            _log.error("trust_bundle_certificate_rejected", source=source, index=index,
                       reason="unreadable PEM block")
    return out


def _sha256(certificate: x509.Certificate) -> bytes:
    return hashlib.sha256(certificate.public_bytes(serialization.Encoding.DER)).digest()


def _is_ca(certificate: x509.Certificate) -> bool:
    """basicConstraints cA=TRUE and, when keyUsage is present, keyCertSign (RFC 5280 §4.2.1.9,
    §4.2.1.3)."""
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints).value
    except (x509.ExtensionNotFound, ValueError):
        return False
    if not constraints.ca:
        return False
    try:
        usage = certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    except x509.ExtensionNotFound:
        return True
    except ValueError:
        return False
    return bool(usage.key_cert_sign)


def _path_length(certificate: x509.Certificate) -> int | None:
    try:
        return certificate.extensions.get_extension_for_class(
            x509.BasicConstraints).value.path_length
    except (x509.ExtensionNotFound, ValueError):
        return None


def _is_self_signed_ca(certificate: x509.Certificate) -> bool:
    if certificate.issuer != certificate.subject or not _is_ca(certificate):
        return False
    try:
        certificate.verify_directly_issued_by(certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def write_cache(path: Path, bundle: TrustBundle) -> None:
    """Write the verified bundle atomically, 0600 in a 0700 folder (never a partial file)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(bundle.pem)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
