"""The gateway's user store on aiosqlite: users, password history, lockout, audit.

A SQLite file of its own (not the CA's), in WAL mode with `synchronous=FULL`. One connection
per process; an asyncio lock keeps coroutines from interleaving statements inside one
another's transactions, and `BEGIN IMMEDIATE` plus `busy_timeout` serialise writes with the
helpdesk CLI, which opens the same file from another process.

Lockout (R-LOCK-1) counts a try *before* the password is checked: `reserve_attempt` is a
single conditional UPDATE, so however many requests arrive at once, at most `max_failures`
passwords are evaluated before the helpdesk unlocks the user. `record_success` clears the
count; `record_failure` locks once the count has reached the limit. A process that dies
between the two leaves the try counted (fail safe), and no longer stuck (R-FAULT-3): each
counted try is also *pending* (`pending_attempts`, with the reserving process as
`pending_owner` and a deadline `pending_until`) until its result is recorded. A pending try
whose check can no longer complete - past the deadline, or left by an earlier run of the
gateway - counts as a failure: it stops being pending, its count stays, and the lock follows
the count (`expire_attempts`, one statement). It is never refunded, because the password may
have been evaluated just before the crash: a refund could let a fourth password be evaluated.

The same bookkeeping exists for user IDs that do not exist (`unknown_attempts`), so that an
unknown ID behaves like a known one with a wrong password, lock page included (R-LOCK-2).

Every change is appended to the hash-chained audit log (`common.audit`, R-OPS-2).
"""

from __future__ import annotations

import enum
import secrets
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import aiosqlite

from common import audit
from common.sqlite import DEAD_OWNER, Owner, SqliteStore, connect, from_epoch, to_epoch
from gateway.errors import BadRequest, Conflict, NotFound
from policy.clock import Clock
from policy.errors import InvalidUserId
from policy.profile import validate_user_id

