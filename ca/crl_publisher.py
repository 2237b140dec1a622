"""Keeps one signed, fresh CRL per issuing generation (R-REV-1).

- Re-signed on a schedule (`crl.resign_interval`, well before `crl.validity` runs out) even when
  nothing was revoked, and after every revocation. Revocations that arrive while a CRL is being
  signed are coalesced into one more signing, and revocation-triggered signings are at least
  `resign_min_gap` apart, so a bulk revocation in batches costs at most one signing per gap.
- Each stored CRL records the revocation sequence it covers (R-FAULT-1). At start, and on every
  tick, a CRL behind the store's sequence is re-signed (revocations the officer CLI committed
  while the daemon was down, or just before a crash), and the CRL endpoint waits for that
  re-sign before serving: a served CRL is never older than the store.
- The CRL number only grows and is persisted with the CRL (`crl_state`), so a restart never
  reuses or lowers it.
- Building runs in a worker thread, and the DER is encoded by hand (ca.crl) with each entry's
  bytes kept between builds: a re-sign at 100k entries costs ~15 ms, the first build ~0.25 s,
  and no single call holds the GIL long enough to stall the loop.
- On a cluster (PostgreSQL, issue 13) only the elected leader (`leader`, a
  ca.leadership.LeaderJob) signs; the other nodes serve the CRL the leader stored,
  reloaded on every tick and while a request waits for a CRL covering a revocation. The save
  is fenced inside its transaction (the leader's term and lock, ca.leadership), and the store
  keeps a number only when it is above the stored one: a refused CRL (a deposed leader, or
  one racing the new one) is discarded and the stored one served, so the CRL numbers served
  anywhere strictly increase and one number always means one CRL.
- Entries of certificates past their notAfter are dropped when `crl.drop_expired` is set
  (RFC 5280 §3.3 allows it; a retired generation's CRL shrinks to empty as its certificates
  expire, and keeps being signed until the last one has).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

import structlog
from cryptography.hazmat.primitives import hashes

from ca.config import CaConfig
from ca.crl import EntryEncoder, build_crl_from_rows, crl_cache_headers, crl_etag
from ca.issuers import Issuers
from ca.leadership import LeaderJob
from ca.storage import CaStore
from ca.store import CertRecord
from common.sqlite import store_error
from policy.clock import Clock

_log = structlog.get_logger("ca.crl")


@dataclass(frozen=True)
class PublishedCrl:
    """A signed CRL with what HTTP and monitoring need to know about it."""

    generation: str
    number: int
    this_update: datetime
    next_update: datetime
    der: bytes
    entries: int
    revocation_seq: int = 0  # every revocation up to this sequence is on it

    @functools.cached_property
    def etag(self) -> str:
        """The DER's ETag, hashed once per signed CRL rather than once per request."""
        return crl_etag(self.der)

    def headers(self, now: datetime) -> dict[str, str]:
        """ETag, Last-Modified, Expires and a Cache-Control that never passes nextUpdate."""
        return crl_cache_headers(self.der, self.this_update, self.next_update, now,
                                 etag=self.etag)


