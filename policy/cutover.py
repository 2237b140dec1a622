"""Cutovers (R-CUT-1): certificates issued on or before a date, or by a retired generation,
stop working on a cutover day; their holders may re-acquire from that day on, not before.

This is the routine, dated alternative to revoking every old certificate: nothing is added to
the CRL, and the rule is a comparison of two dates per request.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from policy.certificates import CertFacts, CertState, CutOverTest, state_at
from policy.errors import AcquisitionNotYetOpen


@dataclass(frozen=True)
class Cutover:
    """One cutover: which certificates it affects and from when.

    `issued_before` is exclusive (the notice's "validity started on or before 2020-11-11" is
    `issued_before = 2020-11-12T00:00+09:00`); `generation` limits it to one issuing
    generation. At least one of the two must be set.
    """

    name: str
    effective_at: datetime
    issued_before: datetime | None = None
    generation: str | None = None

    def __post_init__(self) -> None:
        if self.issued_before is None and self.generation is None:
            raise ValueError(f"cutover {self.name!r} needs issued_before and/or generation")
        if self.issued_before is not None and self.issued_before > self.effective_at:
            raise ValueError(f"cutover {self.name!r}: issued_before is after effective_at")

    def affects(self, cert: CertFacts) -> bool:
        """Whether the certificate falls under this cutover (whatever the date now)."""
        if self.generation is not None and cert.generation != self.generation:
            return False
        return self.issued_before is None or cert.not_before < self.issued_before

    def applies(self, cert: CertFacts, now: datetime) -> bool:
        """Whether the certificate is refused at `now` because of this cutover."""
        return now >= self.effective_at and self.affects(cert)


def cut_over_test(cutovers: Sequence[Cutover]) -> CutOverTest:
    """A predicate for policy.certificates: refused by any of the cutovers."""
    if not cutovers:
        return lambda _cert, _now: False
    return lambda cert, now: any(c.applies(cert, now) for c in cutovers)


def check_reacquisition_open(
    cutovers: Sequence[Cutover], certs: Iterable[CertFacts], now: datetime
) -> None:
    """Before a cutover day, its affected users cannot re-acquire (the notice: not before X).

    Only a certificate that would otherwise still be usable counts: a user whose affected
    certificate has expired or was revoked acquires as usual.
    """
    for cert in certs:
        if state_at(cert, now) is not CertState.VALID:
            continue
        for cutover in cutovers:
            if cutover.affects(cert) and now < cutover.effective_at:
                raise AcquisitionNotYetOpen(cutover.effective_at)


def cutover_for(cutovers: Sequence[Cutover], cert: CertFacts, now: datetime) -> Cutover | None:
    """The cutover that refuses `cert` at `now`, if any (for the explanation page)."""
    return next((c for c in cutovers if c.applies(cert, now)), None)
