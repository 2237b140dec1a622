"""The few DER framing primitives (X.690) that the CRL and OCSP encoders share.

Both encode their fixed structures by hand because building them through cryptography's or
asn1crypto's object layers costs many times the signature (see ca/crl.py and ca/ocsp.py);
their tests compare the bytes with those libraries' own encodings.
"""

from __future__ import annotations

from datetime import UTC, datetime

# AlgorithmIdentifier of ecdsa-with-SHA256 / -SHA384 (RFC 5758 §3.2: parameters absent), by
# the name of the hash `keys.signer.signature_hash_for` picks.
ECDSA_SIGNATURE_ALGORITHMS = {
    "sha256": b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x02",
    "sha384": b"\x30\x0a\x06\x08\x2a\x86\x48\xce\x3d\x04\x03\x03",
}


def der_length(length: int) -> bytes:
    """A definite-form length: short form below 128, long form above."""
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def der(tag: int, contents: bytes) -> bytes:
    """A tag-length-value with a one-octet tag."""
    return bytes((tag,)) + der_length(len(contents)) + contents


def require_aware_utc(name: str, when: datetime) -> datetime:
    """`when` in UTC; ValueError for a naive datetime, whose zone an encoder cannot know."""
    if when.utcoffset() is None:
        raise ValueError(f"{name} must be timezone-aware (UTC)")
    return when.astimezone(UTC)
