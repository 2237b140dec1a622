"""The CA cluster's leader jobs (issue 13): "the few jobs that must have one author (signing
the next CRL, re-signing cached OCSP answers, renewing responder certificates, campaign
cutovers) done by an elected leader that another node replaces within seconds when it dies
... no job is done twice or skipped".

Fencing at store level (two contenders on one real PostgreSQL); the responder renewal and the
cutover record with two in-process CA nodes sharing one database and a FakeClock (each with
its own copy of the key folder, as on two hosts); the network drop with two real daemons,
one of them reaching PostgreSQL through a socket proxy the test stops forwarding.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import asyncpg

from ca.leadership import CRL_JOB, LeaderJob
from ca.store_pg import PgStore
from common.postgres import PostgresSettings
from policy.clock import FakeClock

NOW = datetime(2026, 12, 1, tzinfo=UTC)


async def _until(condition: Callable[[], bool], seconds: float, what: str) -> float:
    """Wait (bounded) until `condition()`; how long it took."""
    started = time.monotonic()
    while not condition():
        assert time.monotonic() - started < seconds, f"{what} not within {seconds} s"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


async def _open(dsn: str, node: str) -> PgStore:
    return await PgStore.open(PostgresSettings(dsn=dsn, application_name=f"sekisho-ca:{node}"))


async def _terminate_lock_connection(dsn: str, job: LeaderJob) -> None:
    """What a DBA's pg_terminate_backend (or a dead network the server noticed) does."""
    conn = await asyncpg.connect(dsn)
    try:
        assert await conn.fetchval("SELECT pg_terminate_backend($1)", job.election.backend_pid)
    finally:
        await conn.close()


def _unaware(job: LeaderJob) -> None:
    """Make `job` a deposed leader that has not noticed yet (frozen, or its network gone
    silently): it keeps believing it leads, so only the fence inside the transaction can
    stop its writes."""

    async def never_step_down() -> None:
        return None

    job.election._step_down = never_step_down  # type: ignore[method-assign]


async def _save(store: PgStore, job: LeaderJob | None, number: int) -> bool:
    return await store.save_crl("g1", number, NOW, NOW + timedelta(days=1), b"crl%d" % number,
                                0, fence=None if job is None else job.fence)


class TestFencing:
    """A deposed leader's writes are refused inside the writing transaction."""

    def test_lost_lock_cannot_store_a_crl(self, postgres_dsn: str) -> None:
        """Its lock connection terminated (pg_terminate_backend), a leader that has not
        noticed cannot store a CRL, though the number check alone would accept it."""

        async def run() -> None:
            store = await _open(postgres_dsn, "node1")
            job = LeaderJob(store, CRL_JOB, "node1", FakeClock(NOW))
            try:
                await job.start()
                await _until(lambda: job.is_leader, 10, "election")
                assert await _save(store, job, 1)  # the leader stores
                _unaware(job)
                await _terminate_lock_connection(postgres_dsn, job)
                assert job.is_leader  # it does not know yet
                assert not await _save(store, job, 2)  # fenced: lock lost
                assert await store.crl_number("g1") == 1
                assert await _save(store, None, 2)  # the number check alone would accept it
            finally:
                await job.close()
                await store.close()

        asyncio.run(run())

    def test_superseded_term_cannot_store_a_crl(self, postgres_dsn: str) -> None:
        """Node 2 is elected after node 1 lost its lock: node 1's CRL (even with a number
        above the stored one) is refused, node 2's is stored; the terms are 1 then 2."""

        async def run() -> None:
            first, second = await _open(postgres_dsn, "node1"), await _open(postgres_dsn, "node2")
            old = LeaderJob(first, CRL_JOB, "node1", FakeClock(NOW))
            new = LeaderJob(second, CRL_JOB, "node2", FakeClock(NOW))
            try:
                await old.start()
                await _until(lambda: old.is_leader, 10, "node1's election")
                await new.start()
                assert old.term == 1
                _unaware(old)
                await _terminate_lock_connection(postgres_dsn, old)
                await _until(lambda: new.is_leader, 10, "node2's election")
                assert new.term == 2
                assert not await _save(first, old, 5)
                assert await _save(second, new, 1)
                assert await first.load_crl("g1") is not None
                assert (await first.load_crl("g1"))[3] == b"crl1"  # type: ignore[index]
                assert (await first.leader_terms())[CRL_JOB] == (2, "node2")
            finally:
                await old.close()
                await new.close()
                await first.close()
                await second.close()

        asyncio.run(run())

    def test_new_term_waits_for_the_old_leaders_open_write(self, postgres_dsn: str) -> None:
        """A write the old leader began while it still led commits before the new leader's
        term starts: the new leader's claim waits for it (the term row is share-locked), so
        the two leaders' writes never interleave."""

        async def run() -> None:
            first, second = await _open(postgres_dsn, "node1"), await _open(postgres_dsn, "node2")
            old = LeaderJob(first, CRL_JOB, "node1", FakeClock(NOW))
            new = LeaderJob(second, CRL_JOB, "node2", FakeClock(NOW))
            writing, finish = asyncio.Event(), asyncio.Event()

            async def slow_write(conn: asyncpg.Connection) -> int:
                writing.set()
                await finish.wait()
                return int(await conn.fetchval("SELECT 1"))

            watcher = await asyncpg.connect(postgres_dsn)
            try:
                await old.start()
                await _until(lambda: old.is_leader, 10, "node1's election")
                write = asyncio.create_task(first.fenced(old.fence, slow_write))
                await asyncio.wait_for(writing.wait(), 10)
                _unaware(old)
                await _terminate_lock_connection(postgres_dsn, old)
                await new.start()
                await _until(lambda: new.election.is_leader, 10, "node2's lock")
                deadline = time.monotonic() + 10
                while not await watcher.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                        " AND query LIKE 'INSERT INTO leader_terms%'"):
                    assert time.monotonic() < deadline, "node2's claim never waited"
                    await asyncio.sleep(0.02)
                assert not new.is_leader  # elected, but not leading before the write ends
                assert new.term is None
                finish.set()
                assert await write == (True, 1)  # it began while leading: it commits
                await _until(lambda: new.is_leader, 10, "node2's term")
                assert new.term == 2
                assert not await _save(first, old, 1)  # and nothing after it
            finally:
                await watcher.close()
                await old.close()
                await new.close()
                await first.close()
                await second.close()

        asyncio.run(run())
