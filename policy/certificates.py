"""Certificate lifecycle rules: usability, acquisition (R-CERT-5), renewal (R-CERT-6)."""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from policy.errors import (
    CertificateExpired,
    CertificateRevoked,
    NotNewestCertificate,
    RenewalNotOpen,
    UsableCertificateExists,
)


class CertState(enum.StrEnum):
    """Where a certificate stands at a given moment."""

    NOT_YET_VALID = "not_yet_valid"
    VALID = "valid"
    EXPIRED = "expired"
    REVOKED = "revoked"
    CUT_OVER = "cut_over"


@dataclass(frozen=True)
class CertFacts:
    """The facts about an issued certificate that the rules need."""

    serial: str
    generation: str
    not_before: datetime
    not_after: datetime
    revoked_at: datetime | None = None


# A cutover rule (R-CUT-1) is injected as a predicate so these rules stay free of config.
CutOverTest = Callable[[CertFacts, datetime], bool]


def _never_cut_over(_cert: CertFacts, _now: datetime) -> bool:
    return False


def state_at(
    cert: CertFacts, now: datetime, is_cut_over: CutOverTest = _never_cut_over
) -> CertState:
    """The certificate's state at `now`; notBefore and notAfter are both inclusive (RFC 5280)."""
    if cert.revoked_at is not None and cert.revoked_at <= now:
        return CertState.REVOKED
    if now < cert.not_before:
        return CertState.NOT_YET_VALID
    if now > cert.not_after:
        return CertState.EXPIRED
    if is_cut_over(cert, now):
        return CertState.CUT_OVER
    return CertState.VALID


def check_may_acquire(
    certs: Iterable[CertFacts], now: datetime, is_cut_over: CutOverTest = _never_cut_over
) -> None:
    """R-CERT-5: refuse while the user holds a currently usable certificate.

    A certificate that is not yet valid also counts as held: it will become usable.
    """
    for cert in certs:
        if state_at(cert, now, is_cut_over) in (CertState.VALID, CertState.NOT_YET_VALID):
            raise UsableCertificateExists(cert.serial, cert.not_after)


def renewal_opens_at(cert: CertFacts, window: timedelta) -> datetime:
    """The first instant at which `cert` may be renewed."""
    return cert.not_after - window


def check_may_renew(
    cert: CertFacts, newest_serial: str, now: datetime, window: timedelta,
    is_cut_over: CutOverTest = _never_cut_over,
) -> None:
    """R-CERT-6: only the newest, unrevoked certificate, from `window` before expiry to expiry."""
    state = state_at(cert, now, is_cut_over)
    if state is CertState.REVOKED:
        raise CertificateRevoked("a revoked certificate cannot be renewed")
    if state is CertState.EXPIRED:
        raise CertificateExpired(
            "the certificate has expired and cannot be renewed; acquire a new one (§2.10.2)"
        )
    if state is CertState.CUT_OVER:
        raise CertificateExpired("the certificate was cut over; acquire a new one")
    if cert.serial != newest_serial:
        raise NotNewestCertificate("only the user's newest certificate can be renewed")
    opens_at = renewal_opens_at(cert, window)
    if now < opens_at:
        raise RenewalNotOpen(opens_at)


def renewal_offered(cert: CertFacts, now: datetime, window: timedelta) -> bool:
    """§2.10.1(2): whether to show "Renew certificate" (within the window, not expired)."""
    return renewal_opens_at(cert, window) <= now <= cert.not_after
