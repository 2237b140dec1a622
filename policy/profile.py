"""What a client certificate looks like (R-CERT-1, R-CERT-2); the CA turns it into X.509."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta

from policy.errors import InvalidUserId, UnsupportedKey

USER_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
SERVER_KEY_ALGORITHMS = ("p256", "rsa2048")
# RFC 5280 §4.1.2.5: notAfter is inclusive, so a 365-day certificate's notAfter is
# notBefore + 365 days and it is valid through that second.
ONE_YEAR = timedelta(days=365)


def validate_user_id(user_id: str) -> str:
    """Return the user ID if it is 1-64 letters, digits, '.', '_' or '-' (it becomes the CN)."""
    if not isinstance(user_id, str) or not USER_ID_PATTERN.fullmatch(user_id):
        raise InvalidUserId(
            "user ID must be 1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return user_id


@dataclass(frozen=True)
class CertificateProfile:
    """The client-certificate profile from config."""

    validity: timedelta
    server_key_algorithm: str
    crl_url_template: str  # "{generation}" is replaced by the issuing generation, e.g. g1
    ocsp_url: str
    renewal_window: timedelta

    def __post_init__(self) -> None:
        if self.server_key_algorithm not in SERVER_KEY_ALGORITHMS:
            raise ValueError(
                f"certificate.key_algorithm must be one of {SERVER_KEY_ALGORITHMS}, "
                f"not {self.server_key_algorithm!r}"
            )
        if "{generation}" not in self.crl_url_template:
            raise ValueError("the CRL URL template must contain {generation}")
        if not timedelta(0) < self.renewal_window < self.validity:
            raise ValueError("the renewal window must be shorter than the validity")

    def client_certificate(self, user_id: str, generation: str, now: datetime) -> ClientSpec:
        """The fields of a client certificate for `user_id` issued at `now` (R-CERT-1)."""
        not_before = now.replace(microsecond=0)
        return ClientSpec(
            common_name=validate_user_id(user_id),
            not_before=not_before,
            not_after=not_before + self.validity,
            crl_url=self.crl_url_template.format(generation=generation),
            ocsp_url=self.ocsp_url,
        )


@dataclass(frozen=True)
class ClientSpec:
    """Everything R-CERT-1 fixes about one client certificate."""

    common_name: str
    not_before: datetime
    not_after: datetime
    crl_url: str
    ocsp_url: str


# R-CERT-8's curves by their OIDs (RFC 5480 §2.1.1.1), with their sizes. A size alone would
# also let in secp256k1 and the brainpool curves, which no client of ours needs.
ALLOWED_EC_CURVES = {
    "1.2.840.10045.3.1.7": 256,  # secp256r1 (P-256)
    "1.3.132.0.34": 384,  # secp384r1 (P-384)
}


def check_csr_key(key_type: str, key_size: int, curve_oid: str | None = None) -> None:
    """R-CERT-8: accept EC keys on P-256/P-384 (named by OID) and RSA 2048-8192 for CSR
    issuance."""
    if key_type == "ec":
        if curve_oid is not None and ALLOWED_EC_CURVES.get(curve_oid) == key_size:
            return
        raise UnsupportedKey(
            f"EC keys on curve {curve_oid or 'with explicit parameters'} are not accepted;"
            " use EC P-256/P-384 or RSA >= 2048"
        )
    if key_type == "rsa" and 2048 <= key_size <= 8192:
        return
    raise UnsupportedKey(
        f"{key_type.upper()} {key_size}-bit keys are not accepted;"
        " use EC P-256/P-384 or RSA >= 2048"
    )