# Each migration runs once, in order; the index + 1 is the schema version it produces.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        customer TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('admin', 'contractor')),
        password_hash TEXT NOT NULL,
        password_set_at INTEGER NOT NULL,      -- Unix seconds, UTC
        must_change INTEGER NOT NULL,          -- 1: temporary password (new user, reset)
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked INTEGER NOT NULL DEFAULT 0,
        disabled INTEGER NOT NULL DEFAULT 0,
        last_login_at INTEGER,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE password_history (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
        hash TEXT NOT NULL,
        set_at INTEGER NOT NULL
    );
    CREATE INDEX password_history_by_user ON password_history (user_id, id);
    CREATE TABLE unknown_attempts (
        user_id TEXT PRIMARY KEY,
        failed_attempts INTEGER NOT NULL,
        locked INTEGER NOT NULL DEFAULT 0,
        updated_at INTEGER NOT NULL
    );
    """
    + audit.SCHEMA,
    # Issue 10 item 9: helpdesk actions that remove a right to log in, as a sequence every
    # gateway process follows (`session_events_after`) to end the user's sessions at once.
    """
    CREATE TABLE session_events (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        user_id TEXT NOT NULL,
        reason TEXT NOT NULL,                  -- gateway.sessions.EndReason
        at INTEGER NOT NULL
    );
    """,
    # 3: pending tries (R-FAULT-3), see the module docstring.
    """
    ALTER TABLE users ADD COLUMN pending_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE users ADD COLUMN pending_until INTEGER;
    ALTER TABLE users ADD COLUMN pending_owner TEXT;
    ALTER TABLE unknown_attempts ADD COLUMN pending_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE unknown_attempts ADD COLUMN pending_until INTEGER;
    ALTER TABLE unknown_attempts ADD COLUMN pending_owner TEXT;
    CREATE INDEX users_pending ON users (pending_until) WHERE pending_attempts > 0;
    CREATE INDEX unknown_pending ON unknown_attempts (pending_until) WHERE pending_attempts > 0;
    """,
    # 4: sessions as shared state (issue 12), see the section "sessions" below.
    """
    CREATE TABLE sessions (
        token_hash BLOB PRIMARY KEY,           -- SHA-256 of the cookie token
        user_id TEXT NOT NULL UNIQUE,          -- one session per user (R-SES-2)
        fingerprint TEXT NOT NULL,
        serial TEXT NOT NULL,
        name TEXT NOT NULL,
        customer TEXT NOT NULL,
        role TEXT NOT NULL,
        previous_login_at REAL,
        csrf TEXT NOT NULL,
        must_change TEXT,
        created_at REAL NOT NULL,              -- Unix seconds, UTC, with fractions
        last_seen_at REAL NOT NULL
    );
    ALTER TABLE session_events ADD COLUMN token_hash BLOB;
    ALTER TABLE session_events ADD COLUMN fingerprint TEXT;
    ALTER TABLE session_events ADD COLUMN consumed INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX session_events_by_token ON session_events (token_hash)
        WHERE token_hash IS NOT NULL;
    """,
    # 5: download pickups as shared state (issue 12), sealed (gateway.enrollment).
    """
    CREATE TABLE pickups (
        ticket_hash BLOB PRIMARY KEY,          -- SHA-256 of the cookie ticket
        kind TEXT NOT NULL,
        user_id TEXT NOT NULL,
        serial TEXT NOT NULL,
        not_after TEXT NOT NULL,
        expires_at REAL NOT NULL,
        fingerprint TEXT,
        sealed BLOB NOT NULL                   -- AES-GCM under a key derived from the ticket
    );
    CREATE INDEX pickups_by_expiry ON pickups (expires_at);
    """,
    # 6: the anonymous acquisition form's per-address throttle as shared state (issue 10
    # item 3 across the processes of issue 12): one row per counted try.
    """
    CREATE TABLE acquire_tries (
        address TEXT NOT NULL,                 -- gateway.throttle.address_key
        at REAL NOT NULL                       -- Unix seconds, UTC, with fractions
    );
    CREATE INDEX acquire_tries_by_address ON acquire_tries (address, at);
    CREATE INDEX acquire_tries_by_time ON acquire_tries (at);
    """,
)

PICKUP_COLUMNS = "ticket_hash, kind, user_id, serial, not_after, expires_at, fingerprint, sealed"


@dataclass(frozen=True)
class PickupRecord:
    """One row of `pickups` (`sealed` is the PKCS#12 encrypted under the ticket's key)."""

    ticket_hash: bytes
    kind: str
    user_id: str
    serial: str
    not_after: str
    expires_at: float
    fingerprint: str | None
    sealed: bytes = field(repr=False)

    def values(self) -> tuple[Any, ...]:
        """The values in PICKUP_COLUMNS order."""
        return (self.ticket_hash, self.kind, self.user_id, self.serial, self.not_after,
                self.expires_at, self.fingerprint, self.sealed)


def pickup_record(row: Sequence[Any]) -> PickupRecord:
    """A `pickups` row (PICKUP_COLUMNS order) as a record."""
    return PickupRecord(bytes(row[0]), row[1], row[2], row[3], row[4], float(row[5]), row[6],
                        bytes(row[7]))

SESSION_COLUMNS = ("token_hash, user_id, fingerprint, serial, name, customer, role,"
                   " previous_login_at, csrf, must_change, created_at, last_seen_at")


@dataclass(frozen=True)
class SessionRecord:
    """One row of `sessions` (times as Unix seconds)."""

    token_hash: bytes
    user_id: str
    fingerprint: str
    serial: str
    name: str
    customer: str
    role: str
    previous_login_at: float | None
    csrf: str = field(repr=False)
    must_change: str | None
    created_at: float
    last_seen_at: float

    def values(self) -> tuple[Any, ...]:
        """The values in SESSION_COLUMNS order."""
        return (self.token_hash, self.user_id, self.fingerprint, self.serial, self.name,
                self.customer, self.role, self.previous_login_at, self.csrf, self.must_change,
                self.created_at, self.last_seen_at)


def session_record(row: Sequence[Any]) -> SessionRecord:
    """A `sessions` row (SESSION_COLUMNS order) as a record."""
    return SessionRecord(bytes(row[0]), row[1], row[2], row[3], row[4], row[5], row[6],
                         row[7], row[8], row[9], float(row[10]), float(row[11]))


@dataclass(frozen=True)
class SessionEnd:
    """One session event: a session (token_hash) or whatever session a user had ended."""

    seq: int
    user_id: str
    reason: str
    token_hash: bytes | None
    fingerprint: str | None

# How long a counted try may stay unchecked, while its gateway lives, before it counts as a
# failure (R-FAULT-3): far above one argon2 verification (~20 ms) queued behind a burst. A
# killed gateway's tries are settled at once when it starts again.
ATTEMPT_DEADLINE = timedelta(minutes=2)
_PENDING = (
    "pending_attempts = pending_attempts + 1, pending_owner = ?,"
    " pending_until = MAX(COALESCE(pending_until, 0), ?)"
)
# Events older than this are pruned: every follower polls several times a second.
SESSION_EVENTS_KEPT_SECONDS = 24 * 3600

LOGIN_ACTOR = "login"


class Role(enum.StrEnum):
    """The two roles of the manual (§1.3.1)."""

    ADMIN = "admin"  # 管理者: may also change user restriction settings (§1.3.2)
    CONTRACTOR = "contractor"  # 締結者


@dataclass(frozen=True)
class User:
    """One row of `users`."""

    user_id: str
    name: str
    customer: str
    role: Role
    password_hash: str = field(repr=False)
    password_set_at: datetime
    must_change: bool
    failed_attempts: int
    locked: bool
    disabled: bool
    last_login_at: datetime | None
    created_at: datetime


_USER_COLUMNS = (
    "user_id, name, customer, role, password_hash, password_set_at, must_change,"
    " failed_attempts, locked, disabled, last_login_at, created_at"
)


def _user(row: Sequence[Any]) -> User:
    return User(
        user_id=row[0], name=row[1], customer=row[2], role=Role(row[3]), password_hash=row[4],
        password_set_at=from_epoch(row[5]), must_change=bool(row[6]), failed_attempts=row[7],
        locked=bool(row[8]), disabled=bool(row[9]),
        last_login_at=from_epoch(row[10]) if row[10] is not None else None,
        created_at=from_epoch(row[11]),
    )


def validated_new_user(user_id: str, role: Role | str, name: str, customer: str
                       ) -> tuple[str, Role]:
    """A new user's ID and role, checked (R-CERT-1 ID rules, §1.3.1 roles) for either store."""
    try:
        user_id = validate_user_id(user_id)
    except InvalidUserId as exc:
        raise BadRequest(str(exc), code=exc.code) from None
    try:
        role = Role(role)
    except ValueError:
        raise BadRequest(f"role must be admin or contractor, not {role!r}") from None
    if not name.strip() or not customer.strip():
        raise BadRequest("a user needs a name and a customer name")
    return user_id, role


class UserStore(SqliteStore):
    """Users, password history, login-attempt counters and the audit log of one gateway."""

    what = "gateway database"

    def __init__(self, db: aiosqlite.Connection, clock: Clock, owner: Owner | None = None,
                 ) -> None:
        super().__init__(db)
        self._clock = clock
        # One gateway process per database: a restarted gateway settles the tries that the
        # run before it left pending (R-FAULT-3).
        self.owner = owner or Owner("gateway", secrets.token_hex(8))

    @classmethod
    async def open(cls, path: Path, clock: Clock) -> UserStore:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(await connect(path, MIGRATIONS, name="gateway"), clock)

    @staticmethod
    async def _one(db: aiosqlite.Connection, sql: str, params: Sequence[Any]) -> Any:
        async with db.execute(sql, params) as cursor:
            return await cursor.fetchone()

    async def _audit(
        self, db: aiosqlite.Connection, action: str, subject: str, actor: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        await audit.append(
            db, at=self._clock.now(), actor=actor, action=action, subject=subject, details=details
        )

    # -- users ---------------------------------------------------------------------------

    async def add_user(
        self, user_id: str, *, name: str, customer: str, role: Role | str, password_hash: str,
        actor: str,
    ) -> User:
        """Create a user with a temporary password: the first login leads to the change page."""
        user_id, role = validated_new_user(user_id, role, name, customer)
        now = to_epoch(self._clock.now())
        async with self.transaction() as db:
            try:
                await db.execute(
                    f"INSERT INTO users ({_USER_COLUMNS})"  # noqa: S608 - constant column list
                    " VALUES (?, ?, ?, ?, ?, ?, 1, 0, 0, 0, NULL, ?)",
                    (user_id, name, customer, role.value, password_hash, now, now),
                )
            except sqlite3.IntegrityError:
                raise Conflict(f"user {user_id} already exists", code="user_exists") from None
            # Wrong tries counted while the ID did not exist do not follow it into existence.
            await db.execute("DELETE FROM unknown_attempts WHERE user_id = ?", (user_id,))
            await self._audit(
                db, "user.added", user_id, actor,
                {"name": name, "customer": customer, "role": role.value},
            )
        user = await self.get(user_id)
        assert user is not None
        return user

    async def get(self, user_id: str) -> User | None:
        """The user, or None when there is no such user ID."""
        row = await self._fetchone(
            f"SELECT {_USER_COLUMNS} FROM users WHERE user_id = ?",  # noqa: S608 - constant
            (user_id,),
        )
        return _user(row) if row else None

    async def list_users(self) -> list[User]:
        """Every user, ordered by customer and user ID."""
        rows = await self._fetchall(
            f"SELECT {_USER_COLUMNS} FROM users ORDER BY customer, user_id"  # noqa: S608
        )
        return [_user(row) for row in rows]

    async def recent_password_hashes(self, user_id: str, count: int) -> list[str]:
        """The current password hash and the newest `count - 1` before it (R-PW-1 history)."""
        if count < 1:
            return []
        async with self._lock:
            current = await self._one(
                self._db, "SELECT password_hash FROM users WHERE user_id = ?", (user_id,)
            )
            if current is None:
                return []
            async with self._db.execute(
                "SELECT hash FROM password_history WHERE user_id = ? ORDER BY id DESC LIMIT ?",
                (user_id, count - 1),
            ) as cursor:
                older = [row[0] for row in await cursor.fetchall()]
        return [current[0], *older]

    async def _replace_password(
        self, db: aiosqlite.Connection, user: Sequence[Any], password_hash: str,
        keep_previous: int, *, temporary: bool,
    ) -> None:
        """Push the current hash into the history, keep the newest `keep_previous` of it."""
        user_id, old_hash, old_set_at = user
        now = to_epoch(self._clock.now())
        await db.execute(
            "INSERT INTO password_history (user_id, hash, set_at) VALUES (?, ?, ?)",
            (user_id, old_hash, old_set_at),
        )
        await db.execute(
            "DELETE FROM password_history WHERE user_id = ? AND id NOT IN"
            " (SELECT id FROM password_history WHERE user_id = ? ORDER BY id DESC LIMIT ?)",
            (user_id, user_id, max(0, keep_previous)),
        )
        # A temporary password (helpdesk reset) also clears the lock (§2.6, §2.7).
        await db.execute(
            "UPDATE users SET password_hash = ?, password_set_at = ?, must_change = ?,"
            " failed_attempts = CASE WHEN ? THEN 0 ELSE failed_attempts END,"
            " locked = CASE WHEN ? THEN 0 ELSE locked END WHERE user_id = ?",
            (password_hash, now, temporary, temporary, temporary, user_id),
        )

    async def set_password(
        self, user_id: str, password_hash: str, *, keep_previous: int, actor: str,
        expected_hash: str | None = None,
    ) -> bool:
        """The user chose a new password (§2.5): history pushed, must_change cleared.

        With `expected_hash`, nothing changes (False) unless the current hash is still that
        one, so a helpdesk reset between the check of the current password and this call wins.
        """
        async with self.transaction() as db:
            row = await self._password_row(db, user_id)
            if expected_hash is not None and row[1] != expected_hash:
                return False
            await self._replace_password(db, row, password_hash, keep_previous, temporary=False)
            await self._audit(db, "password.changed", user_id, actor)
        return True

    async def _password_row(self, db: aiosqlite.Connection, user_id: str) -> Any:
        """(user_id, password_hash, password_set_at) of a user; NotFound when there is none."""
        row = await self._one(
            db, "SELECT user_id, password_hash, password_set_at FROM users WHERE user_id = ?",
            (user_id,),
        )
        if row is None:
            raise NotFound(f"no user {user_id}", code="unknown_user")
        return row

    async def reset_password(
        self, user_id: str, password_hash: str, *, keep_previous: int, actor: str
    ) -> None:
        """Helpdesk reset (§2.6): a new temporary password, must_change set, lock cleared."""
        async with self.transaction() as db:
            row = await self._password_row(db, user_id)
            await self._replace_password(db, row, password_hash, keep_previous, temporary=True)
            await self._audit(db, "password.reset", user_id, actor)
            await self._end_sessions(db, user_id, "password_reset")

    async def replace_hash(self, user_id: str, old_hash: str, new_hash: str) -> bool:
        """Store a re-hash of the same password (new argon2 parameters); history untouched."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE users SET password_hash = ? WHERE user_id = ? AND password_hash = ?",
                (new_hash, user_id, old_hash),
            )
            if cursor.rowcount == 1:
                await self._audit(db, "password.rehashed", user_id, LOGIN_ACTOR)
            return cursor.rowcount == 1

    async def _admin_update(
        self, user_id: str, sql: str, action: str, actor: str, *, end_sessions: str | None = None
    ) -> None:
        async with self.transaction() as db:
            cursor = await db.execute(sql, (user_id,))
            if cursor.rowcount != 1:
                raise NotFound(f"no user {user_id}", code="unknown_user")
            await self._audit(db, action, user_id, actor)
            if end_sessions is not None:
                await self._end_sessions(db, user_id, end_sessions)

    async def _end_sessions(self, db: aiosqlite.Connection, user_id: str, reason: str) -> None:
        """End the user's stored session and append a session event in the caller's
        transaction: every gateway process that follows the sequence ends the user's sessions
        within a poll interval (issue 10 item 9, issue 12)."""
        async with db.execute("DELETE FROM sessions WHERE user_id = ?"
                              " RETURNING token_hash, fingerprint", (user_id,)) as cursor:
            ended: list[Any] = list(await cursor.fetchall())
        for token_hash, fingerprint in ended or [(None, None)]:
            await self._append_end(db, user_id, reason, token_hash, fingerprint)

    async def _append_end(self, db: aiosqlite.Connection, user_id: str, reason: str,
                          token_hash: bytes | None, fingerprint: str | None) -> None:
        now = to_epoch(self._clock.now())
        await db.execute(
            "INSERT INTO session_events (user_id, reason, at, token_hash, fingerprint)"
            " VALUES (?, ?, ?, ?, ?)", (user_id, reason, now, token_hash, fingerprint))
        await db.execute("DELETE FROM session_events WHERE at < ?",
                         (now - SESSION_EVENTS_KEPT_SECONDS,))

    # -- sessions (issue 12: shared by every gateway process; gateway.sessions) -------------

    async def create_session(self, record: SessionRecord) -> None:
        """Store a new session, ending the user's previous one (re-login, R-SES-2); the
        UNIQUE user_id makes it one session per user whatever the number of processes."""
        async with self.transaction() as db:
            await self._end_sessions_quietly(db, record.user_id, "relogin")
            await db.execute(
                f"INSERT INTO sessions ({SESSION_COLUMNS})"  # noqa: S608 - constant
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", record.values())

    async def _end_sessions_quietly(self, db: aiosqlite.Connection, user_id: str,
                                    reason: str) -> None:
        """`_end_sessions` without an event when the user had no session."""
        async with db.execute("DELETE FROM sessions WHERE user_id = ?"
                              " RETURNING token_hash, fingerprint", (user_id,)) as cursor:
            ended = list(await cursor.fetchall())
        for token_hash, fingerprint in ended:
            await self._append_end(db, user_id, reason, token_hash, fingerprint)

    async def load_session(self, token_hash: bytes) -> SessionRecord | None:
        """The stored session of a token hash, or None."""
        row = await self._fetchone(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE token_hash = ?",  # noqa: S608
            (token_hash,))
        return session_record(row) if row else None

    async def session_of_user(self, user_id: str) -> SessionRecord | None:
        """The user's stored session, or None."""
        row = await self._fetchone(
            f"SELECT {SESSION_COLUMNS} FROM sessions WHERE user_id = ?",  # noqa: S608
            (user_id,))
        return session_record(row) if row else None

    async def end_session(self, token_hash: bytes, reason: str) -> bool:
        """End one session (logout, timeout); False when it was already gone."""
        async with self.transaction() as db:
            async with db.execute("DELETE FROM sessions WHERE token_hash = ?"
                                  " RETURNING user_id, fingerprint", (token_hash,)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            await self._append_end(db, row[0], reason, token_hash, row[1])
            return True

    async def end_user_sessions(self, user_id: str, reason: str) -> bool:
        """End the user's session (lock seen by the login page, ...); False when none."""
        async with self.transaction() as db:
            before = db.total_changes
            await self._end_sessions_quietly(db, user_id, reason)
            return db.total_changes != before

    async def end_certificate_sessions(self, fingerprint: str, reason: str) -> int:
        """End every session created with this certificate (revocation); how many."""
        async with self.transaction() as db:
            async with db.execute("DELETE FROM sessions WHERE fingerprint = ?"
                                  " RETURNING user_id, token_hash", (fingerprint,)) as cursor:
                rows = list(await cursor.fetchall())
            for user_id, token_hash in rows:
                await self._append_end(db, user_id, reason, token_hash, fingerprint)
            return len(rows)

    async def rotate_session(self, old_hash: bytes, new_hash: bytes) -> bool:
        """Give the stored session a new token hash; other processes drop the old one."""
        async with self.transaction() as db:
            async with db.execute("UPDATE sessions SET token_hash = ? WHERE token_hash = ?"
                                  " RETURNING user_id, fingerprint",
                                  (new_hash, old_hash)) as cursor:
                row = await cursor.fetchone()
            if row is None:
                return False
            await self._append_end(db, row[0], "rotated", old_hash, row[1])
            return True

    async def update_session(self, token_hash: bytes, must_change: str | None) -> None:
        """Record that the session's password change is done (or required)."""
        async with self.transaction() as db:
            await db.execute("UPDATE sessions SET must_change = ? WHERE token_hash = ?",
                             (must_change, token_hash))

    async def touch_sessions(self, seen: Sequence[tuple[bytes, float]]) -> None:
        """Write back last-seen times in one batch (never moving one backwards)."""
        if not seen:
            return
        async with self.transaction() as db:
            await db.executemany(
                "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?) WHERE token_hash = ?",
                [(at, key) for key, at in seen])

    async def claim_session_end(self, token_hash: bytes, fingerprint: str,
                                since: float) -> str | None:
        """Why the session of `token_hash` ended, told once and only to the certificate it
        was created with (issue 15 item 1); None when there is nothing to tell.

        A read first: a cookie that names no ended session (a forged or long-gone one) costs
        no write transaction, so it cannot queue the store's writes."""
        if await self._fetchone(
                "SELECT 1 FROM session_events WHERE token_hash = ? AND consumed = 0",
                (token_hash,)) is None:
            return None
        async with self.transaction() as db, db.execute(
                "UPDATE session_events SET consumed = 1 WHERE seq = (SELECT seq FROM"
                " session_events WHERE token_hash = ? AND fingerprint = ? AND consumed = 0"
                " AND at >= ? AND reason NOT IN ('logout', 'rotated')"
                " ORDER BY seq DESC LIMIT 1) RETURNING reason",
                (token_hash, fingerprint, since)) as cursor:
            row = await cursor.fetchone()
        return str(row[0]) if row else None

    # -- pickups (issue 12; gateway.enrollment) ---------------------------------------------

    async def put_pickup(self, record: PickupRecord, now: float, limit: int) -> None:
        """Keep a sealed file; expired ones go, and the oldest beyond `limit`."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM pickups WHERE expires_at <= ?", (now,))
            await db.execute(
                f"INSERT INTO pickups ({PICKUP_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",  # noqa: S608
                record.values())
            await db.execute(
                "DELETE FROM pickups WHERE ticket_hash IN (SELECT ticket_hash FROM pickups"
                " ORDER BY expires_at DESC LIMIT -1 OFFSET ?)", (limit,))

    async def expire_pickups(self, now: float) -> int:
        """Delete the pickups past their lifetime (the sweeper's schedule); how many."""
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM pickups WHERE expires_at <= ?", (now,))
            return cursor.rowcount

    async def peek_pickup(self, ticket_hash: bytes, now: float) -> PickupRecord | None:
        """The waiting file of a ticket hash, left in place (None when gone or expired)."""
        row = await self._fetchone(
            f"SELECT {PICKUP_COLUMNS} FROM pickups WHERE ticket_hash = ?"  # noqa: S608
            " AND expires_at > ?", (ticket_hash, now))
        return pickup_record(row) if row else None

    async def take_pickup(self, ticket_hash: bytes, now: float) -> PickupRecord | None:
        """The waiting file, deleted in the same statement: one taker wins."""
        async with self.transaction() as db, db.execute(
                f"DELETE FROM pickups WHERE ticket_hash = ? AND expires_at > ?"  # noqa: S608
                f" RETURNING {PICKUP_COLUMNS}", (ticket_hash, now)) as cursor:
            row = await cursor.fetchone()
        return pickup_record(row) if row else None

    # -- the acquisition form's throttle (issue 10 item 3; gateway.throttle) ---------------

    async def count_acquire_try(self, address: str, now: float, window: float,
                                limit: int) -> bool:
        """Count one try of `address` unless it already has `limit` in the last `window`
        seconds (then False, not counted). One write transaction: every gateway process on
        this file shares the budget."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM acquire_tries WHERE address = ? AND at <= ?",
                             (address, now - window))
            async with db.execute("SELECT count(*) FROM acquire_tries WHERE address = ?",
                                  (address,)) as cursor:
                row = await cursor.fetchone()
            if row is not None and row[0] >= limit:
                return False
            await db.execute("INSERT INTO acquire_tries (address, at) VALUES (?, ?)",
                             (address, now))
            return True

    async def expire_acquire_tries(self, before: float) -> int:
        """Delete every counted try at or before `before`; how many."""
        async with self.transaction() as db:
            cursor = await db.execute("DELETE FROM acquire_tries WHERE at <= ?", (before,))
            return cursor.rowcount

    async def session_ends_after(self, seq: int) -> list[SessionEnd]:
        """The session events after `seq`, oldest first (what followers apply)."""
        rows = await self._fetchall(
            "SELECT seq, user_id, reason, token_hash, fingerprint FROM session_events"
            " WHERE seq > ? ORDER BY seq", (seq,))
        return [SessionEnd(int(r[0]), str(r[1]), str(r[2]),
                           bytes(r[3]) if r[3] is not None else None, r[4]) for r in rows]

    async def last_session_event(self) -> int:
        """The newest session event's sequence number (0 when there is none)."""
        row = await self._fetchone("SELECT COALESCE(MAX(seq), 0) FROM session_events", ())
        return int(row[0])

    async def session_events_after(self, seq: int) -> list[tuple[int, str, str]]:
        """(seq, user_id, reason) of the session events after `seq`, oldest first."""
        rows = await self._fetchall(
            "SELECT seq, user_id, reason FROM session_events WHERE seq > ? ORDER BY seq", (seq,))
        return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def unlock(self, user_id: str, *, actor: str) -> bool:
        """Helpdesk unlock (§2.7): the failure count starts again from zero.

        False, with nothing written (no audit row either), when the user was not locked.
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE users SET locked = 0, failed_attempts = 0"
                " WHERE user_id = ? AND locked = 1", (user_id,))
            if cursor.rowcount == 1:
                await self._audit(db, "user.unlocked", user_id, actor)
                return True
            if await self._one(db, "SELECT 1 FROM users WHERE user_id = ?", (user_id,)) is None:
                raise NotFound(f"no user {user_id}", code="unknown_user")
            return False

    async def disable(self, user_id: str, *, actor: str) -> None:
        """Disable a user: from now on it logs in like a user ID that does not exist."""
        await self._admin_update(
            user_id, "UPDATE users SET disabled = 1 WHERE user_id = ?", "user.disabled", actor,
            end_sessions="disabled",
        )

    # -- login attempts (R-LOCK-1) ---------------------------------------------------------

    async def reserve_attempt(self, user_id: str, max_failures: int) -> str:
        """Count a try before checking it: "reserved", "locked" (or disabled/unknown) or
        "busy" (every remaining try is being checked right now by concurrent requests)."""
        async with self.transaction() as db:
            await self._expire(db, "users", max_failures, user_id)
            cursor = await db.execute(
                f"UPDATE users SET failed_attempts = failed_attempts + 1, {_PENDING}"  # noqa: S608
                " WHERE user_id = ? AND locked = 0 AND disabled = 0 AND failed_attempts < ?",
                (*self._pending(), user_id, max_failures),
            )
            if cursor.rowcount == 1:
                return "reserved"
            row = await self._one(
                db, "SELECT locked OR disabled FROM users WHERE user_id = ?", (user_id,))
            return "busy" if row is not None and not row[0] else "locked"

    async def record_success(
        self, user_id: str, *, login: bool = True, actor: str = LOGIN_ACTOR
    ) -> tuple[bool, datetime | None]:
        """The reserved try was right: clear the count (and, for a login, stamp it).

        Returns whether it still counts (False when a concurrent wrong try locked the user
        or the helpdesk disabled it meanwhile) and the previous login time (§2.2(5)).
        """
        now = to_epoch(self._clock.now())
        async with self.transaction() as db:
            row = await self._one(
                db, "SELECT last_login_at FROM users WHERE user_id = ? AND locked = 0"
                " AND disabled = 0", (user_id,),
            )
            if row is None:
                return False, None
            if login:
                await db.execute(
                    "UPDATE users SET failed_attempts = 0, last_login_at = ?,"
                    " pending_attempts = MAX(pending_attempts - 1, 0) WHERE user_id = ?",
                    (now, user_id),
                )
                await self._audit(db, "login.succeeded", user_id, actor)
            else:
                await db.execute(
                    "UPDATE users SET failed_attempts = 0,"
                    " pending_attempts = MAX(pending_attempts - 1, 0) WHERE user_id = ?",
                    (user_id,),
                )
        return True, from_epoch(row[0]) if row[0] is not None else None

    async def record_failure(
        self, user_id: str, max_failures: int, *, actor: str = LOGIN_ACTOR
    ) -> tuple[int, bool]:
        """The reserved try was wrong: lock once the count reached the limit; (count, locked)."""
        return await self._record_failure("users", user_id, max_failures, actor, known=True)

    async def record_refused(
        self, user_id: str, *, known: bool, actor: str = LOGIN_ACTOR
    ) -> None:
        """A try that was not evaluated because no tries are left (locked)."""
        async with self.transaction() as db:
            await self._audit(db, "login.refused", user_id, actor, {"known": known})

    async def reserve_unknown_attempt(self, user_id: str, max_failures: int) -> str:
        """`reserve_attempt` for a user ID that does not exist (or is disabled) (R-LOCK-2)."""
        now = to_epoch(self._clock.now())
        owner, until = self._pending()
        async with self.transaction() as db:
            await self._expire(db, "unknown_attempts", max_failures, user_id)
            cursor = await db.execute(
                "INSERT INTO unknown_attempts (user_id, failed_attempts, locked, updated_at,"  # noqa: S608
                " pending_attempts, pending_owner, pending_until) VALUES (?, 1, 0, ?, 1, ?, ?)"
                " ON CONFLICT (user_id) DO UPDATE"
                " SET failed_attempts = failed_attempts + 1, updated_at = excluded.updated_at,"
                f" {_PENDING} WHERE locked = 0 AND failed_attempts < ?",
                (user_id, now, owner, until, owner, until, max_failures),
            )
            if cursor.rowcount == 1:
                return "reserved"
            row = await self._one(
                db, "SELECT locked FROM unknown_attempts WHERE user_id = ?", (user_id,))
            return "busy" if row is not None and not row[0] else "locked"

    async def record_unknown_failure(
        self, user_id: str, max_failures: int, *, actor: str = LOGIN_ACTOR
    ) -> tuple[int, bool]:
        """`record_failure` for a user ID that does not exist (or is disabled)."""
        return await self._record_failure("unknown_attempts", user_id, max_failures, actor,
                                          known=False)

    async def _record_failure(
        self, table: str, user_id: str, max_failures: int, actor: str, *, known: bool
    ) -> tuple[int, bool]:
        # `table` is one of two constants above, never input.
        async with self.transaction() as db:
            await db.execute(
                f"UPDATE {table} SET pending_attempts = MAX(pending_attempts - 1, 0)"  # noqa: S608
                " WHERE user_id = ?", (user_id,),
            )
            cursor = await db.execute(
                f"UPDATE {table} SET locked = 1"  # noqa: S608
                " WHERE user_id = ? AND locked = 0 AND failed_attempts >= ?",
                (user_id, max_failures),
            )
            now_locked = cursor.rowcount == 1
            row = await self._one(
                db, f"SELECT failed_attempts, locked FROM {table} WHERE user_id = ?",  # noqa: S608
                (user_id,),
            )
            failures, locked = (int(row[0]), bool(row[1])) if row else (0, False)
            if now_locked and known:  # every gateway process ends the user's sessions
                await self._end_sessions(db, user_id, "locked")
            await self._audit(
                db, "login.locked" if now_locked else "login.failed", user_id, actor,
                {"failures": failures, "known": known},
            )
        return failures, locked

    def _pending(self) -> tuple[str, int]:
        """The owner and deadline of a try counted now (parameters of _PENDING)."""
        return self.owner.id, to_epoch(self._clock.now() + ATTEMPT_DEADLINE)

    async def expire_attempts(self, max_failures: int) -> list[str]:
        """Settle every pending try whose check can no longer complete (R-FAULT-3): at the
        gateway's start and on its sweeper's schedule. Returns the user IDs (known first)."""
        async with self.transaction() as db:
            return [*await self._expire(db, "users", max_failures, None),
                    *await self._expire(db, "unknown_attempts", max_failures, None)]

    async def _expire(
        self, db: aiosqlite.Connection, table: str, max_failures: int, user_id: str | None
    ) -> list[str]:
        # One statement: stale pending tries count as failures (module docstring). `table`
        # is one of two constants, never input.
        now = to_epoch(self._clock.now())
        pattern, me = self.owner.earlier_runs
        dead_owner = DEAD_OWNER.format(column="pending_owner")
        async with db.execute(
            f"UPDATE {table} SET pending_attempts = 0, pending_owner = NULL,"  # noqa: S608
            " pending_until = NULL, locked = MAX(locked, failed_attempts >= ?)"
            f" WHERE pending_attempts > 0 AND (COALESCE(pending_until, 0) < ? OR {dead_owner})"
            " AND (? IS NULL OR user_id = ?) RETURNING user_id, failed_attempts, locked",
            (max_failures, now, pattern, me, user_id, user_id),
        ) as cursor:
            rows = list(await cursor.fetchall())
        for row in rows:
            await self._audit(db, "login.attempt_expired", row[0], "gateway",
                              {"failures": row[1], "locked": bool(row[2]),
                               "known": table == "users"})
        return [row[0] for row in rows]

    # -- audit ---------------------------------------------------------------------------

    async def audit_entries(self, *, limit: int = 1000) -> list[audit.AuditEntry]:
        """The newest `limit` audit entries, oldest first."""
        async with self._lock:
            return await audit.entries(self._db, limit=limit)

    async def search_audit(self, **filters: Any) -> list[audit.AuditEntry]:
        """Audit entries matching `common.audit.search`'s filters, oldest first."""
        async with self._lock:
            return await audit.search(self._db, **filters)

    async def verify_audit(self) -> list[str]:
        """Problems found in the audit chain: edited, deleted-middle or deleted-last rows."""
        async with self._lock:
            return await audit.verify_chain(self._db)
