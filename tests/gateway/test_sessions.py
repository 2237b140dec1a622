"""Server-side sessions in the store (R-SES-1, R-SES-2, issue 12), on both backends: the
timeout page survives the sweeper, tombstones tell why once, and two session stores on one
database (two gateway processes) act as one."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import timedelta

import pytest

from gateway.errors import SessionEnded, SessionExpired, SessionRequired
from gateway.sessions import STALE_AFTER, EndReason, SessionStore
from gateway.store import UserBackend
from gateway.users_pg import PgUserStore
from policy.clock import FakeClock
from policy.session import SessionPolicy
from tests.gateway.conftest import BOTH_STORES

pytestmark = BOTH_STORES
FP = "f" * 64


async def _login(store: SessionStore, user_id: str = "u1", fingerprint: str = FP) -> str:
    token, _ = await store.create(user_id=user_id, name="n", customer="c", role="contractor",
                                  previous_login_at=None, fingerprint=fingerprint, serial="ab",
                                  must_change=None)
    return token


def _sessions(store: UserBackend, clock: FakeClock) -> SessionStore:
    """A process's session store on the shared database, following it as the app does."""
    sessions = SessionStore(SessionPolicy(), clock, store)
    sessions.synced_at = float("inf")  # in sync unless a test says otherwise
    return sessions


async def _follow(sessions: SessionStore, store: UserBackend, after: int = 0) -> int:
    """One pass of the follower (what `gateway.app.follow_session_events` does each poll)."""
    for end in await store.session_ends_after(after):
        sessions.apply(end)
        after = end.seq
    return after


class TestTimeout:
    """30 minutes without an operation end the session; the next click is told so (§2.8)."""

    async def test_swept_session_shows_timeout_once_R_SES_1(self, store: UserBackend,
                                                            clock: FakeClock) -> None:
        """After the background sweep the next request still gets SessionExpired, then login."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)
        clock.advance(timedelta(minutes=30))
        assert await sessions.sweep() == 1
        with pytest.raises(SessionExpired):
            await sessions.use(token, FP)
        with pytest.raises(SessionRequired):
            await sessions.use(token, FP)

    async def test_active_session_not_swept_R_SES_1(self, store: UserBackend,
                                                    clock: FakeClock) -> None:
        """29:59 after the last operation the session is still there."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)
        clock.advance(timedelta(minutes=29, seconds=59))
        assert await sessions.sweep() == 0
        assert (await sessions.use(token, FP)).user_id == "u1"

    async def test_activity_on_another_process_keeps_the_session_R_SES_1(
            self, store: UserBackend, clock: FakeClock) -> None:
        """Requests served by process B keep the session alive on A: A re-reads the stored
        last-seen time (B's batch write-back) before it declares an idle timeout."""
        a, b = _sessions(store, clock), _sessions(store, clock)
        token = await _login(a)
        clock.advance(timedelta(minutes=20))
        await b.use(token, FP)
        await b.flush()
        clock.advance(timedelta(minutes=20))  # 40 minutes after A last saw it
        assert await a.sweep() == 0
        assert (await a.use(token, FP)).user_id == "u1"


