"""Certificate lifecycle rules at their exact edges (R-CERT-1, R-CERT-5, R-CERT-6)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from policy import certificates as rules
from policy.errors import (
    CertificateExpired,
    CertificateRevoked,
    InvalidUserId,
    NotNewestCertificate,
    RenewalNotOpen,
    UsableCertificateExists,
)
from policy.profile import CertificateProfile, validate_user_id

ISSUED = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
NOT_AFTER = ISSUED + timedelta(days=365)
WINDOW = timedelta(days=30)
SECOND = timedelta(seconds=1)
CERT = rules.CertFacts("ab", "g1", ISSUED, NOT_AFTER)


class TestProfile:
    """The client-certificate profile (R-CERT-1)."""

    def test_one_year_validity_and_urls_R_CERT_1(self) -> None:
        """A certificate is valid 365 days from issuance and names this CA's CRL and OCSP."""
        profile = CertificateProfile(timedelta(days=365), "p256",
                                     "http://ca/crl/{generation}.crl", "http://ca/ocsp", WINDOW)
        spec = profile.client_certificate("100001", "g1", ISSUED + timedelta(microseconds=5))
        assert spec.common_name == "100001"
        assert spec.not_before == ISSUED
        assert spec.not_after - spec.not_before == timedelta(days=365)
        assert spec.crl_url == "http://ca/crl/g1.crl"
        assert spec.ocsp_url == "http://ca/ocsp"

    @pytest.mark.parametrize("user_id", ["", " 1", "a/b", "x" * 65, "田中", "-lead"])
    def test_bad_user_ids_refused_R_CERT_1(self, user_id: str) -> None:
        """A user ID becomes the CN, so only a safe shape is accepted."""
        with pytest.raises(InvalidUserId):
            validate_user_id(user_id)

    def test_unknown_server_key_algorithm_refused_R_CERT_4(self) -> None:
        """Config naming an unsupported key algorithm fails at start-up."""
        with pytest.raises(ValueError, match="key_algorithm"):
            CertificateProfile(timedelta(days=365), "dsa", "{generation}", "x", WINDOW)


class TestState:
    """notBefore and notAfter are inclusive (RFC 5280 §4.1.2.5)."""

    @pytest.mark.parametrize(
        ("now", "state"),
        [
            (ISSUED - SECOND, rules.CertState.NOT_YET_VALID),
            (ISSUED, rules.CertState.VALID),
            (NOT_AFTER, rules.CertState.VALID),
            (NOT_AFTER + SECOND, rules.CertState.EXPIRED),
        ],
    )
    def test_validity_edges_R_CERT_1(self, now: datetime, state: rules.CertState) -> None:
        """One second before, at and after each edge of the validity period."""
        assert rules.state_at(CERT, now) is state

    def test_revoked_wins_R_CERT_7(self) -> None:
        """A revoked certificate is revoked from its revocation time on."""
        revoked = rules.CertFacts("ab", "g1", ISSUED, NOT_AFTER, revoked_at=ISSUED + WINDOW)
        assert rules.state_at(revoked, ISSUED + WINDOW - SECOND) is rules.CertState.VALID
        assert rules.state_at(revoked, ISSUED + WINDOW) is rules.CertState.REVOKED


class TestAcquisition:
    """R-CERT-5: acquisition only while no usable certificate is held."""

    @pytest.mark.parametrize(
        ("now", "allowed"),
        [(NOT_AFTER - SECOND, False), (NOT_AFTER, False), (NOT_AFTER + SECOND, True)],
    )
    def test_allowed_only_after_expiry_R_CERT_5(self, now: datetime, allowed: bool) -> None:
        """A usable certificate blocks acquisition until the second after notAfter."""
        if allowed:
            rules.check_may_acquire([CERT], now)
        else:
            with pytest.raises(UsableCertificateExists):
                rules.check_may_acquire([CERT], now)

    def test_allowed_after_revocation_R_CERT_5(self) -> None:
        """A revoked certificate no longer blocks acquisition."""
        revoked = rules.CertFacts("ab", "g1", ISSUED, NOT_AFTER, revoked_at=ISSUED + SECOND)
        rules.check_may_acquire([revoked], ISSUED + 2 * SECOND)

    def test_allowed_when_cut_over_R_CUT_1(self) -> None:
        """A cut-over certificate no longer blocks acquisition."""
        rules.check_may_acquire([CERT], ISSUED + WINDOW, lambda _c, _n: True)


class TestRenewal:
    """R-CERT-6: renewal in the last 30 days, only the newest, never after expiry."""

    @pytest.mark.parametrize(
        ("now", "error"),
        [
            (NOT_AFTER - WINDOW - SECOND, RenewalNotOpen),
            (NOT_AFTER - WINDOW, None),
            (NOT_AFTER - WINDOW + SECOND, None),
            (NOT_AFTER - SECOND, None),
            (NOT_AFTER, None),
            (NOT_AFTER + SECOND, CertificateExpired),
        ],
    )
    def test_window_edges_R_CERT_6(self, now: datetime, error: type[Exception] | None) -> None:
        """One second before, at and after the window's opening and the expiry."""
        if error is None:
            rules.check_may_renew(CERT, "ab", now, WINDOW)
            assert rules.renewal_offered(CERT, now, WINDOW)
        else:
            with pytest.raises(error):
                rules.check_may_renew(CERT, "ab", now, WINDOW)
            assert not rules.renewal_offered(CERT, now, WINDOW)

    def test_only_newest_R_CERT_6(self) -> None:
        """An older certificate cannot breed a new one."""
        with pytest.raises(NotNewestCertificate):
            rules.check_may_renew(CERT, "cd", NOT_AFTER - SECOND, WINDOW)

    def test_revoked_cannot_renew_R_CERT_6(self) -> None:
        """A revoked certificate cannot be renewed."""
        revoked = rules.CertFacts("ab", "g1", ISSUED, NOT_AFTER, revoked_at=ISSUED)
        with pytest.raises(CertificateRevoked):
            rules.check_may_renew(revoked, "ab", NOT_AFTER - SECOND, WINDOW)
