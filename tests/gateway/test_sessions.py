"""Server-side sessions: the timeout page survives the sweeper (R-SES-1)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from gateway.errors import SessionExpired, SessionRequired
from gateway.sessions import SessionStore
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
