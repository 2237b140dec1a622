"""Recording, once per cluster, that a cutover took effect (R-CUT-1, issue 13).

A cutover itself needs no author: it is a configured date rule that every node applies by
comparing two dates per request (policy.cutover), so every node refuses the same
certificates at the same instant whatever happens to the leader. What must happen exactly
once is its record: the audit entry "cutover.effective" with the number of users it
affected at that moment, which the campaign's officers and the auditors read. That is this
leader job: the `cutovers` leader records each cutover whose date has passed, in a fenced
transaction whose insert into `cutover_effects` (primary key: the cutover's name) makes a
second record impossible; a leader that dies before recording leaves it to the next leader,
which records it as soon as it is elected.
"""

from __future__ import annotations

import asyncio
from typing import Any

import structlog

from ca.campaign import campaign_status
from ca.config import CaConfig
from ca.leadership import LeaderJob
from ca.store_pg import PgStore
from common.sqlite import store_error
from policy.clock import Clock

_log = structlog.get_logger("ca.cutover")


class CutoverRecorder:
    """The `cutovers` leader job of one node."""

    def __init__(self, config: CaConfig, clock: Clock, store: PgStore, leader: LeaderJob,
                 tick_seconds: float = 5.0) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self.leader = leader
        self._tick_seconds = tick_seconds
        self._lock = asyncio.Lock()
        self.recorded = 0  # cutovers this node recorded (tests, logs)

    async def tick(self) -> list[str]:
        """On the leader: record every cutover whose date has passed and that no leader has
        recorded yet; the names recorded now (empty on a follower)."""
        async with self._lock:
            if not self.leader.is_leader:
                return []
            now = self._clock.now()
            due = [c for c in self._config.cutovers if c.effective_at <= now]
            if not due:
                return []
            already = await self._store.recorded_cutovers()
            pending = [c for c in due if c.name not in already]
            if not pending:
                return []
            certificates = await self._store.list_certificates()
            done = []
            for cutover in pending:
                affected = campaign_status(cutover, certificates).affected

                async def work(conn: Any, name: str = cutover.name,
                               effective_at: Any = cutover.effective_at,
                               affected: int = affected) -> bool:
                    return await PgStore.record_cutover(
                        conn, name=name, effective_at=effective_at, affected=affected,
                        now=now, node=self.leader.node,
                        term=await PgStore.fenced_term(conn, self.leader.job),
                        actor="ca-leader")

                led, recorded = await self._store.fenced(self.leader.fence, work)
                if not led:
                    _log.warning("cutover_record_fenced", cutover=cutover.name)
                    break
                if recorded:
                    self.recorded += 1
                    done.append(cutover.name)
                    _log.info("cutover_effective", cutover=cutover.name, affected=affected)
            return done

    def leadership_changed(self) -> None:
        """On election: record what a dead leader left (at once, not at the next tick)."""
        task = asyncio.create_task(self._tick_logged(), name="cutover-elected")
        _PENDING.add(task)
        task.add_done_callback(_PENDING.discard)

    async def _tick_logged(self) -> None:
        try:
            await self.tick()
        except Exception as exc:
            named = store_error(exc, "CA database")
            if named is None:
                _log.exception("cutover_record_failed")
            else:
                _log.error("cutover_record_failed", error=named.code, message=str(named))

    async def run(self) -> None:
        """Every `tick_seconds`, until cancelled."""
        while True:
            await asyncio.sleep(self._tick_seconds)
            await self._tick_logged()


_PENDING: set[asyncio.Task[Any]] = set()  # election-time ticks, referenced until done
