"""Session lifetime at its edges (R-SES-1, §2.8)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from policy.session import SessionPolicy, SessionState, session_expires_at, session_state

POLICY = SessionPolicy()
CREATED = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
IDLE = timedelta(minutes=30)
ABSOLUTE = timedelta(hours=12)


class TestIdle:
    """30 minutes without any operation end the session (R-SES-1)."""

    @pytest.mark.parametrize(
        ("last_seen", "now", "state"),
        [
            (CREATED, CREATED + IDLE - SECOND, SessionState.ACTIVE),
            (CREATED, CREATED + IDLE, SessionState.IDLE_EXPIRED),
            (CREATED, CREATED + IDLE + SECOND, SessionState.IDLE_EXPIRED),
            # after an operation at 11:00 the 30 minutes count from 11:00
            (CREATED + timedelta(hours=2), CREATED + timedelta(hours=2) + IDLE - SECOND,
             SessionState.ACTIVE),
            (CREATED + timedelta(hours=2), CREATED + timedelta(hours=2) + IDLE,
             SessionState.IDLE_EXPIRED),
            (CREATED + timedelta(hours=2), CREATED + timedelta(hours=2) + IDLE + SECOND,
             SessionState.IDLE_EXPIRED),
        ],
    )
    def test_idle_edge_R_SES_1(
        self, last_seen: datetime, now: datetime, state: SessionState
    ) -> None:
        """Active one second before 30 idle minutes, ended at 30 minutes and after."""
        assert session_state(CREATED, last_seen, now, POLICY) is state

    def test_clock_stepping_back_is_no_idle_time_R_SES_1(self) -> None:
        """A `now` before the last operation does not end the session."""
        assert session_state(CREATED, CREATED, CREATED - SECOND, POLICY) is SessionState.ACTIVE

    def test_configurable_R_SES_1(self) -> None:
        """The idle limit comes from the policy."""
        policy = SessionPolicy(idle_timeout=timedelta(minutes=5))
        assert session_state(CREATED, CREATED, CREATED + timedelta(minutes=5), policy) == (
            "idle_expired"
        )


class TestAbsolute:
    """A busy session still ends after 12 hours (R-SES-1)."""

    @pytest.mark.parametrize(
        ("now", "state"),
        [
            (CREATED + ABSOLUTE - SECOND, SessionState.ACTIVE),
            (CREATED + ABSOLUTE, SessionState.ABSOLUTE_EXPIRED),
            (CREATED + ABSOLUTE + SECOND, SessionState.ABSOLUTE_EXPIRED),
        ],
    )
    def test_absolute_edge_R_SES_1(self, now: datetime, state: SessionState) -> None:
        """Used a second ago, the session stands until 12 hours after its creation."""
        assert session_state(CREATED, now - SECOND, now, POLICY) is state

    def test_absolute_wins_when_both_reached_R_SES_1(self) -> None:
        """When idle and absolute limits are both past, the absolute one is reported."""
        now = CREATED + ABSOLUTE + IDLE
        assert session_state(CREATED, CREATED, now, POLICY) is SessionState.ABSOLUTE_EXPIRED

    @pytest.mark.parametrize(
        ("last_seen", "expected"),
        [
            (CREATED, CREATED + IDLE),
            (CREATED + ABSOLUTE - timedelta(minutes=10), CREATED + ABSOLUTE),
        ],
    )
    def test_expires_at_is_the_earlier_limit_R_SES_1(
        self, last_seen: datetime, expected: datetime
    ) -> None:
        """The session's end is the earlier of the idle and the absolute limit."""
        assert session_expires_at(CREATED, last_seen, POLICY) == expected

    @pytest.mark.parametrize(
        "kwargs",
        [{"idle_timeout": timedelta(0)},
         {"idle_timeout": timedelta(hours=2), "absolute_timeout": timedelta(hours=1)}],
    )
    def test_bad_policy_refused_R_SES_1(self, kwargs: dict[str, timedelta]) -> None:
        """A policy that cannot work is refused when it is built."""
        with pytest.raises(ValueError, match="session"):
            SessionPolicy(**kwargs)