class TestWhyItEnded:
    """Issue 15 item 1: a tombstone by token hash says why a session ended, once, to the
    certificate that owned it."""

    @pytest.mark.parametrize("reason", [r for r in EndReason if r not in
                                        (EndReason.LOGOUT, EndReason.TIMEOUT)])
    async def test_reason_once_then_login_R_SES_2(self, store: UserBackend, clock: FakeClock,
                                                  reason: EndReason) -> None:
        """Re-login, lock, helpdesk reset or disable, revocation: the next request gets
        `session_ended_<reason>`, the one after it the plain login."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)
        if reason is EndReason.REVOKED:
            assert await sessions.end_certificate(FP) == 1
        elif reason is EndReason.RELOGIN:
            await _login(sessions)
        else:
            assert await sessions.end_user("u1", reason)
        with pytest.raises(SessionEnded) as ended:
            await sessions.use(token, FP)
        assert ended.value.code == f"session_ended_{reason.value}"
        with pytest.raises(SessionRequired):
            await sessions.use(token, FP)

    async def test_logout_leaves_no_tombstone_and_another_certificate_learns_nothing(
            self, store: UserBackend, clock: FakeClock) -> None:
        """A logout is not explained later; a stolen cookie with another certificate gets
        the plain login page, and the owner still learns why."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)
        await sessions.end(token)
        with pytest.raises(SessionRequired):
            await sessions.use(token, FP)
        token = await _login(sessions)
        await sessions.end_user("u1", EndReason.LOCKED)
        with pytest.raises(SessionRequired):
            await sessions.use(token, "e" * 64)
        with pytest.raises(SessionEnded):
            await sessions.use(token, FP)

    async def test_tombstones_are_bounded_in_age(self, store: UserBackend,
                                                 clock: FakeClock) -> None:
        """Past the absolute session limit a tombstone tells nothing any more."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)
        await sessions.end_user("u1", EndReason.RELOGIN)
        clock.advance(timedelta(hours=13))
        with pytest.raises(SessionRequired):
            await sessions.use(token, FP)


class TestShared:
    """Issue 12: sessions live in the store; processes A and B on one database act as one."""

    async def test_restart_logs_nobody_out(self, store: UserBackend, clock: FakeClock) -> None:
        """A new session store (a restarted gateway) serves the cookie from the store."""
        token = await _login(_sessions(store, clock))
        again = _sessions(store, clock)
        assert (await again.use(token, FP)).user_id == "u1"

    async def test_one_session_per_user_across_processes_R_SES_2(
            self, store: UserBackend, clock: FakeClock) -> None:
        """Logging in on B ends the session of A (re-login), even when both log in at once:
        exactly one session stands."""
        a, b = _sessions(store, clock), _sessions(store, clock)
        tokens = await asyncio.gather(*(_login(s) for s in (a, b, a, b)))
        await _follow(a, store)
        await _follow(b, store)
        standing = []
        for token in tokens:
            with contextlib.suppress(SessionEnded, SessionRequired):
                standing.append(await a.use(token, FP))
        assert len(standing) == 1
        assert (await store.session_of_user("u1")) is not None

    async def test_end_on_b_reaches_a_cache(self, store: UserBackend, clock: FakeClock) -> None:
        """A logout on B: A, which cached the session, drops it at its next follower pass,
        and its relays are cancelled."""
        a, b = _sessions(store, clock), _sessions(store, clock)
        token = await _login(a)
        session = await a.use(token, FP)
        relay = asyncio.create_task(asyncio.sleep(3600))
        session.relays.add(relay)
        after = await _follow(a, store)
        assert await b.end(token)
        await _follow(a, store, after)
        await asyncio.sleep(0)
        assert relay.cancelled()
        with pytest.raises(SessionRequired):
            await a.use(token, FP)

    async def test_out_of_sync_process_reads_the_store(self, store: UserBackend,
                                                       clock: FakeClock) -> None:
        """A process whose follower has not read the events for STALE_AFTER seconds does not
        trust its cache: an end elsewhere is refused at once (fail closed)."""
        a, b = _sessions(store, clock), _sessions(store, clock)
        token = await _login(a)
        await a.use(token, FP)
        await b.end(token)
        assert (await a.use(token, FP)).user_id == "u1"  # in sync by decree: from the cache
        a.synced_at = 0.0
        assert not a.in_sync and STALE_AFTER <= 1.0
        with pytest.raises(SessionRequired):
            await a.use(token, FP)

    async def test_no_store_round_trip_on_the_hot_path(self, store: UserBackend,
                                                       clock: FakeClock) -> None:
        """A cached session in sync is served without the store (its reads fail here)."""
        sessions = _sessions(store, clock)
        token = await _login(sessions)

        async def unreachable(*_args: object) -> None:
            raise AssertionError("a store read on the hot path")

        sessions._backend.load_session = unreachable  # type: ignore[method-assign]
        for _ in range(100):
            await sessions.use(token, FP)

    async def test_forged_cookie_costs_no_write(self, store: UserBackend, clock: FakeClock,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
        """A cookie naming no session and no ended one is answered with reads only: random
        cookies from a certificate holder cannot queue the store's writes."""
        sessions = _sessions(store, clock)

        def no_write(*_args: object, **_kwargs: object) -> None:
            raise AssertionError("a write transaction for a forged cookie")

        monkeypatch.setattr(store, "_tx" if isinstance(store, PgUserStore) else "transaction",
                            no_write)
        with pytest.raises(SessionRequired):
            await sessions.use("forged-" + "x" * 40, FP)
