"""Server-side sessions (R-SES-1..3, R-GW-4), shared by every gateway process through the
store (issue 12), with a per-process cache on the hot path.

* The cookie holds a random 256-bit token; the store keys sessions by its SHA-256, so the
  table holds nothing a cookie could be made from.
* One active session per user (R-SES-2): creating one ends the user's previous session
  ("re-login", §3.1 note); the store's UNIQUE user_id keeps it so across processes.
* Bound to the SHA-256 fingerprint of the certificate it was created with; every request
  compares the fingerprint of the connection's certificate (R-GW-4).
* 30 minutes without an operation end it (R-SES-1, `policy.session`), measured with the
  injected clock; a 12-hour absolute limit too.
* Each session carries its own CSRF token (R-SES-3).
* Ending a session (logout, re-login, revocation, lock, timeout, a helpdesk action) deletes
  its row and appends a session event (token hash, certificate fingerprint, reason) in the
  same transaction. Every process follows the events (a 0.25 s poll; on PostgreSQL also
  woken by NOTIFY) and drops the session from its cache and cancels its WebSocket relays.
  The event is also the tombstone: the window that still holds the cookie is told why, once,
  and only with the owner's certificate (issue 15 item 1).

The hot path costs no store round trip: a cached session is served from memory while this
process's follower is in sync (it read the events less than `STALE_AFTER` seconds ago; else
every request re-reads its row: fail closed), last-seen times are written back in batches
(`flush`), and an idle timeout is re-checked against the stored last-seen time (another
process may have served the user meanwhile) before it is declared. A cache miss (the first
request through this process, a restart) costs one read.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import secrets
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from gateway.errors import (
    SessionCertificateMismatch,
    SessionEnded,
    SessionExpired,
    SessionRequired,
)
from gateway.proxy import Identity
from gateway.users import SessionEnd, SessionRecord
from policy.clock import Clock
from policy.session import SessionPolicy, SessionState, session_state


def _key(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


@dataclass(eq=False)
class Session:
    """One logged-in user on one certificate."""

    user_id: str
    name: str
    customer: str
    role: str
    previous_login_at: datetime | None
    fingerprint: str
    serial: str
    created_at: datetime
    last_seen_at: datetime
    csrf: str = field(repr=False)
    must_change: str | None = None  # None, "temporary" or "expired" (R-PW-2)
    relays: set[asyncio.Task[None]] = field(default_factory=set, repr=False)
    key: bytes = field(default=b"", repr=False)  # SHA-256 of the cookie token

    @functools.cached_property
    def backend_identity(self) -> Identity:
        """Who the backend is told is asking, built once: nothing in it changes while the
        session lives, and every request of it presents the certificate it was created with."""
        return Identity(user_id=self.user_id, role=self.role, customer=self.customer,
                        name=self.name, last_login=self.previous_login_at, serial=self.serial,
                        csrf=self.csrf)

    def csrf_matches(self, presented: str | None) -> bool:
        """Constant-time comparison of a form's CSRF token with this session's."""
        return presented is not None and hmac.compare_digest(presented.encode(),
                                                             self.csrf.encode())


class EndReason(enum.StrEnum):
    """Why a session ended; each has its own sentence on the next page (issue 15 item 1)."""

    LOGOUT = "logout"  # the user pressed ログアウト (§3.1): no tombstone, the cookie is cleared
    TIMEOUT = "timeout"  # 30 minutes idle or the absolute limit (§2.8)
    RELOGIN = "relogin"  # 再ログイン in another window (R-SES-2)
    LOCKED = "locked"  # the login password locked (§2.7)
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a reason, not a secret; the helpdesk issued a temporary password (§2.6)
    DISABLED = "disabled"  # the helpdesk disabled the user ID
    REVOKED = "revoked"  # the certificate was revoked (§2.9)


# A process whose follower has not read the session events for this long serves no session
# from its cache: every request re-reads its row (issue 12: ends effective within 1 s).
STALE_AFTER = 1.0
# The Unix time of a datetime, and back (the store keeps times as seconds).


def _seconds(when: datetime | None) -> float | None:
    return when.timestamp() if when is not None else None


def _when(seconds: float | None) -> datetime | None:
    return datetime.fromtimestamp(seconds, UTC) if seconds is not None else None


class SessionBackend(Protocol):
    """What sessions need from the store (both `gateway.users` backends provide it)."""

    async def create_session(self, record: SessionRecord) -> None: ...
    async def load_session(self, token_hash: bytes) -> SessionRecord | None: ...
    async def session_of_user(self, user_id: str) -> SessionRecord | None: ...
    async def end_session(self, token_hash: bytes, reason: str) -> bool: ...
    async def end_user_sessions(self, user_id: str, reason: str) -> bool: ...
    async def end_certificate_sessions(self, fingerprint: str, reason: str) -> int: ...
    async def rotate_session(self, old_hash: bytes, new_hash: bytes) -> bool: ...
    async def update_session(self, token_hash: bytes, must_change: str | None) -> None: ...
    async def touch_sessions(self, seen: list[tuple[bytes, float]]) -> None: ...
    async def claim_session_end(self, token_hash: bytes, fingerprint: str,
                                since: float) -> str | None: ...
    async def session_ends_after(self, seq: int) -> list[SessionEnd]: ...


class SessionStore:
    """The sessions of the cluster as this process sees them (module docstring)."""

    def __init__(self, policy: SessionPolicy, clock: Clock, backend: SessionBackend) -> None:
        self.policy = policy
        self._clock = clock
        self._backend = backend
        self._by_key: dict[bytes, Session] = {}
        self._key_of_user: dict[str, bytes] = {}
        self._dirty: dict[bytes, float] = {}  # last-seen times not yet written back
        self.synced_at = time.monotonic()  # when the follower last read the events

    # -- the cache -------------------------------------------------------------------------

    @property
    def in_sync(self) -> bool:
        """Whether the follower read the session events within STALE_AFTER seconds."""
        return time.monotonic() - self.synced_at < STALE_AFTER

    def _install(self, record: SessionRecord) -> Session:
        """Cache a stored session (keeping a cached object, its relays and the later of the
        two last-seen times)."""
        cached = self._by_key.get(record.token_hash)
        last_seen = _when(record.last_seen_at)
        assert last_seen is not None
        if cached is not None:
            cached.last_seen_at = max(cached.last_seen_at, last_seen)
            cached.must_change = record.must_change
            return cached
        created = _when(record.created_at)
        assert created is not None
        session = Session(user_id=record.user_id, name=record.name, customer=record.customer,
                          role=record.role, previous_login_at=_when(record.previous_login_at),
                          fingerprint=record.fingerprint, serial=record.serial,
                          created_at=created, last_seen_at=last_seen, csrf=record.csrf,
                          must_change=record.must_change, key=record.token_hash)
        old = self._key_of_user.get(record.user_id)
        if old is not None and old != record.token_hash:
            self._drop(old)
        self._by_key[record.token_hash] = session
        self._key_of_user[record.user_id] = record.token_hash
        return session

    def _drop(self, key: bytes, *, cancel: bool = True) -> Session | None:
        """Forget a session here and stop its WebSocket relays (the store already ended it)."""
        session = self._by_key.pop(key, None)
        self._dirty.pop(key, None)
        if session is None:
            return None
        if self._key_of_user.get(session.user_id) == key:
            del self._key_of_user[session.user_id]
        if cancel:
            for relay in list(session.relays):
                relay.cancel()
        return session

    def apply(self, end: SessionEnd) -> bool:
        """A session event read by the follower: the session ends in this process too (its
        relays are cancelled); True when this process held it."""
        if end.token_hash is not None:
            # A rotation (password change) too stops this process's relays of the session:
            # the event does not name the new token, so the cached object is dropped, and
            # its relays must not outlive it unseen by a later end.
            return self._drop(end.token_hash) is not None
        key = self._key_of_user.get(end.user_id)
        return key is not None and self._drop(key) is not None

    def _state(self, session: Session, now: datetime) -> SessionState:
        return session_state(session.created_at, session.last_seen_at, now, self.policy)

    def find(self, token: str | None) -> Session | None:
        """The cached session of a cookie token without any check (None when unknown here);
        for display only (the header)."""
        return self._by_key.get(_key(token)) if token else None

    def cached_active_for_user(self, user_id: str) -> Session | None:
        """The user's cached session if it is still active (display only)."""
        key = self._key_of_user.get(user_id)
        session = self._by_key.get(key) if key is not None else None
        if session is None or self._state(session, self._clock.now()) is not \
                SessionState.ACTIVE:
            return None
        return session

    # -- the gate --------------------------------------------------------------------------

    async def lookup(self, token: str | None) -> Session | None:
        """The session of a cookie token, from the cache or the store, without any check."""
        if not token:
            return None
        key = _key(token)
        session = self._by_key.get(key)
        if session is not None and self.in_sync:
            return session
        record = await self._backend.load_session(key)
        if record is None:
            self._drop(key)
            return None
        return self._install(record)

    async def use(self, token: str | None, fingerprint: str) -> Session:
        """The session for a request: active, same certificate; counts as an operation.

        SessionRequired when there is none, SessionExpired (and the session ends) after the
        idle or absolute limit, SessionEnded (once) when it was ended for another reason,
        SessionCertificateMismatch when the connection's certificate is not the one the
        session was created with (the session is left alone: the thief must not be able to
        log the owner out).
        """
        if not token:
            raise SessionRequired("please log in")
        session = await self.lookup(token)
        key = _key(token)
        if session is None:
            reason = await self._backend.claim_session_end(
                key, fingerprint, self._clock.now().timestamp()
                - self.policy.absolute_timeout.total_seconds())
            if reason is None:
                raise SessionRequired("please log in")
            if reason == EndReason.TIMEOUT:
                raise SessionExpired("the session has timed out")
            try:
                code = EndReason(reason).value
            except ValueError:
                code = EndReason.DISABLED.value
            raise SessionEnded(f"the session was ended: {reason}",
                               code=f"session_ended_{code}")
        if not hmac.compare_digest(session.fingerprint, fingerprint):
            raise SessionCertificateMismatch("this session belongs to another certificate")
        now = self._clock.now()
        if self._state(session, now) is not SessionState.ACTIVE and \
                not await self._still_active(session, now):
            await self._end_key(key, EndReason.LOGOUT)  # answered right here: no tombstone
            raise SessionExpired("the session has timed out")
        session.last_seen_at = now
        self._dirty[key] = now.timestamp()
        return session

    async def _still_active(self, session: Session, now: datetime) -> bool:
        """Before an idle timeout is declared: another process may have served the user
        later (its last-seen time is in the store)."""
        record = await self._backend.load_session(session.key)
        if record is None:
            return False
        self._install(record)
        return self._state(session, now) is SessionState.ACTIVE

    def touch(self, session: Session) -> None:
        """An operation on a WebSocket relay counts as activity (R-SES-1)."""
        now = self._clock.now()
        session.last_seen_at = now
        if session.key in self._by_key:
            self._dirty[session.key] = now.timestamp()

    async def flush(self) -> None:
        """Write the last-seen times gathered since the last flush, in one batch."""
        if not self._dirty:
            return
        seen, self._dirty = list(self._dirty.items()), {}
        try:
            await self._backend.touch_sessions(seen)
        except BaseException:
            for key, at in seen:  # kept for the next flush
                self._dirty[key] = max(at, self._dirty.get(key, at))
            raise

    # -- changes ---------------------------------------------------------------------------

    async def create(self, *, user_id: str, name: str, customer: str, role: str,
                     previous_login_at: datetime | None, fingerprint: str, serial: str,
                     must_change: str | None) -> tuple[str, Session]:
        """A new session (ending the user's previous one); returns (cookie token, session)."""
        now = self._clock.now().timestamp()
        token = secrets.token_urlsafe(32)
        record = SessionRecord(
            token_hash=_key(token), user_id=user_id, fingerprint=fingerprint, serial=serial,
            name=name, customer=customer, role=role,
            previous_login_at=_seconds(previous_login_at), csrf=secrets.token_urlsafe(32),
            must_change=must_change, created_at=now, last_seen_at=now)
        await self._backend.create_session(record)
        old = self._key_of_user.get(user_id)
        if old is not None:
            self._drop(old)
        return token, self._install(record)

    async def active_for_user(self, user_id: str) -> Session | None:
        """The user's session if one still stands anywhere in the cluster (R-SES-2: offer
        re-login)."""
        record = await self._backend.session_of_user(user_id)
        if record is None:
            key = self._key_of_user.get(user_id)
            if key is not None:
                self._drop(key)
            return None
        session = self._install(record)
        if self._state(session, self._clock.now()) is not SessionState.ACTIVE:
            await self._end_key(session.key, EndReason.TIMEOUT)
            return None
        return session

    async def set_must_change(self, session: Session, must_change: str | None) -> None:
        """The session's password change is done (None) or required."""
        session.must_change = must_change
        await self._backend.update_session(session.key, must_change)

    async def rotate(self, token: str) -> str:
        """Give a session a new cookie token (after a privilege change); returns it."""
        key = _key(token)
        new_token = secrets.token_urlsafe(32)
        new_key = _key(new_token)
        if not await self._backend.rotate_session(key, new_key):
            raise SessionRequired("please log in")
        session = self._by_key.pop(key, None)
        self._dirty.pop(key, None)
        if session is not None:
            session.key = new_key
            self._by_key[new_key] = session
            self._key_of_user[session.user_id] = new_key
        return new_token

    async def _end_key(self, key: bytes, reason: EndReason) -> bool:
        ended = await self._backend.end_session(key, reason.value)
        return self._drop(key) is not None or ended

    async def end(self, token: str | None) -> bool:
        """Logout (R-SES-2): end the cookie's session."""
        return await self._end_key(_key(token), EndReason.LOGOUT) if token else False

    async def end_user(self, user_id: str, reason: EndReason) -> bool:
        """End the user's session (re-login, lock, helpdesk), remembering why."""
        ended = await self._backend.end_user_sessions(user_id, reason.value)
        key = self._key_of_user.get(user_id)
        return (key is not None and self._drop(key) is not None) or ended

    async def end_certificate(self, fingerprint: str) -> int:
        """End every session created with this certificate (revocation); returns how many."""
        ended = await self._backend.end_certificate_sessions(fingerprint,
                                                             EndReason.REVOKED.value)
        for key in [k for k, s in self._by_key.items() if s.fingerprint == fingerprint]:
            self._drop(key)
        return ended

    def drop_certificate(self, fingerprint: str) -> int:
        """Forget (here, at once) every session of a revoked certificate; the store's rows
        go with `end_certificate`."""
        keys = [k for k, s in self._by_key.items() if s.fingerprint == fingerprint]
        for key in keys:
            self._drop(key)
        return len(keys)

    async def sweep(self) -> int:
        """End this process's cached sessions past their limits (so their WebSocket relays
        stop), after writing back the last-seen times and re-reading the stored ones;
        returns how many."""
        await self.flush()
        now = self._clock.now()
        count = 0
        for key, session in list(self._by_key.items()):
            if self._state(session, now) is SessionState.ACTIVE:
                continue
            if await self._still_active(session, now):
                continue
            await self._end_key(key, EndReason.TIMEOUT)
            count += 1
        return count
