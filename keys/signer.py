"""The signer seam (STYLE 4).

Everything the CA signs goes through a `Signer`: an object that implements cryptography's
private-key interface by forwarding `sign()` and `public_key()` somewhere else. cryptography's
certificate, CRL and OCSP builders call exactly those two methods, so a PKCS#11 HSM signer is a
new subclass here and `ca/` does not change. No code outside this package holds CA key bytes:
`private_bytes()` and `private_numbers()` refuse.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from keys.errors import KeyCustodyError


@runtime_checkable
class Signer(Protocol):
    """What the CA needs from a signing key: sign bytes, tell the public key."""

    def sign(self, data: bytes, signature_algorithm: Any) -> bytes:
        """Return a signature over `data`."""
        ...

    def public_key(self) -> Any:
        """Return the matching public key object."""
        ...


class ForwardingEcSigner(ec.EllipticCurvePrivateKey):
    """An EC private key whose operations are delegated; the key material never leaves.

    `backend` is anything with `sign(data, ec.ECDSA)` and `public_key()`: an in-memory key for
    the file signer, or a PKCS#11 session object for an HSM.
    """

    def __init__(self, backend: Any, label: str) -> None:
        self._backend = backend
        self.label = label

    def sign(  # type: ignore[override]
        self, data: bytes, signature_algorithm: ec.EllipticCurveSignatureAlgorithm
    ) -> bytes:
        """Sign with the delegated key."""
        return bytes(self._backend.sign(data, signature_algorithm))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The delegated key's public half."""
        key: ec.EllipticCurvePublicKey = self._backend.public_key()
        return key

    @property
    def signs_off_loop(self) -> bool:
        """Whether a signature may wait on a device (an HSM), so callers on an event loop
        should sign from a worker thread."""
        return bool(getattr(self._backend, "signs_off_loop", False))

    @property
    def curve(self) -> ec.EllipticCurve:
        """The curve of the delegated key."""
        return self.public_key().curve

    @property
    def key_size(self) -> int:
        """The key size in bits."""
        return self.public_key().key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        """Signing keys are never used for key agreement."""
        raise KeyCustodyError(f"{self.label} is a signing key; key agreement is refused")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        """Refused: CA key material never leaves custody."""
        raise KeyCustodyError(f"{self.label}: private key material never leaves key custody")

    def private_bytes(self, *args: Any, **kwargs: Any) -> bytes:
        """Refused: CA key material never leaves custody."""
        raise KeyCustodyError(f"{self.label}: private key material never leaves key custody")

    def __copy__(self) -> ForwardingEcSigner:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> ForwardingEcSigner:
        return self

    def __repr__(self) -> str:
        return f"<ForwardingEcSigner {self.label}>"


def signature_hash_for(key: ec.EllipticCurvePrivateKey | ec.EllipticCurvePublicKey,
                       ) -> hashes.SHA256 | hashes.SHA384:
    """The digest that matches the key's strength (RFC 5480 §4): SHA-384 for P-384."""
    return hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256()
