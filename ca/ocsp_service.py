"""The OCSP responder's state in the daemon (R-REV-2): who is good, revoked or unknown, and
pre-signed responses for nonce-less requests.

- Status index: every signed certificate's serial -> (generation, revocation), loaded at
  start-up and updated by the issuance and revocation listeners, so a certificate has a
  correct answer from the moment it is issued. A serial missing from the index is looked up in
  the store before it is called unknown (the officer CLI may have issued it in another
  process a moment ago); a serial we never issued is never "good".
- Cache: a response to a nonce-less single-CertID request is kept and served again until half
  of its validity (`ocsp.response_validity`) has passed; a background sweep re-signs entries
  before then. Every revocation drops the serial's cached responses at once. With a nonce, the
  response is signed fresh and echoes the nonce.
- Responder certificates carry ocsp-nocheck, so they are short-lived; `renew_responders`
  re-issues one `ocsp.responder_renew_before_days` before it expires.
- On a cluster (PostgreSQL, issue 13) renewing is a leader job (`responder_leader`): the
  leader issues the new responder and publishes it (certificate, and the encrypted key file
  for file keys) in `ocsp_responders`, fenced by its term, in the transaction that also
  decides that it is due; every node installs the newest published responder at the NOTIFY
  (and on every maintenance tick) and signs with it from then on, without a restart.
- The cache stays per node and every node re-signs its own cached answers, off the event loop
  (README, "CA cluster": why this is not a leader job).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections import OrderedDict
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog
from cryptography.hazmat.primitives import serialization

from ca.config import CaConfig
from ca.issuers import Issuers
from ca.leadership import LeaderJob
from ca.metrics import CaMetrics
from ca.ocsp import (
    UNKNOWN,
    Answer,
    CertId,
    CertStatus,
    IssuerIdentity,
    MalformedRequest,
    ParsedRequest,
    Responder,
    build_response,
    find_issuer,
    malformed_response,
    parse_request,
    try_later_response,
)
from ca.storage import CaStore
from ca.store import CertRecord
from ca.store_pg import PgStore
from common.sqlite import from_epoch
from keys.errors import KeyCustodyError
from keys.hierarchy import Hierarchy
from policy.clock import Clock

_log = structlog.get_logger("ca.ocsp")
MAX_CACHED_RESPONSES = 200_000


@dataclass(frozen=True)
class _Entry:
    generation: str
    revoked_at: datetime | None
    reason: str | None


@dataclass(frozen=True)
class _Cached:
    answer: OcspAnswer
    cert_id: CertId
    issuer: IssuerIdentity
    status: CertStatus


@dataclass(frozen=True)
class OcspAnswer:
    """A DER OCSPResponse and, for cacheable ones, its validity (for HTTP caching headers)."""

    der: bytes
    this_update: datetime | None = None
    next_update: datetime | None = None

    @functools.cached_property
    def etag(self) -> str:
        """The HTTP ETag of a cacheable answer, hashed once per pre-signed answer."""
        return f'"{hashlib.sha256(self.der).hexdigest()[:32]}"'


# A parsed request, the issuer of each CertID, and the serials to look up in the store.
PendingLookup = tuple[ParsedRequest, list[IssuerIdentity | None], list[int]]


class OcspService:
    """Answers OCSP requests for every issuing generation."""

    def __init__(self, config: CaConfig, clock: Clock, store: CaStore, issuers: Issuers,
                 metrics: CaMetrics, hierarchy: Hierarchy | None = None) -> None:
        self._config = config
        self._clock = clock
        self._store = store
        self._issuers = issuers
        self._metrics = metrics
        self._hierarchy = hierarchy
        self._index: dict[int, _Entry] = {}
        # request DER -> answer, and serial -> the request DERs cached for it (invalidation)
        self._cache: OrderedDict[bytes, _Cached] = OrderedDict()
        self._keys_of: dict[int, set[bytes]] = {}
        self._counters: dict[str, Any] = {}
        self._revision = 0  # bumped by every issuance and revocation
        self.responder_leader: LeaderJob | None = None  # set on a cluster (issue 13)
        self._responder_lock = asyncio.Lock()
        self._elected_tasks: set[asyncio.Task[None]] = set()
        self._load_responders()

    def _load_responders(self) -> None:
        self._responders = [
            Responder(g.ocsp_certificate, g.ocsp_signer, g.certificate)
            for g in self._issuers.generations.values()
        ]
        self._generation_of: dict[IssuerIdentity, str] = {
            responder.issuer: name
            for responder, name in zip(self._responders, self._issuers.generations, strict=True)
        }
        # R-KEY-1: responder keys in a token are signed with from a worker thread.
        self._signs_off_loop = any(getattr(g.ocsp_signer, "signs_off_loop", False)
                                   for g in self._issuers.generations.values())
        self._cache.clear()
        self._keys_of = {}

    async def start(self) -> None:
        """Load the status of every signed certificate."""
        self._index = {
            int(serial, 16): _Entry(generation, from_epoch(at) if at is not None else None, reason)
            for serial, generation, at, reason in await self._store.status_index()
        }

    # -- listeners -------------------------------------------------------------------------

    async def on_issued(self, record: CertRecord) -> None:
        """A new certificate is good from this moment."""
        serial = int(record.serial, 16)
        self._index[serial] = _Entry(record.generation, None, None)
        self._revision += 1
        self._drop(serial)

    async def on_revoked(self, records: list[CertRecord]) -> None:
        """Revoked certificates: update the index and drop their cached responses at once."""
        for record in records:
            serial = int(record.serial, 16)
            self._index[serial] = _Entry(record.generation, record.revoked_at,
                                         record.revocation_reason)
            self._revision += 1
            self._drop(serial)

    def _drop(self, serial: int) -> None:
        for key in self._keys_of.pop(serial, ()):
            self._cache.pop(key, None)

    # -- answering -------------------------------------------------------------------------

    async def respond(self, request_der: bytes) -> OcspAnswer:
        """The DER response to a DER request; malformed input gets malformedRequest."""
        step = self.try_respond(request_der)
        return step if isinstance(step, OcspAnswer) else await self.complete(request_der, step)

    async def complete(self, request_der: bytes, lookup: PendingLookup) -> OcspAnswer:
        """Answer a request `try_respond` could not: look its serials up first."""
        request, issuers, missing = lookup
        for serial in missing:
            await self._load_from_store(serial)
        if not self._signs_off_loop:
            return self._answer(request_der, request, issuers)
        # R-KEY-1: the token signs in a worker thread; a revocation or issuance while it
        # does keeps the answer out of the cache (it may describe the moment before).
        revision = self._revision
        answers, now, next_update = self._statuses(request, issuers)
        try:
            der = await asyncio.to_thread(build_response, answers, self._responders, now,
                                          next_update, request.nonce)
        except KeyCustodyError as exc:
            return self._unavailable(request_der, exc)
        return self._finish(request_der, request, issuers, answers, der, now, next_update,
                            cache=revision == self._revision)

    def try_respond(self, request_der: bytes) -> OcspAnswer | PendingLookup:
        """The answer, without waiting, when no store lookup is needed (malformed input gets
        malformedRequest); else what `complete` must look up.

        A request seen before (same bytes, so no nonce) is answered from the cache without
        parsing it again: parsing costs several times the signature.
        """
        cached = self._cache.get(request_der)
        if cached is not None and self._fresh(cached.answer):
            self._cache.move_to_end(request_der)
            self._count(cached.status.status)
            return cached.answer
        try:
            request = parse_request(request_der)
        except MalformedRequest:
            self._count("malformed")
            return OcspAnswer(malformed_response())
        issuers = [find_issuer(cert_id, self._generation_of) for cert_id in request.cert_ids]
        # Serials of ours that the index does not know (yet).
        missing = [cert_id.serial_number
                   for cert_id, issuer in zip(request.cert_ids, issuers, strict=True)
                   if issuer is not None and cert_id.serial_number not in self._index]
        if missing or self._signs_off_loop:
            return request, issuers, missing
        return self._answer(request_der, request, issuers)

    def _answer(self, request_der: bytes, request: ParsedRequest,
                issuers: list[IssuerIdentity | None]) -> OcspAnswer:
        # Nothing here awaits, so a revocation cannot slip between lookup and signing.
        answers, now, next_update = self._statuses(request, issuers)
        try:
            der = build_response(answers, self._responders, now, next_update, request.nonce)
        except KeyCustodyError as exc:
            return self._unavailable(request_der, exc)
        return self._finish(request_der, request, issuers, answers, der, now, next_update)

    def _statuses(self, request: ParsedRequest, issuers: list[IssuerIdentity | None],
                  ) -> tuple[list[Answer], datetime, datetime]:
        answers: list[Answer] = [
            (cert_id, issuer, self._status(cert_id.serial_number, issuer))
            for cert_id, issuer in zip(request.cert_ids, issuers, strict=True)
        ]
        now = self._clock.now().replace(microsecond=0)
        return answers, now, now + self._config.ocsp_response_validity

    def _unavailable(self, request_der: bytes, exc: KeyCustodyError) -> OcspAnswer:
        """R-KEY-1: the responder key cannot sign now. A pre-signed answer to the same
        request is served until its nextUpdate (not only its first half); otherwise tryLater,
        never an unsigned or made-up status."""
        _log.error("ocsp_signing_unavailable", error=str(exc))
        cached = self._cache.get(request_der)
        now = self._clock.now()
        if (cached is not None and cached.answer.next_update is not None
                and cached.answer.this_update is not None
                and cached.answer.this_update <= now < cached.answer.next_update):
            self._count("cached_while_unavailable")
            return cached.answer
        self._count("try_later")
        return OcspAnswer(try_later_response())

    def _finish(self, request_der: bytes, request: ParsedRequest,
                issuers: list[IssuerIdentity | None], answers: list[Answer], der: bytes,
                now: datetime, next_update: datetime, *, cache: bool = True) -> OcspAnswer:
        if not any(issuer is not None for issuer in issuers):
            self._count("unauthorized")
            return OcspAnswer(der)
        for _, _, status in answers:
            self._count(status.status)
        cacheable = cache and request.nonce is None and len(request.cert_ids) == 1
        if not cacheable or answers[0][2].status == "unknown":
            # Unknown answers are not kept: the serial may be issued a moment later by the
            # officer CLI in another process, which this cache would not hear of.
            return OcspAnswer(der)
        answer = OcspAnswer(der, now, next_update)
        cert_id, issuer, status = answers[0]
        assert issuer is not None  # checked above
        self._remember(request_der, _Cached(answer, cert_id, issuer, status))
        return answer

    def _remember(self, key: bytes, cached: _Cached) -> None:
        self._cache[key] = cached
        self._cache.move_to_end(key)
        self._keys_of.setdefault(cached.cert_id.serial_number, set()).add(key)
        while len(self._cache) > MAX_CACHED_RESPONSES:
            old_key, old = self._cache.popitem(last=False)
            self._keys_of.get(old.cert_id.serial_number, set()).discard(old_key)

    def _count(self, status: str) -> None:
        counter = self._counters.get(status)
        if counter is None:
            counter = self._counters[status] = self._metrics.ocsp_responses.labels(status=status)
        counter.inc()

    def _fresh(self, answer: OcspAnswer) -> bool:
        """Served from cache only in the first half of its validity."""
        if answer.this_update is None:
            return False
        now = self._clock.now()
        return answer.this_update <= now < answer.this_update + self._half_life()

    def _half_life(self) -> timedelta:
        return self._config.ocsp_response_validity / 2

    def _status(self, serial: int, issuer: IssuerIdentity | None) -> CertStatus:
        entry = self._index.get(serial)
        if issuer is None or entry is None or entry.generation != self._generation_of[issuer]:
            return UNKNOWN
        return self._entry_status(entry)

    def _entry_status(self, entry: _Entry) -> CertStatus:
        if entry.revoked_at is not None and entry.revoked_at <= self._clock.now():
            return CertStatus.revoked(entry.revoked_at, entry.reason or "unspecified")
        return CertStatus.good()

    async def _load_from_store(self, serial: int) -> None:
        record = await self._store.get(format(serial, "x"))
        if record is not None and record.der is not None:
            self._index[serial] = _Entry(record.generation, record.revoked_at,
                                         record.revocation_reason)

    # -- background ------------------------------------------------------------------------

    def refresh_cache(self) -> int:
        """Re-sign cached responses that are close to their half-life; returns how many.

        Runs between requests (no await inside), so statuses cannot change meanwhile. The
        daemon uses `refresh_cache_off_loop`, which signs in a worker thread.
        """
        due, now, next_update = self._due_for_refresh()
        signed = [build_response([(c.cert_id, c.issuer, status)], self._responders, now,
                                 next_update) for _, c, status in due]
        return self._install_refreshed(due, signed, now, next_update)

    async def refresh_cache_off_loop(self) -> int:
        """`refresh_cache` with the signatures made in a worker thread, so a large cache
        never stalls the loop. The statuses are read on the loop; an answer is put back only
        when its entry is still the one read (a revocation or issuance meanwhile dropped it,
        and the stale answer is discarded: never a "good" after a "revoked")."""
        due, now, next_update = self._due_for_refresh()
        if not due:
            return 0
        responders = self._responders
        items = [(c.cert_id, c.issuer, status) for _, c, status in due]
        signed = await asyncio.to_thread(
            lambda: [build_response([item], responders, now, next_update) for item in items])
        if responders is not self._responders:  # a responder was renewed meanwhile
            return 0
        return self._install_refreshed(due, signed, now, next_update)

    def _due_for_refresh(self) -> tuple[list[tuple[bytes, _Cached, CertStatus]], datetime,
                                         datetime]:
        now = self._clock.now().replace(microsecond=0)
        soon = now + timedelta(minutes=2)
        due = []
        for key, cached in self._cache.items():
            this_update = cached.answer.this_update
            if this_update is not None and soon < this_update + self._half_life():
                continue
            due.append((key, cached, self._status(cached.cert_id.serial_number, cached.issuer)))
        return due, now, now + self._config.ocsp_response_validity

    def _install_refreshed(self, due: list[tuple[bytes, _Cached, CertStatus]],
                           signed: list[bytes], now: datetime, next_update: datetime) -> int:
        refreshed = 0
        for (key, cached, status), der in zip(due, signed, strict=True):
            if self._cache.get(key) is not cached:
                continue  # dropped (revoked, issued) or replaced since it was read
            self._cache[key] = _Cached(OcspAnswer(der, now, next_update), cached.cert_id,
                                       cached.issuer, status)  # same key: index unchanged
            refreshed += 1
        return refreshed

    def renew_responders(self) -> list[str]:
        """Re-issue responder certificates that expire within the configured margin."""
        if self._hierarchy is None:
            return []
        now = self._clock.now()
        renewed = []
        for name, generation in list(self._issuers.generations.items()):
            if not self._due(generation, now):
                continue
            fresh = self._hierarchy.issue_ocsp_responder(
                name, now, self._config.ocsp_responder_validity
            )
            self._issuers.refresh_responder(name, fresh)
            renewed.append(name)
            _log.info("ocsp_responder_renewed", generation=name,
                      not_after=fresh.ocsp_certificate.not_valid_after_utc.isoformat())
        if renewed:
            self._load_responders()
        return renewed

    # -- responders on a cluster (issue 13) -------------------------------------------------

    async def maintain_responders(self) -> list[str]:
        """Renew the responder certificates that are due: on one node directly
        (`renew_responders`, in a worker thread); on a cluster, install what the leader
        published, then, on the leader only, renew and publish (fenced)."""
        if self.responder_leader is None or not isinstance(self._store, PgStore):
            return await asyncio.to_thread(self.renew_responders)
        async with self._responder_lock:
            await self._install_published()
            if not self.responder_leader.is_leader:
                return []
            return await self._renew_and_publish()

    def leadership_changed(self) -> None:
        """On election: renew what a dead leader left due, at once (not at the next tick)."""
        task = asyncio.create_task(self._maintain_logged(), name="ocsp-responders-elected")
        self._elected_tasks.add(task)
        task.add_done_callback(self._elected_tasks.discard)

    async def _maintain_logged(self) -> None:
        try:
            await self.maintain_responders()
        except Exception:  # the minute tick retries
            _log.exception("ocsp_maintenance_failed")

    async def install_published(self) -> list[str]:
        """Install the newest responders the leader published (the NOTIFY, a tick, the
        start): the generations whose responder changed on this node."""
        async with self._responder_lock:
            return await self._install_published()

    async def _install_published(self) -> list[str]:
        assert isinstance(self._store, PgStore)
        assert self._hierarchy is not None
        published = await self._store.newest_responders()
        changed = []
        for name, (serial, certificate, key_pem, not_after) in published.items():
            generation = self._issuers.generations.get(name)
            if (generation is None or _serial(generation.ocsp_certificate) == serial
                    or not_after <= generation.ocsp_certificate.not_valid_after_utc):
                continue  # the same, or older than ours (an unpublished renewal's, above)
            try:
                fresh = await asyncio.to_thread(self._hierarchy.install_ocsp_responder, name,
                                                certificate, key_pem)
            except KeyCustodyError as exc:  # keep signing with the one we have; logged
                _log.error("ocsp_responder_install_failed", generation=name, error=str(exc))
                continue
            self._issuers.refresh_responder(name, fresh)
            changed.append(name)
            _log.info("ocsp_responder_installed", generation=name, serial=serial)
        if changed:
            self._load_responders()
        return changed

    async def _renew_and_publish(self) -> list[str]:
        leader, hierarchy, store = self.responder_leader, self._hierarchy, self._store
        assert leader is not None
        assert hierarchy is not None
        assert isinstance(store, PgStore)
        now = self._clock.now()
        renewed = []
        for name in [n for n, g in self._issuers.generations.items() if self._due(g, now)]:

            issued: list[Any] = []  # what the token or the key folder holds now

            async def work(conn: Any, name: str = name, issued: list[Any] = issued) -> Any:
                # The decision and the publication in one fenced transaction: no earlier
                # leader's renewal can commit after this check (its term is superseded).
                newest = await conn.fetchrow(
                    "SELECT serial, not_after FROM ocsp_responders WHERE generation = $1"
                    " ORDER BY not_after DESC, issued_at DESC LIMIT 1", name)
                current = self._issuers.generations[name].ocsp_certificate
                if newest is not None and newest[0] != _serial(current) \
                        and from_epoch(newest[1]) > current.not_valid_after_utc:
                    return None  # a newer one was published meanwhile: installed next round
                term = await PgStore.fenced_term(conn, leader.job)
                fresh = await asyncio.to_thread(hierarchy.issue_ocsp_responder, name, now,
                                                self._config.ocsp_responder_validity)
                issued.append(fresh)
                key_pem = await asyncio.to_thread(hierarchy.responder_key_file, name)
                await PgStore.insert_responder(
                    conn, generation=name, serial=_serial(fresh.ocsp_certificate),
                    certificate=fresh.ocsp_certificate.public_bytes(serialization.Encoding.DER),
                    key_pem=key_pem, not_after=fresh.ocsp_certificate.not_valid_after_utc,
                    now=now, node=leader.node, term=term, actor="ca-leader")
                return fresh

            try:
                led, fresh = await store.fenced(leader.fence, work, idle_timeout_ms=10_000)
            except Exception:
                if issued:
                    # Issued but not published (the commit failed): the key folder or the
                    # token holds the new key now, so sign with its certificate; the next
                    # leader's renewal, newer, reaches every node.
                    self._issuers.refresh_responder(name, issued[0])
                    self._load_responders()
                    _log.error("ocsp_responder_unpublished", generation=name)
                raise
            if not led:
                _log.warning("ocsp_responder_renewal_fenced", generation=name)
                break
            if fresh is None:
                continue
            self._issuers.refresh_responder(name, fresh)
            renewed.append(name)
            _log.info("ocsp_responder_renewed", generation=name, published=True,
                      not_after=fresh.ocsp_certificate.not_valid_after_utc.isoformat())
        if renewed:
            self._load_responders()
        return renewed

    def _due(self, generation: Any, now: datetime) -> bool:
        expires = generation.ocsp_certificate.not_valid_after_utc
        issuer_expires = generation.certificate.not_valid_after_utc
        return not (expires - now > self._config.ocsp_responder_renew_before
                    or expires >= issuer_expires)

    async def run(self, tick: timedelta = timedelta(minutes=1)) -> None:
        """Now and every `tick`: re-sign cached responses (off the loop) and renew
        responder certificates."""
        while True:
            # Separately: a token that cannot sign now must not hold up the renewal.
            for step in (self.refresh_cache_off_loop, self.maintain_responders):
                try:
                    await step()
                except Exception:
                    _log.exception("ocsp_maintenance_failed", step=step.__name__)
            await asyncio.sleep(tick.total_seconds())


def _serial(certificate: Any) -> str:
    return format(certificate.serial_number, "x")
