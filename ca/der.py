"""The few DER framing primitives (X.690) that the CRL and OCSP encoders share.

Both encode their fixed structures by hand because building them through cryptography's or
asn1crypto's object layers costs many times the signature (see ca/crl.py and ca/ocsp.py);
their tests compare the bytes with those libraries' own encodings.
"""

from __future__ import annotations


def der_length(length: int) -> bytes:
    """A definite-form length: short form below 128, long form above."""
    if length < 0x80:
        return bytes((length,))
    octets = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(octets),)) + octets


def der(tag: int, contents: bytes) -> bytes:
    """A tag-length-value with a one-octet tag."""
    return bytes((tag,)) + der_length(len(contents)) + contents
