"""Typed rule violations (STYLE 7). Each process maps them to its own protocol errors."""

from __future__ import annotations

from datetime import datetime


class PolicyViolation(Exception):
    """A rule refused the request; `code` is stable for machines, the message for people."""

    code = "policy_violation"


class InvalidUserId(PolicyViolation):
    """The user ID is not of the allowed shape."""

    code = "invalid_user_id"


class UsableCertificateExists(PolicyViolation):
    """R-CERT-5: acquisition is refused while the user holds a usable certificate."""

    code = "usable_certificate_exists"

    def __init__(self, serial: str, not_after: datetime) -> None:
        super().__init__(
            f"user already holds usable certificate {serial} (valid until "
            f"{not_after:%Y-%m-%d %H:%M} UTC); revoke it or wait for it to expire"
        )
        self.serial = serial
        self.not_after = not_after


class AcquisitionNotYetOpen(PolicyViolation):
    """R-CUT-1: re-acquisition for cut-over certificates opens on the cutover day, not before."""

    code = "acquisition_not_open"

    def __init__(self, opens_at: datetime) -> None:
        super().__init__(f"re-acquisition opens on {opens_at:%Y-%m-%d}; it is not possible before")
        self.opens_at = opens_at


class RenewalNotOpen(PolicyViolation):
    """R-CERT-6: renewal is only possible in the last days before expiry."""

    code = "renewal_not_open"

    def __init__(self, opens_at: datetime) -> None:
        super().__init__(f"renewal opens at {opens_at:%Y-%m-%d %H:%M:%S} UTC")
        self.opens_at = opens_at


class CertificateExpired(PolicyViolation):
    """R-CERT-6: an expired certificate cannot be renewed; the user re-acquires (§2.10.2)."""

    code = "certificate_expired"


class CertificateRevoked(PolicyViolation):
    """A revoked certificate cannot be renewed or used."""

    code = "certificate_revoked"


class NotNewestCertificate(PolicyViolation):
    """Only a user's newest certificate may be renewed, so a stolen old one breeds nothing."""

    code = "not_newest_certificate"


class UnsupportedKey(PolicyViolation):
    """A CSR's key is too weak or of an unsupported type (R-CERT-8)."""

    code = "unsupported_key"
