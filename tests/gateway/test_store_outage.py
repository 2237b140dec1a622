"""The PostgreSQL store goes away (issue 12, fail closed): a process whose follower cannot
read the session events stops trusting its cache within STALE_AFTER (1 s) - a session that
may have ended elsewhere is never served from memory - and the request gets the named 503,
not a 500; when the server is back, the same process serves the session again."""

from __future__ import annotations

import asyncio
import time

import pytest

from common.errors import Unavailable
from common.postgres import PostgresSettings
from gateway.app import follow_session_events
from gateway.sessions import STALE_AFTER, SessionStore
from gateway.users_pg import PgUserStore
from policy.clock import FakeClock
from policy.session import SessionPolicy
from tests.support.postgres import start_throwaway_cluster

FP = "f" * 64


async def test_cache_not_trusted_while_the_store_is_down(clock: FakeClock) -> None:
    """Served from the cache while in sync; PostgreSQL stopped: within about
    STALE_AFTER every request goes to the store and is refused with store_unreachable;
    PostgreSQL started again: the session is served again, nobody logged out."""
    cluster = start_throwaway_cluster()  # its own server: this test stops it
    try:
        cluster.psql("CREATE DATABASE gw")
        settings = PostgresSettings(cluster.dsn("gw"), connect_timeout=2.0, command_timeout=2.0)
        store = await PgUserStore.open(settings, clock)
        sessions = SessionStore(SessionPolicy(), clock, store)
        follower = asyncio.create_task(follow_session_events(store, sessions, 0))
        try:
            token, _ = await sessions.create(
                user_id="u1", name="n", customer="c", role="contractor",
                previous_login_at=None, fingerprint=FP, serial="ab", must_change=None)
            await asyncio.sleep(0.3)
            assert sessions.in_sync
            assert (await sessions.use(token, FP)).user_id == "u1"
            await asyncio.to_thread(cluster.stop)  # fast shutdown: every connection drops
            stopped = time.monotonic()
            while sessions.in_sync:
                await sessions.use(token, FP)  # still in sync: from memory, no store needed
                await asyncio.sleep(0.05)
            assert time.monotonic() - stopped <= STALE_AFTER + 0.5
            with pytest.raises(Unavailable) as refused:
                await sessions.use(token, FP)
            assert refused.value.code == "store_unreachable"
            await asyncio.to_thread(cluster.start)
            deadline = time.monotonic() + 20
            while True:
                try:
                    assert (await sessions.use(token, FP)).user_id == "u1"
                    break
                except Unavailable:
                    assert time.monotonic() < deadline, "the store did not come back"
                    await asyncio.sleep(0.2)
        finally:
            follower.cancel()
            await asyncio.gather(follower, return_exceptions=True)
            await store.close()
    finally:
        cluster.destroy()
