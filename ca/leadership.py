"""The CA cluster's leader jobs (issue 13: "the few jobs that must have one author ... done
by an elected leader that another node replaces within seconds when it dies").

One election per job (`JOBS`), each a `common.postgres.LeaderElection` on its own connection:
a job that is slow (a token signing a responder certificate) never delays another's
handover, and `/metrics` and `cluster status` show each job's leader. Three connections per
node is the price.

Fencing. Being elected is not enough to write: a leader that froze, or lost the network,
may still be running its job when the next one is elected. So:
- a newly elected leader first claims its job's next *term* in `leader_terms` (the claim
  waits for the old leader's open fenced transaction, which share-locks the row; a dead
  leader's is ended by the server after `idle_in_transaction_session_timeout`), and leads
  (`is_leader`) only once it holds it;
- every leader write runs in a transaction that first checks, in that transaction, that the
  term is still its own (row kept share-locked until commit) and that its lock connection
  still holds the advisory lock (`LeaderElection.holds_lock`). A deposed leader's write is
  refused even when its CRL number, responder or cutover would otherwise be accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

import asyncpg

from ca.store_pg import PgStore
from common.postgres import LeaderElection
from policy.clock import Clock

log = logging.getLogger(__name__)

CRL_JOB = "crl"  # signing the next CRL of every generation (ca.crl_publisher)
RESPONDER_JOB = "ocsp-responders"  # renewing OCSP responder certificates (ca.ocsp_service)
CUTOVER_JOB = "cutovers"  # recording that a cutover took effect (ca.cutover_job)
JOBS = (CRL_JOB, RESPONDER_JOB, CUTOVER_JOB)


class LeaderJob:
    """The election and fencing term of one leader job on one node."""

    def __init__(self, store: PgStore, job: str, node: str, clock: Clock, *,
                 on_elected: Callable[[], Awaitable[None] | None] | None = None,
                 **election_settings: float) -> None:
        self.job = job
        self.node = node
        self.term: int | None = None
        self._store = store
        self._clock = clock
        self._on_elected = on_elected
        self._claim_task: asyncio.Task[None] | None = None
        self.leading = asyncio.Event()  # set while `is_leader`
        self.election = LeaderElection(store.settings, job, node=node,
                                       on_elected=self._elected, on_lost=self._lost,
                                       **election_settings)

    @property
    def is_leader(self) -> bool:
        """True while elected and holding a term (leader jobs run only then)."""
        return self.election.is_leader and self.term is not None

    async def start(self) -> None:
        """Start contending."""
        await self.election.start()

    async def close(self) -> None:
        """Stop contending (a leader releases its lock)."""
        await self.election.close()
        if self._claim_task is not None:
            self._claim_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._claim_task

    def _elected(self) -> None:
        # The claim runs beside the election, not in its callback: it may wait for a dead
        # leader's open transaction (bounded by idle_in_transaction_session_timeout, see
        # PgStore.fenced), and meanwhile the lock connection must keep its heartbeat.
        self._claim_task = asyncio.create_task(self._claim(), name=f"leader-term:{self.job}")

    async def _claim(self) -> None:
        while self.election.is_leader:
            try:
                term = await self._store.claim_leader_term(self.job, self.node,
                                                           self._clock.now())
            except Exception as exc:  # never lead without a term: every write is fenced by it
                log.warning("leader %s: %s cannot claim a term (%s); retrying", self.job,
                            self.node, exc)
                await asyncio.sleep(0.5)
                continue
            if not self.election.is_leader:
                return  # lost meanwhile: the term stays unused, the next leader bumps it
            self.term = term
            self.leading.set()
            log.info("leader %s: %s holds term %d", self.job, self.node, term)
            if self._on_elected is not None:
                result = self._on_elected()
                if result is not None:
                    await result
            return

    def _lost(self) -> None:
        self.term = None
        self.leading.clear()
        if self._claim_task is not None:
            self._claim_task.cancel()

    async def fence(self, conn: asyncpg.Connection) -> bool:
        """Inside a leader write's transaction: still this job's leader (the term is ours,
        and our lock connection holds the lock)? See the module docstring."""
        term = self.term
        if term is None or not self.election.is_leader:
            return False
        if not await PgStore.term_is(conn, self.job, term):
            log.warning("leader %s: %s fenced (term %d superseded)", self.job, self.node, term)
            return False
        if not await self.election.holds_lock(conn):
            log.warning("leader %s: %s fenced (lock lost)", self.job, self.node)
            return False
        return True
