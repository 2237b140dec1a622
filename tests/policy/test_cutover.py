"""The cutover rule at its exact edges, on the notice's own dates (R-CUT-1)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from policy.certificates import CertFacts, CertState, check_may_acquire, state_at
from policy.cutover import Cutover, check_reacquisition_open, cut_over_test
from policy.errors import AcquisitionNotYetOpen, UsableCertificateExists

JST = timezone(timedelta(hours=9))
SECOND = timedelta(seconds=1)
# "validity started on or before 2020-11-11" -> before 2020-11-12 00:00 JST;
# "stops working on 2021-02-24" -> from 2021-02-24 00:00 JST.
BOUNDARY = datetime(2020, 11, 12, tzinfo=JST)
CUTOVER_DAY = datetime(2021, 2, 24, tzinfo=JST)
NOTICE = Cutover("notice-2021", effective_at=CUTOVER_DAY, issued_before=BOUNDARY)


def cert(issued: datetime, generation: str = "g1") -> CertFacts:
    """A one-year certificate issued at `issued`."""
    return CertFacts("ab", generation, issued, issued + timedelta(days=365))


class TestAffected:
    """Which certificates the cutover affects (R-CUT-1)."""

    @pytest.mark.parametrize(
        ("issued", "affected"),
        [(BOUNDARY - SECOND, True), (BOUNDARY, False), (BOUNDARY + SECOND, False)],
    )
    def test_boundary_date_R_CUT_1(self, issued: datetime, affected: bool) -> None:
        """Issued 2020-11-11 23:59:59 JST is affected; 2020-11-12 00:00 JST is not."""
        assert NOTICE.affects(cert(issued)) is affected

    @pytest.mark.parametrize(
        ("now", "refused"),
        [(CUTOVER_DAY - SECOND, False), (CUTOVER_DAY, True), (CUTOVER_DAY + SECOND, True)],
    )
    def test_cutover_day_R_CUT_1(self, now: datetime, refused: bool) -> None:
        """An affected certificate works until the cutover day and is refused from it."""
        old = cert(BOUNDARY - timedelta(days=30))
        expected = CertState.CUT_OVER if refused else CertState.VALID
        assert state_at(old, now, cut_over_test([NOTICE])) is expected
        new = cert(BOUNDARY + timedelta(days=1))
        assert state_at(new, now, cut_over_test([NOTICE])) is CertState.VALID

    def test_generation_cutover_R_CUT_1(self) -> None:
        """A retired generation's certificates are refused whatever their issue date."""
        retire = Cutover("g1-retired", effective_at=CUTOVER_DAY, generation="g1")
        assert retire.applies(cert(BOUNDARY + timedelta(days=10), "g1"), CUTOVER_DAY)
        assert not retire.applies(cert(BOUNDARY + timedelta(days=10), "g2"), CUTOVER_DAY)

    def test_needs_a_criterion(self) -> None:
        """A cutover without a date or generation is a configuration error."""
        with pytest.raises(ValueError, match="needs issued_before"):
            Cutover("x", effective_at=CUTOVER_DAY)


class TestReacquisition:
    """Re-acquisition opens on the cutover day, not before (the notice)."""

    def test_not_before_cutover_day_R_CUT_1(self) -> None:
        """The day before, the affected user is told when it opens; from the day, it works."""
        old = cert(BOUNDARY - timedelta(days=30))
        with pytest.raises(AcquisitionNotYetOpen) as refused:
            check_reacquisition_open([NOTICE], [old], CUTOVER_DAY - SECOND)
        assert refused.value.opens_at == CUTOVER_DAY
        check_reacquisition_open([NOTICE], [old], CUTOVER_DAY)
        check_may_acquire([old], CUTOVER_DAY, cut_over_test([NOTICE]))

    def test_unaffected_holder_still_blocked_R_CERT_5(self) -> None:
        """A holder of an unaffected usable certificate cannot acquire another."""
        new = cert(BOUNDARY + timedelta(days=1))
        check_reacquisition_open([NOTICE], [new], CUTOVER_DAY)
        with pytest.raises(UsableCertificateExists):
            check_may_acquire([new], CUTOVER_DAY, cut_over_test([NOTICE]))

    def test_expired_affected_certificate_does_not_block(self) -> None:
        """An affected certificate that already expired does not delay acquisition."""
        expired = cert(datetime(2019, 1, 1, tzinfo=UTC))
        check_reacquisition_open([NOTICE], [expired], CUTOVER_DAY - timedelta(days=5))