class CrlPublisher:
    """Signs, stores and serves the CRL of every generation."""

    def __init__(self, config: CaConfig, clock: Clock, store: CaStore, issuers: Issuers,
                 tick_seconds: float = 5.0, resign_min_gap: float = 1.0,
                 leader: LeaderJob | None = None) -> None:
        self._config = config
        self.leader = leader
        self._clock = clock
        self._store = store
        self._issuers = issuers
        self._tick_seconds = tick_seconds
        self._resign_min_gap = resign_min_gap
        self._last_resign = 0.0  # time.monotonic() of the last revocation-triggered signing
        self.signings = 0  # how many CRLs this process signed (bench/faults.py reports it)
        self._current: dict[str, PublishedCrl] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._dirty: set[str] = set()
        self._resign_task: asyncio.Task[None] | None = None
        self._elected_task: asyncio.Task[None] | None = None
        self.on_publish: list[Callable[[PublishedCrl], None]] = []

    def current(self, generation: str) -> PublishedCrl | None:
        """The newest CRL of a generation, or None for an unknown generation."""
        return self._current.get(generation)

    async def load(self, generation: str) -> PublishedCrl | None:
        """The CRL of `generation` last persisted (by this or another process)."""
        stored = await self._store.load_crl(generation)
        if stored is None:
            return None
        number, this_update, next_update, der, seq = stored
        return PublishedCrl(generation, number, this_update, next_update, der,
                            _count_entries(der), seq)

    async def start(self) -> None:
        """Load stored CRLs and sign fresh ones where they are missing or due."""
        for name in self._issuers.generations:
            published = await self.load(name)
            if published is not None:
                self._set(published)
        try:
            await self.tick()
        except Exception as exc:
            named = store_error(exc, "CA database")
            if named is None or not self._current:
                raise
            # A full store at start: serve the stored CRLs; the schedule retries (R-FAULT-5).
            _log.error("crl_resign_failed", error=named.code, message=str(named))

    @property
    def signs(self) -> bool:
        """Whether this node signs CRLs: always on one node, only the leader on a cluster."""
        return self.leader is None or self.leader.is_leader

    async def follow(self) -> None:
        """A follower's tick: serve the newest CRL the leader stored."""
        for name in list(self._issuers.generations):
            stored = await self.load(name)
            current = self._current.get(name)
            if stored is not None and (current is None or stored.number > current.number):
                self._set(stored)

    def leadership_changed(self) -> None:
        """Called on election: sign what is due (missing, stale, behind the store's
        revocations) at once rather than at the next tick."""
        self._elected_task = asyncio.create_task(self._tick_logged(), name="crl-elected")

    async def _tick_logged(self) -> None:
        """One tick; a failure is logged and the next tick retries."""
        try:
            await self.tick()
        except Exception as exc:
            named = store_error(exc, "CA database")
            if named is None:
                _log.exception("crl_schedule_failed")
            else:  # e.g. a full disk: one line naming it; the old CRL is still served
                _log.error("crl_schedule_failed", error=named.code, message=str(named))

    async def tick(self) -> None:
        """Re-sign every CRL that is due (by schedule), dirty (after revocations) or behind
        the store's revocation sequence (R-FAULT-1); a follower reloads instead."""
        if not self.signs:
            self._dirty.clear()
            await self.follow()
            return
        now = self._clock.now()
        last_seq = await self._store.last_revocation_seq()
        for name in list(self._issuers.generations):
            published = self._current.get(name)
            if published is None:  # e.g. elected before start() loaded them: not due yet
                published = await self.load(name)
                if published is not None:
                    self._set(published)
            due = (published is None
                   or now >= published.this_update + self._config.crl_resign_interval
                   or now < published.this_update
                   or published.revocation_seq < last_seq)
            if due or name in self._dirty:
                await self.publish(name)

    async def covering(self, generation: str, seq: int, wait_seconds: float = 3.0,
                       ) -> PublishedCrl | None:
        """The CRL of `generation`, re-signed first when it does not cover revocation `seq`
        yet (R-FAULT-1). Waits at most `wait_seconds`; if signing cannot finish (e.g. the store is
        full) the last signed CRL is served: still valid, and OCSP already says "revoked"."""
        published = self._current.get(generation)
        if published is None or published.revocation_seq >= seq:
            return published
        if not self.signs:  # the leader signs it; reload until it is stored
            deadline = time.monotonic() + wait_seconds
            while time.monotonic() < deadline:
                with contextlib.suppress(Exception):
                    await self.follow()
                published = self._current.get(generation)
                if published is not None and published.revocation_seq >= seq:
                    break
                await asyncio.sleep(0.05)
            return self._current.get(generation)
        self._dirty.add(generation)
        if self._resign_task is None or self._resign_task.done():
            self._resign_task = asyncio.create_task(self._resign_dirty(), name="crl-resign")
        # A failure is logged by _resign_dirty; a timeout leaves the signing running.
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._resign_task), wait_seconds)
        return self._current.get(generation)

    async def on_revoked(self, records: list[CertRecord]) -> None:
        """Revocation listener: schedule a re-sign of the affected generations.

        Not awaited by the revoker: OCSP already answers "revoked" and the revocation call
        returns at once; a burst of revocations is folded into the signing that follows.
        """
        self._dirty.update(record.generation for record in records)
        if self._resign_task is None or self._resign_task.done():
            self._resign_task = asyncio.create_task(self._resign_dirty(), name="crl-resign")

    async def _resign_dirty(self) -> None:
        while self._dirty:
            # Revocations keep arriving during a bulk run: sign at most once per gap.
            await asyncio.sleep(max(0.0, self._last_resign + self._resign_min_gap
                                    - time.monotonic()))
            if not self._dirty:  # the schedule (tick) signed it meanwhile
                break
            if not self.signs:  # a follower: the leader signs; serve what it stored
                self._dirty.clear()
                with contextlib.suppress(Exception):
                    await self.follow()
                break
            name = sorted(self._dirty)[0]
            self._last_resign = time.monotonic()
            try:
                await self.publish(name)  # discards `name` from the dirty set when it starts
            except Exception as exc:
                named = store_error(exc, "CA database")
                if named is not None:  # one line naming the cause, no traceback
                    _log.error("crl_resign_failed", generation=name, error=named.code,
                               message=str(named))
                else:
                    _log.exception("crl_resign_failed", generation=name)
                self._dirty.discard(name)  # the schedule retries every tick

    async def settle(self) -> None:
        """Wait until every scheduled re-sign is done (tests, shutdown)."""
        while self._resign_task is not None and not self._resign_task.done():
            await self._resign_task

    async def publish(self, generation: str) -> PublishedCrl:
        """Sign and persist a new CRL for `generation` with the next CRL number."""
        lock = self._locks.setdefault(generation, asyncio.Lock())
        async with lock:
            self._dirty.discard(generation)
            now = self._clock.now().replace(microsecond=0)
            issuer = self._issuers.get(generation)
            number = await self._store.crl_number(generation) + 1
            # Read before the entries: the CRL then covers at least this sequence.
            seq = await self._store.last_revocation_seq()
            expired_before = now if self._config.crl_drop_expired else None
            rows = await self._store.revoked_entries(generation, expired_before=expired_before)
            next_update = now + self._config.crl_validity
            der = await asyncio.to_thread(
                _build, issuer.certificate, issuer.signer, rows, number, now, next_update
            )
            # Persisted before it is served, so a restart never reuses its number.
            fence = None if self.leader is None else self.leader.fence
            if not await self._store.save_crl(generation, number, now, next_update, der, seq,
                                              fence=fence):
                # Another node stored this number first (a leader handover), or this node
                # was deposed meanwhile (fenced): serve the stored CRL, never a second CRL
                # with the same number.
                stored = await self.load(generation)
                _log.warning("crl_superseded", generation=generation, number=number)
                if stored is None:
                    raise RuntimeError("a refused CRL save left no stored CRL")
                self._set(stored)
                return stored
            self.signings += 1
            published = PublishedCrl(generation, number, now, next_update, der, len(rows), seq)
            self._set(published)
            _log.info("crl_published", generation=generation, number=number,
                      entries=len(rows), next_update=next_update.isoformat())
            return published

    def _set(self, published: PublishedCrl) -> None:
        self._current[published.generation] = published
        for callback in self.on_publish:
            callback(published)

    async def run(self) -> None:
        """The schedule: check every `tick_seconds` whether a CRL is due, until cancelled."""
        while True:
            await asyncio.sleep(self._tick_seconds)
            await self._tick_logged()


# One EntryEncoder per issuer certificate, kept between builds: a re-sign then only encodes
# the entries that are new since the last one (see ca.crl.EntryEncoder). Module-level because
# _build runs in worker threads; keyed by the certificate's fingerprint, so a renewed issuer
# certificate starts afresh. A handful of generations, so the dict itself stays small.
_ENCODERS: dict[bytes, EntryEncoder] = {}
_ENCODERS_LOCK = threading.Lock()


def _build(issuer_cert, signer, rows, number, this_update, next_update) -> bytes:  # type: ignore[no-untyped-def]
    """Sign the CRL of `rows` (as Store.revoked_entries returns them) with this issuer's cache."""
    fingerprint = issuer_cert.fingerprint(hashes.SHA256())
    with _ENCODERS_LOCK:
        encoder = _ENCODERS.setdefault(fingerprint, EntryEncoder())
    return build_crl_from_rows(issuer_cert, signer, rows, number, this_update, next_update,
                               encoder=encoder)


def _count_entries(der: bytes) -> int:
    from cryptography import x509

    return len(x509.load_der_x509_crl(der))
