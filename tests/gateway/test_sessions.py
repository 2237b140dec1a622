"""Server-side sessions: the timeout page survives the sweeper (R-SES-1)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.errors import SessionEnded, SessionExpired, SessionRequired
from gateway.sessions import EndReason, SessionStore
from policy.clock import FakeClock
from policy.session import SessionPolicy


def _store(clock: FakeClock) -> tuple[SessionStore, str]:
    store = SessionStore(SessionPolicy(), clock)
    token, _ = store.create(user_id="u1", name="n", customer="c", role="contractor",
                            previous_login_at=None, fingerprint="f" * 64, serial="ab",
                            must_change=None)
    return store, token


class TestTimeout:
    """30 minutes without an operation end the session; the next click is told so (§2.8)."""

    def test_swept_session_shows_timeout_once_R_SES_1(self, clock: FakeClock) -> None:
        """After the background sweep the next request still gets SessionExpired, then login."""
        store, token = _store(clock)
        clock.advance(timedelta(minutes=30))
        assert store.sweep() == 1
        with pytest.raises(SessionExpired):
            store.use(token, "f" * 64)
        with pytest.raises(SessionRequired):
            store.use(token, "f" * 64)

    def test_active_session_not_swept_R_SES_1(self, clock: FakeClock) -> None:
        """29:59 after the last operation the session is still there."""
        store, token = _store(clock)
        clock.advance(timedelta(minutes=29, seconds=59))
        assert store.sweep() == 0
        assert store.use(token, "f" * 64).user_id == "u1"


class TestWhyItEnded:
    """Issue 15 item 1: a tombstone by token hash says why a session ended, once, to the
    certificate that owned it, within bounds."""

    @pytest.mark.parametrize("reason", [r for r in EndReason if r not in
                                        (EndReason.LOGOUT, EndReason.TIMEOUT)])
    def test_reason_once_then_login_R_SES_2(self, clock: FakeClock, reason: EndReason) -> None:
        """Re-login, lock, helpdesk reset or disable, revocation: the next request gets
        `session_ended_<reason>`, the one after it the plain login."""
        store, token = _store(clock)
        if reason is EndReason.REVOKED:
            assert store.end_certificate("f" * 64) == 1
        else:
            assert store.end_user("u1", reason)
        with pytest.raises(SessionEnded) as ended:
            store.use(token, "f" * 64)
        assert ended.value.code == f"session_ended_{reason.value}"
        with pytest.raises(SessionRequired):
            store.use(token, "f" * 64)

    def test_logout_leaves_no_tombstone_and_another_certificate_learns_nothing(
            self, clock: FakeClock) -> None:
        """A logout is not explained later; a stolen cookie with another certificate gets
        the plain login page, and the owner still learns why."""
        store, token = _store(clock)
        store.end(token)
        with pytest.raises(SessionRequired):
            store.use(token, "f" * 64)
        store, token = _store(clock)
        store.end_user("u1", EndReason.LOCKED)
        with pytest.raises(SessionRequired):
            store.use(token, "e" * 64)
        with pytest.raises(SessionEnded):
            store.use(token, "f" * 64)

    def test_tombstones_are_bounded_in_age(self, clock: FakeClock) -> None:
        """Past the absolute session limit a tombstone is gone (memory stays bounded)."""
        store, token = _store(clock)
        store.end_user("u1", EndReason.RELOGIN)
        clock.advance(timedelta(hours=13))
        _, other = store.create(user_id="u2", name="n", customer="c", role="contractor",
                                previous_login_at=None, fingerprint="d" * 64, serial="cd",
                                must_change=None)
        store.end_user("u2", EndReason.DISABLED)  # any new tombstone prunes the old ones
        with pytest.raises(SessionRequired):
            store.use(token, "f" * 64)
