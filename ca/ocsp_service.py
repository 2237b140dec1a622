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

from ca.config import CaConfig
from ca.issuers import Issuers
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

        Runs between requests (no await inside), so statuses cannot change meanwhile.
        """
        now = self._clock.now().replace(microsecond=0)
        soon = now + timedelta(minutes=2)
        refreshed = 0
        for key, cached in list(self._cache.items()):
            this_update = cached.answer.this_update
            if this_update is not None and soon < this_update + self._half_life():
                continue
            status = self._status(cached.cert_id.serial_number, cached.issuer)
            next_update = now + self._config.ocsp_response_validity
            der = build_response([(cached.cert_id, cached.issuer, status)], self._responders,
                                 now, next_update)
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
            expires = generation.ocsp_certificate.not_valid_after_utc
            issuer_expires = generation.certificate.not_valid_after_utc
            margin = self._config.ocsp_responder_renew_before
            if expires - now > margin or expires >= issuer_expires:
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

    async def run(self, tick: timedelta = timedelta(minutes=1)) -> None:
        """Now and every `tick`: re-sign cached responses and renew responder certificates."""
        while True:
            try:
                self.refresh_cache()
                await asyncio.to_thread(self.renew_responders)
            except Exception:
                _log.exception("ocsp_maintenance_failed")
            await asyncio.sleep(tick.total_seconds())
