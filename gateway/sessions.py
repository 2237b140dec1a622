"""Server-side sessions (R-SES-1..3, R-GW-4), kept in the gateway's memory.

* The cookie holds a random 256-bit token; the store keys sessions by its SHA-256, so the
  table holds nothing a cookie could be made from.
* One active session per user (R-SES-2): creating one ends the user's previous session
  ("re-login", §3.1 note).
* Bound to the SHA-256 fingerprint of the certificate it was created with; every request
  compares the fingerprint of the connection's certificate (R-GW-4).
* 30 minutes without an operation end it (R-SES-1, `policy.session`), measured with the
  injected clock; a 12-hour absolute limit too.
* Each session carries its own CSRF token (R-SES-3).
* Ending a session (logout, re-login, revocation, lock, timeout, a helpdesk action) also
  cancels the WebSocket relays running for it, and leaves a tombstone: the SHA-256 of the
  cookie token and the reason (`EndReason`), bounded in number and age, so that the window
  that still holds the cookie is told why in one sentence and what to do (issue 15 item 1),
  once, instead of landing on the top page without a word.

In memory on purpose: the gateway is one process and a restart logging everyone out is
acceptable (and safe). Several gateway processes would need a shared store.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import hashlib
import hmac
import secrets
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime

from gateway.errors import (
    SessionCertificateMismatch,
    SessionEnded,
    SessionExpired,
    SessionRequired,
)
from gateway.proxy import Identity
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


MAX_REMEMBERED_TIMEOUTS = 100_000


class EndReason(enum.StrEnum):
    """Why a session ended; each has its own sentence on the next page (issue 15 item 1)."""

    LOGOUT = "logout"  # the user pressed ログアウト (§3.1): no tombstone, the cookie is cleared
    TIMEOUT = "timeout"  # 30 minutes idle or the absolute limit (§2.8)
    RELOGIN = "relogin"  # 再ログイン in another window (R-SES-2)
    LOCKED = "locked"  # the login password locked (§2.7)
    PASSWORD_RESET = "password_reset"  # noqa: S105 - a reason, not a secret; the helpdesk issued a temporary password (§2.6)
    DISABLED = "disabled"  # the helpdesk disabled the user ID
    REVOKED = "revoked"  # the certificate was revoked (§2.9)


class SessionStore:
    """All sessions of this gateway process."""

    def __init__(self, policy: SessionPolicy, clock: Clock) -> None:
        self.policy = policy
        self._clock = clock
        self._by_key: dict[bytes, Session] = {}
        self._key_of_user: dict[str, bytes] = {}
        # Tombstones of ended sessions (token hash -> reason, when): their next click gets the
        # page saying why (§2.8's timeout page, or re-login, lock, helpdesk, revocation), once.
        # Bounded; entries older than the absolute timeout are dropped.
        # The certificate's fingerprint is kept too: only the owner's certificate learns why.
        self._ended: OrderedDict[bytes, tuple[EndReason, datetime, str]] = OrderedDict()

    def create(self, *, user_id: str, name: str, customer: str, role: str,
               previous_login_at: datetime | None, fingerprint: str, serial: str,
               must_change: str | None) -> tuple[str, Session]:
        """A new session (ending the user's previous one); returns (cookie token, session)."""
        self.end_user(user_id, EndReason.RELOGIN)
        now = self._clock.now()
        token = secrets.token_urlsafe(32)
        session = Session(user_id=user_id, name=name, customer=customer, role=role,
                          previous_login_at=previous_login_at, fingerprint=fingerprint,
                          serial=serial, created_at=now, last_seen_at=now,
                          csrf=secrets.token_urlsafe(32), must_change=must_change)
        key = _key(token)
        self._by_key[key] = session
        self._key_of_user[user_id] = key
        return token, session

    def _state(self, session: Session, now: datetime) -> SessionState:
        return session_state(session.created_at, session.last_seen_at, now, self.policy)

    def find(self, token: str | None) -> Session | None:
        """The session of a cookie token without any check (None when unknown)."""
        return self._by_key.get(_key(token)) if token else None

    def use(self, token: str | None, fingerprint: str) -> Session:
        """The session for a request: active, same certificate; counts as an operation.

        SessionRequired when there is none, SessionExpired (and the session ends) after the
        idle or absolute limit, SessionEnded (once) when it was ended for another reason,
        SessionCertificateMismatch when the connection's certificate is not the one the
        session was created with (the session is left alone: the thief must not be able to
        log the owner out).
        """
        if not token:
            raise SessionRequired("please log in")
        key = _key(token)
        session = self._by_key.get(key)
        if session is None:
            ended = self._ended.get(key)
            if ended is None or not hmac.compare_digest(ended[2], fingerprint):
                raise SessionRequired("please log in")
            del self._ended[key]
            if ended[0] is EndReason.TIMEOUT:
                raise SessionExpired("the session has timed out")
            raise SessionEnded(f"the session was ended: {ended[0].value}",
                               code=f"session_ended_{ended[0].value}")
        if not hmac.compare_digest(session.fingerprint, fingerprint):
            raise SessionCertificateMismatch("this session belongs to another certificate")
        now = self._clock.now()
        if self._state(session, now) is not SessionState.ACTIVE:
            self._end_key(key, EndReason.LOGOUT)  # answered right here: no tombstone
            raise SessionExpired("the session has timed out")
        session.last_seen_at = now
        return session

    def active_for_user(self, user_id: str) -> Session | None:
        """The user's session if one still stands (R-SES-2: offer re-login)."""
        key = self._key_of_user.get(user_id)
        session = self._by_key.get(key) if key is not None else None
        if session is None:
            return None
        if self._state(session, self._clock.now()) is not SessionState.ACTIVE:
            self._end_key(key, EndReason.TIMEOUT)  # type: ignore[arg-type]
            return None
        return session

    def rotate(self, token: str) -> str:
        """Give a session a new cookie token (after a privilege change); returns it."""
        key = _key(token)
        session = self._by_key.pop(key)
        new_token = secrets.token_urlsafe(32)
        new_key = _key(new_token)
        self._by_key[new_key] = session
        self._key_of_user[session.user_id] = new_key
        return new_token

    def _end_key(self, key: bytes, reason: EndReason) -> Session | None:
        session = self._by_key.pop(key, None)
        if session is None:
            return None
        if self._key_of_user.get(session.user_id) == key:
            del self._key_of_user[session.user_id]
        for relay in list(session.relays):
            relay.cancel()
        if reason is not EndReason.LOGOUT:
            self._remember(key, reason, session.fingerprint)
        return session

    def _remember(self, key: bytes, reason: EndReason, fingerprint: str) -> None:
        """Leave a tombstone; drop the oldest beyond the bound or the absolute timeout."""
        now = self._clock.now()
        self._ended.pop(key, None)
        self._ended[key] = (reason, now, fingerprint)
        while self._ended and (
            len(self._ended) > MAX_REMEMBERED_TIMEOUTS
            or next(iter(self._ended.values()))[1] < now - self.policy.absolute_timeout
        ):
            self._ended.popitem(last=False)

    def end(self, token: str | None) -> Session | None:
        """Logout (R-SES-2): end the cookie's session."""
        return self._end_key(_key(token), EndReason.LOGOUT) if token else None

    def end_user(self, user_id: str, reason: EndReason) -> bool:
        """End the user's session (re-login, lock, helpdesk), remembering why."""
        key = self._key_of_user.get(user_id)
        return key is not None and self._end_key(key, reason) is not None

    def end_certificate(self, fingerprint: str) -> int:
        """End every session created with this certificate (revocation); returns how many."""
        keys = [k for k, s in self._by_key.items() if s.fingerprint == fingerprint]
        for key in keys:
            self._end_key(key, EndReason.REVOKED)
        return len(keys)

    def sweep(self) -> int:
        """End every session past its limits (so their WebSocket relays stop); returns count."""
        now = self._clock.now()
        keys = [k for k, s in self._by_key.items() if self._state(s, now) is not
                SessionState.ACTIVE]
        for key in keys:
            self._end_key(key, EndReason.TIMEOUT)
        return len(keys)
