"""The CA's store on PostgreSQL (issue 13): the same interface and rules as `ca.store`
(SQLite), for several CA nodes sharing one database.

How each rule of the SQLite store holds across nodes:
- Serial uniqueness is the primary key; "record intent, then sign" is the same committed
  'intended' row before any signature (STYLE 5, R-CERT-3).
- The check-then-reserve of an acquisition or renewal (`reserve`) runs under
  `pg_advisory_xact_lock` on the user, taken first in its transaction: two nodes reserving
  for one user queue, and the second one's check (a new snapshot per statement under READ
  COMMITTED) sees the first one's committed intent, so exactly one certificate results.
- Sequences that followers read "after N" (revocation_seq; audit ids, see common.audit_pg)
  come from a counter row bumped in the same transaction, never from a sequence: the row
  lock makes the transactions commit in the order of their numbers.
- Intent and attempt settlement, the counted try, the lockout: the same single statements,
  with PostgreSQL's GREATEST for SQLite's scalar MAX. Times are Unix seconds bound as
  parameters (never the server's now(): the tests' FakeClock decides).
- A lost database is `Unavailable` (`store_unavailable`, 503 + Retry-After), never a
  traceback.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar

import asyncpg

from ca.store import (
    _CERT_COLUMNS,
    COPIED_TABLES,
    AcquisitionSecret,
    CertRecord,
    IntentExpired,
    _cert,
)
from common import audit_pg
from common.audit import AuditEntry
from common.errors import Unavailable
from common.postgres import (
    PostgresSettings,
    advisory_key,
    current_leader,
    migrate,
    notify,
    run_transaction,
)
from common.sqlite import Owner, from_epoch, to_epoch

T = TypeVar("T")

# NOTIFY channel of committed revocations (payload: the new revocation sequence): every node
# LISTENs and catches its feed up at once, so its OCSP says "revoked" without waiting for the
# next poll (issue 13). The poll stays as the fallback while LISTEN reconnects.
REVOCATION_CHANNEL = "sekisho_ca_revocations"

# 1: the SQLite store's schema after its migration 2, in one step, plus the counter row.
_SCHEMA_1 = """
    CREATE TABLE certificates (
        serial text PRIMARY KEY,
        user_id text NOT NULL,
        generation text NOT NULL,
        kind text NOT NULL,
        state text NOT NULL,
        not_before bigint NOT NULL,
        not_after bigint NOT NULL,
        der bytea,
        fingerprint_sha256 text,
        revoked_at bigint,
        revocation_reason text,
        revocation_seq bigint UNIQUE,
        created_at bigint NOT NULL,
        owner text,
        deadline bigint
    );
    CREATE INDEX certificates_by_user ON certificates (user_id, not_before);
    CREATE INDEX certificates_revoked ON certificates (generation, revocation_seq)
        WHERE revoked_at IS NOT NULL;
    CREATE INDEX certificates_intended ON certificates (deadline) WHERE state = 'intended';
    CREATE TABLE acquisition_secrets (
        user_id text PRIMARY KEY,
        password_hash text NOT NULL,
        failed_attempts integer NOT NULL DEFAULT 0,
        locked integer NOT NULL DEFAULT 0,
        issued_at bigint NOT NULL,
        updated_at bigint NOT NULL,
        pending_attempts integer NOT NULL DEFAULT 0,
        pending_until bigint,
        pending_owner text
    );
    CREATE INDEX acquisition_pending ON acquisition_secrets (pending_until)
        WHERE pending_attempts > 0;
    CREATE TABLE crl_state (
        generation text PRIMARY KEY,
        crl_number bigint NOT NULL,
        this_update bigint NOT NULL,
        next_update bigint NOT NULL,
        der bytea NOT NULL,
        revocation_seq bigint NOT NULL DEFAULT 0
    );
    CREATE TABLE ca_counters (
        name text PRIMARY KEY,
        value bigint NOT NULL
    );
    INSERT INTO ca_counters VALUES ('revocation_seq', 0);
"""
# 2: the leader jobs (issue 13). `leader_terms` is each job's fencing token: a newly elected
# leader bumps its job's term before doing anything, and every leader write checks, in its own
# transaction, that the term is still its own (FOR SHARE: the next leader's bump waits for
# that transaction) and that its lock connection still holds the advisory lock. Responder
# certificates a leader renewed reach every node from `ocsp_responders`; `cutover_effects`
# records once per cluster that a cutover took effect (its primary key: never twice).
_SCHEMA_2 = """
    CREATE TABLE leader_terms (
        job text PRIMARY KEY,
        term bigint NOT NULL,
        node text NOT NULL,
        since bigint NOT NULL
    );
    CREATE TABLE ocsp_responders (
        generation text NOT NULL,
        serial text NOT NULL,
        certificate bytea NOT NULL,
        key_pem bytea,
        not_after bigint NOT NULL,
        issued_at bigint NOT NULL,
        node text NOT NULL,
        term bigint NOT NULL,
        PRIMARY KEY (generation, serial)
    );
    CREATE TABLE cutover_effects (
        cutover text PRIMARY KEY,
        effective_at bigint NOT NULL,
        affected integer NOT NULL,
        recorded_at bigint NOT NULL,
        node text NOT NULL,
        term bigint NOT NULL
    );
"""
# 3: acquisition tickets (ca.tickets) shared by the nodes: a ticket one node issued is
# redeemed by whichever node the gateway asks next.
_SCHEMA_3 = """
    CREATE TABLE acquisition_tickets (
        ticket_hash bytea PRIMARY KEY,
        user_id text NOT NULL,
        password_mac bytea NOT NULL,
        expires_at double precision NOT NULL
    );
    CREATE INDEX acquisition_tickets_by_expiry ON acquisition_tickets (expires_at);
"""
MIGRATIONS: tuple[str, ...] = (
    _SCHEMA_1 + audit_pg.SCHEMA,
    _SCHEMA_2,
    _SCHEMA_3,
)

# NOTIFY channel of a renewed OCSP responder (payload: the generation): every node installs
# the leader's certificate (and encrypted key file) from `ocsp_responders` at once.
RESPONDER_CHANNEL = "sekisho_ca_responders"

# A leader job's fence (ca.leadership.LeaderJob.fence): called inside the writing
# transaction, True while the caller is still the job's leader.
Fence = Callable[[asyncpg.Connection], Awaitable[bool]]

# Errors that mean "the database is not reachable now" (as opposed to a bug or a constraint).
_UNREACHABLE = (OSError, asyncpg.exceptions.PostgresConnectionError,
                asyncpg.exceptions.InterfaceError, asyncpg.exceptions.CannotConnectNowError,
                asyncpg.exceptions.TooManyConnectionsError,
                asyncpg.exceptions.AdminShutdownError, TimeoutError,
                # The database was dropped or renamed, the password or role changed: an
                # operator's fix, and a 503 meanwhile, not a 500.
                asyncpg.exceptions.InvalidCatalogNameError,
                asyncpg.exceptions.InvalidAuthorizationSpecificationError,
                asyncpg.exceptions.InvalidPasswordError)

_LIVE = "NOT (state = 'intended' AND COALESCE(deadline, 0) < $2)"
# Whose reservations (intents, counted tries) can no longer complete, besides those past
# their deadline: an earlier run of the caller's own instance (`Owner.earlier_runs`), and the
# daemon of a node that has no session left in this database - killed, or cut off from it -
# so that the surviving nodes settle a dead node's reservations within a recovery pass (2 s),
# as its own restart would, instead of refusing its users until the request deadline
# (10 min; issue 13: no single point of failure). A live daemon always holds sessions named
# `sekisho-ca:<node>` or `sekisho-ca:<node>:listen` (ca.storage.postgres_settings; its
# recovery pass and revocation poll use its pool every few seconds), and application_name is
# visible to every role. A node only cut off is still safe: its intent, once abandoned, can
# no longer be stored as issued (`complete` needs state 'intended'), so nothing it signs
# is ever delivered.
_DEAD_OWNER = (
    "((COALESCE({column}, '') LIKE ${p} AND {column} != ${q})"
    " OR ({column} LIKE 'ca-daemon@%' AND NOT EXISTS (SELECT 1 FROM pg_stat_activity"
    " WHERE datname = current_database()"
    " AND split_part(application_name, ':', 1) = 'sekisho-ca'"
    " AND split_part(application_name, ':', 2)"
    " = split_part(split_part({column}, '@', 2), ':', 1))))")


def _unavailable(exc: BaseException) -> Unavailable:
    return Unavailable(f"the CA database is unreachable ({type(exc).__name__}); retry",
                       code="store_unavailable")


class PgStore:
    """Certificates, acquisition secrets, CRL state and the audit log of a CA cluster."""

    what = "CA database"

    def __init__(self, settings: PostgresSettings, pool: asyncpg.Pool) -> None:
        self.settings = settings
        self._pool = pool

    @classmethod
    async def open(cls, settings: PostgresSettings, *, migrate_schema: bool = True) -> PgStore:
        """Connect (a pool) and bring the schema up to date (under the migration lock)."""
        try:
            pool = await settings.create_pool()
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from None
        store = cls(settings, pool)
        if migrate_schema:
            try:
                await store.migrate()
            except BaseException:
                await pool.close()
                raise
        return store

    async def migrate(self) -> tuple[int, int]:
        """Apply the pending migrations; (version before, version after)."""
        async with self._pool.acquire() as conn:
            result = await migrate(conn, MIGRATIONS, name="ca")
        return result.before, result.after

    async def schema_status(self) -> tuple[int, int]:
        """(applied schema version, the version this program knows)."""
        from common.postgres import schema_version

        async with self._pool.acquire() as conn:
            return await schema_version(conn), len(MIGRATIONS)

    async def close(self) -> None:
        """Close the pool."""
        await self._pool.close()

    async def _tx(self, work: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        # READ COMMITTED with explicit locks (the user's advisory lock, the counter and audit
        # head rows): every statement sees what committed before it, and the locks order the
        # writers; deadlocks (two bulk revocations) are retried by run_transaction.
        try:
            return await run_transaction(self._pool, work, isolation="read_committed")
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from None

    @contextlib.asynccontextmanager
    async def _read(self) -> AsyncIterator[asyncpg.Connection]:
        try:
            async with self._pool.acquire() as conn:
                yield conn
        except _UNREACHABLE as exc:
            raise _unavailable(exc) from None

    # -- certificates ------------------------------------------------------------------

    async def reserve(
        self, *, serial: str, user_id: str, generation: str, kind: str, not_before: datetime,
        not_after: datetime, now: datetime, check: Callable[[list[CertRecord]], None],
        actor: str, owner: str, deadline: datetime,
    ) -> None:
        """Record the intent to issue after `check` accepted the user's certificates; the
        user's advisory lock makes check-then-insert atomic across nodes (module docstring)."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("SELECT pg_advisory_xact_lock($1)",
                               advisory_key(f"sekisho:ca:user:{user_id}"))
            rows = await conn.fetch(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = $1"  # noqa: S608
                f" AND state != 'abandoned' AND {_LIVE} ORDER BY not_before, created_at",
                user_id, to_epoch(now))
            check([_cert(row) for row in rows])
            await conn.execute(
                "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before,"
                " not_after, created_at, owner, deadline)"
                " VALUES ($1, $2, $3, $4, 'intended', $5, $6, $7, $8, $9)",
                serial, user_id, generation, kind, to_epoch(not_before), to_epoch(not_after),
                to_epoch(now), owner, to_epoch(deadline))
            await audit_pg.append(
                conn, at=now, actor=actor, action="certificate.intended", subject=user_id,
                details={"serial": serial, "generation": generation, "kind": kind})

        await self._tx(work)

    async def complete(
        self, serial: str, der: bytes, fingerprint: str, now: datetime, actor: str
    ) -> CertRecord:
        """Store the signed certificate, only for a live intent (else `IntentExpired`)."""

        async def work(conn: asyncpg.Connection) -> CertRecord:
            row = await conn.fetchrow(
                "UPDATE certificates SET state = 'issued', der = $1,"  # noqa: S608
                " fingerprint_sha256 = $2 WHERE serial = $3 AND state = 'intended'"
                f" AND deadline >= $4 AND revoked_at IS NULL RETURNING {_CERT_COLUMNS}",
                der, fingerprint, serial, to_epoch(now))
            if row is None:
                raise IntentExpired(
                    "the certificate could not be issued in time (the CA was overloaded or"
                    " restarted); nothing was delivered: try again", code=IntentExpired.code)
            record = _cert(row)
            await audit_pg.append(
                conn, at=now, actor=actor, action="certificate.issued", subject=record.user_id,
                details={"serial": serial, "not_after": record.not_after.isoformat()})
            return record

        return await self._tx(work)

    @staticmethod
    async def _lock_revocation_seq(conn: asyncpg.Connection) -> int:
        """Lock the revocation counter until commit and return its value: revocations then
        commit in the order of their numbers (module docstring)."""
        return int(await conn.fetchval(
            "SELECT value FROM ca_counters WHERE name = 'revocation_seq' FOR UPDATE"))

    @staticmethod
    async def _set_revocation_seq(conn: asyncpg.Connection, value: int) -> None:
        """Move the counter and wake every node's feed (NOTIFY is delivered at commit, so a
        node woken by it finds the revocation committed)."""
        await conn.execute("UPDATE ca_counters SET value = $1 WHERE name = 'revocation_seq'",
                           value)
        await notify(conn, REVOCATION_CHANNEL, str(value))

    async def abandon(self, serial: str, der: bytes | None, now: datetime, reason: str) -> None:
        """Mark an intent that was never delivered; a signed one is also revoked."""

        async def work(conn: asyncpg.Connection) -> None:
            if der is None:
                await conn.execute(
                    "UPDATE certificates SET state = 'abandoned' WHERE serial = $1"
                    " AND state = 'intended'", serial)
            else:
                seq = await self._lock_revocation_seq(conn)
                got = await conn.fetchval(
                    "UPDATE certificates SET state = 'abandoned', der = $1, revoked_at ="
                    " COALESCE(revoked_at, $2), revocation_reason = COALESCE(revocation_reason,"
                    " 'cessationOfOperation'), revocation_seq = COALESCE(revocation_seq, $3)"
                    " WHERE serial = $4 AND state IN ('intended', 'abandoned')"
                    " RETURNING revocation_seq", der, to_epoch(now), seq + 1, serial)
                if got == seq + 1:
                    await self._set_revocation_seq(conn, seq + 1)
            await audit_pg.append(conn, at=now, actor="ca", action="certificate.abandoned",
                                  subject=serial, details={"why": reason})

        await self._tx(work)

    async def reconcile_intents(self, now: datetime, owner: Owner) -> list[tuple[str, str]]:
        """Settle every intent whose request can no longer complete (R-FAULT-2), as
        `ca.store.Store.reconcile_intents`: past its deadline, or held by an earlier run of
        `owner`'s instance (on a cluster each node is its own instance)."""
        pattern, me = owner.earlier_runs
        dead_owner = _DEAD_OWNER.format(column="owner", p=2, q=3)
        stale = f"state = 'intended' AND (COALESCE(deadline, 0) < $1 OR {dead_owner})"

        async def work(conn: asyncpg.Connection) -> list[tuple[str, str]]:
            settled = [(row[0], row[1]) for row in await conn.fetch(
                f"UPDATE certificates SET state = 'abandoned' WHERE {stale}"  # noqa: S608
                " AND der IS NULL RETURNING serial, user_id", to_epoch(now), pattern, me)]
            # The counter before the certificate rows, as `revoke` takes them: no lock cycle.
            seq = start = await self._lock_revocation_seq(conn)
            signed = await conn.fetch(
                f"SELECT serial FROM certificates WHERE {stale} AND der IS NOT NULL"  # noqa: S608
                " ORDER BY serial FOR UPDATE", to_epoch(now), pattern, me)
            if signed:
                for (serial,) in signed:
                    seq += 1
                    row = await conn.fetchrow(
                        "UPDATE certificates SET state = 'abandoned', revoked_at = $1,"
                        " revocation_reason = 'cessationOfOperation', revocation_seq = $2"
                        " WHERE serial = $3 RETURNING serial, user_id",
                        to_epoch(now), seq, serial)
                    settled.append((row[0], row[1]))
            if seq != start:
                await self._set_revocation_seq(conn, seq)
            for serial, user_id in settled:
                await audit_pg.append(
                    conn, at=now, actor="ca", action="certificate.abandoned", subject=serial,
                    details={"why": "intent_stale", "user_id": user_id})
            return settled

        return await self._tx(work)

    async def get(self, serial: str) -> CertRecord | None:
        """The certificate with this serial (any state), or None."""
        async with self._read() as conn:
            row = await conn.fetchrow(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = $1",  # noqa: S608
                serial)
        return _cert(row) if row else None

    async def certificates_of(self, user_id: str) -> list[CertRecord]:
        """A user's issued certificates, oldest first."""
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = $1"  # noqa: S608
                " AND state = 'issued' ORDER BY not_before, created_at", user_id)
        return [_cert(row) for row in rows]

    async def list_certificates(
        self, *, user_id: str | None = None, generation: str | None = None,
        issued_before: datetime | None = None, limit: int | None = None,
        states: Sequence[str] = ("issued",), unrevoked: bool = False,
    ) -> list[CertRecord]:
        """Certificates in `states` (issued ones by default), newest first, optionally filtered."""
        clauses = ["state = ANY($1::text[])"]
        params: list[Any] = [list(states)]
        if unrevoked:
            clauses.append("revoked_at IS NULL")
        for column, op, value in (("user_id", "=", user_id), ("generation", "=", generation),
                                  ("not_before", "<=", None if issued_before is None
                                   else to_epoch(issued_before))):
            if value is not None:
                params.append(value)
                clauses.append(f"{column} {op} ${len(params)}")
        sql = (f"SELECT {_CERT_COLUMNS} FROM certificates"  # noqa: S608 - constant clauses
               f" WHERE {' AND '.join(clauses)} ORDER BY not_before DESC, created_at DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        async with self._read() as conn:
            return [_cert(row) for row in await conn.fetch(sql, *params)]

    async def revoke(
        self, serials: Sequence[str], *, at: datetime, reason: str, actor: str,
        details: dict[str, Any] | None = None,
    ) -> list[CertRecord]:
        """Revoke the given certificates in one transaction (as `ca.store.Store.revoke`);
        their revocation numbers come from the counter row, locked until commit."""

        async def work(conn: asyncpg.Connection) -> list[CertRecord]:
            seq = start = await self._lock_revocation_seq(conn)
            revoked: list[CertRecord] = []
            for serial in serials:
                row = await conn.fetchrow(
                    "UPDATE certificates SET revoked_at = $1, revocation_reason = $2,"  # noqa: S608
                    " revocation_seq = $3, state = CASE state WHEN 'intended' THEN 'abandoned'"
                    " ELSE state END WHERE serial = $4 AND revoked_at IS NULL"
                    f" RETURNING {_CERT_COLUMNS}", to_epoch(at), reason, seq + 1, serial)
                if row is None:
                    continue
                seq += 1
                revoked.append(_cert(row))
            if seq != start:
                await self._set_revocation_seq(conn, seq)
            # The audit head last: every transaction takes it last, so no lock cycle.
            for record in revoked:
                await audit_pg.append(
                    conn, at=at, actor=actor, action="certificate.revoked",
                    subject=record.user_id,
                    details={"serial": record.serial, "reason": reason, **(details or {})})
            return revoked

        return await self._tx(work)

    async def revocations_after(self, seq: int, limit: int = 1000) -> list[CertRecord]:
        """Revocations with revocation_seq greater than `seq`, in order (the gateway's feed)."""
        async with self._read() as conn:
            rows = await conn.fetch(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE revocation_seq > $1"  # noqa: S608
                " ORDER BY revocation_seq LIMIT $2", seq, limit)
        return [_cert(row) for row in rows]

    async def last_revocation_seq(self) -> int:
        """The highest committed revocation sequence number (0 when nothing is revoked)."""
        async with self._read() as conn:
            return int(await conn.fetchval(
                "SELECT COALESCE(MAX(revocation_seq), 0) FROM certificates"))

    async def revoked_entries(
        self, generation: str, *, expired_before: datetime | None
    ) -> list[tuple[str, int, str]]:
        """(serial hex, revoked_at epoch, reason) of a generation's revoked certificates."""
        sql = ("SELECT serial, revoked_at, revocation_reason FROM certificates"
               " WHERE generation = $1 AND revoked_at IS NOT NULL")
        params: list[Any] = [generation]
        if expired_before is not None:
            sql += " AND not_after >= $2"
            params.append(to_epoch(expired_before))
        async with self._read() as conn:
            rows = await conn.fetch(sql + " ORDER BY revocation_seq", *params)
        return [(row[0], int(row[1]), row[2]) for row in rows]

    async def status_index(self) -> list[tuple[str, str, int | None, str | None]]:
        """(serial, generation, revoked_at, reason) of every signed certificate (OCSP index)."""
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT serial, generation, revoked_at, revocation_reason FROM certificates"
                " WHERE der IS NOT NULL OR revoked_at IS NOT NULL")
        return [(row[0], row[1], row[2], row[3]) for row in rows]

    # -- acquisition secrets -----------------------------------------------------------

    async def set_acquisition_secret(
        self, user_id: str, password_hash: str, now: datetime, actor: str
    ) -> None:
        """Create or replace a user's acquisition password; clears failures and the lock."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute(
                "INSERT INTO acquisition_secrets (user_id, password_hash, failed_attempts,"
                " locked, issued_at, updated_at) VALUES ($1, $2, 0, 0, $3, $3)"
                " ON CONFLICT (user_id) DO UPDATE SET password_hash = excluded.password_hash,"
                " failed_attempts = 0, locked = 0, pending_attempts = 0, pending_owner = NULL,"
                " pending_until = NULL, issued_at = excluded.issued_at,"
                " updated_at = excluded.updated_at", user_id, password_hash, to_epoch(now))
            await audit_pg.append(conn, at=now, actor=actor,
                                  action="acquisition_password.issued", subject=user_id)

        await self._tx(work)

    async def get_acquisition_secret(self, user_id: str) -> AcquisitionSecret | None:
        """A user's acquisition secret, or None when the officer never issued one."""
        async with self._read() as conn:
            row = await conn.fetchrow(
                "SELECT user_id, password_hash, failed_attempts, locked, issued_at"
                " FROM acquisition_secrets WHERE user_id = $1", user_id)
        if row is None:
            return None
        return AcquisitionSecret(row[0], row[1], row[2], bool(row[3]), from_epoch(row[4]))

    async def reserve_acquisition_attempt(
        self, user_id: str, max_failures: int, *, now: datetime, deadline: datetime,
        owner: Owner,
    ) -> str:
        """Count a try before checking it (R-CERT-5): "reserved", "locked" or "busy"; one
        conditional UPDATE, so concurrent tries on any node never exceed `max_failures`."""

        async def work(conn: asyncpg.Connection) -> str:
            await self._expire_attempts(conn, now, max_failures, owner, user_id)
            status = await conn.execute(
                "UPDATE acquisition_secrets SET failed_attempts = failed_attempts + 1,"
                " pending_attempts = pending_attempts + 1, pending_owner = $1,"
                " pending_until = GREATEST(COALESCE(pending_until, 0), $2)"
                " WHERE user_id = $3 AND locked = 0 AND failed_attempts < $4",
                owner.id, to_epoch(deadline), user_id, max_failures)
            if status == "UPDATE 1":
                return "reserved"
            locked = await conn.fetchval(
                "SELECT locked FROM acquisition_secrets WHERE user_id = $1", user_id)
            return "busy" if locked is not None and not locked else "locked"

        return await self._tx(work)

    async def expire_acquisition_attempts(
        self, now: datetime, max_failures: int, owner: Owner
    ) -> list[str]:
        """Settle every pending try that can no longer complete; returns the user IDs."""
        return await self._tx(
            lambda conn: self._expire_attempts(conn, now, max_failures, owner, None))

    @staticmethod
    async def _expire_attempts(
        conn: asyncpg.Connection, now: datetime, max_failures: int, owner: Owner,
        user_id: str | None,
    ) -> list[str]:
        """One statement (R-FAULT-3, see `ca.store.Store._expire_attempts`): an expired
        pending try counts as a failure, never refunded."""
        pattern, me = owner.earlier_runs
        dead_owner = _DEAD_OWNER.format(column="pending_owner", p=3, q=4)
        rows = await conn.fetch(
            "UPDATE acquisition_secrets SET pending_attempts = 0, pending_owner = NULL,"  # noqa: S608
            " pending_until = NULL,"
            " locked = GREATEST(locked, (failed_attempts >= $1)::integer), updated_at = $2"
            f" WHERE pending_attempts > 0 AND (COALESCE(pending_until, 0) < $2 OR {dead_owner})"
            " AND ($5::text IS NULL OR user_id = $5) RETURNING user_id, failed_attempts, locked",
            max_failures, to_epoch(now), pattern, me, user_id)
        for row in rows:
            await audit_pg.append(
                conn, at=now, actor="ca", action="acquisition_password.attempt_expired",
                subject=row[0], details={"failures": row[1], "locked": bool(row[2])})
        return [row[0] for row in rows]

    async def acquisition_succeeded(self, user_id: str, now: datetime) -> bool:
        """The reserved try was right: clear the failure count (False when locked meanwhile)."""

        async def work(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "UPDATE acquisition_secrets SET failed_attempts = 0, updated_at = $1,"
                " pending_attempts = GREATEST(pending_attempts - 1, 0)"
                " WHERE user_id = $2 AND locked = 0", to_epoch(now), user_id)
            return bool(status == "UPDATE 1")

        return await self._tx(work)

    async def acquisition_failed(
        self, user_id: str, now: datetime, max_failures: int, actor: str
    ) -> tuple[int, bool]:
        """The reserved try was wrong: keep the count, lock at the limit; returns both."""

        async def work(conn: asyncpg.Connection) -> tuple[int, bool]:
            row = await conn.fetchrow(
                "UPDATE acquisition_secrets SET"
                " locked = GREATEST(locked, (failed_attempts >= $1)::integer),"
                " pending_attempts = GREATEST(pending_attempts - 1, 0), updated_at = $2"
                " WHERE user_id = $3 RETURNING failed_attempts, locked",
                max_failures, to_epoch(now), user_id)
            failures, locked = (int(row[0]), bool(row[1])) if row else (0, False)
            await audit_pg.append(
                conn, at=now, actor=actor,
                action="acquisition_password.locked" if locked else "acquisition_password.failed",
                subject=user_id, details={"failures": failures})
            return failures, locked

        return await self._tx(work)

    # -- CRL state ---------------------------------------------------------------------

    async def save_crl(
        self, generation: str, crl_number: int, this_update: datetime, next_update: datetime,
        der: bytes, revocation_seq: int = 0, *, fence: Fence | None = None,
    ) -> bool:
        """Persist the newest CRL of a generation (its number only grows: a conditional
        upsert) with the revocation sequence it covers (R-FAULT-1); False when this number
        or a higher one is already stored (another node signed it: issue 13), or when
        `fence` says, inside this transaction, that the caller no longer leads CRL signing
        (a deposed leader's CRL is never stored, whatever its number)."""

        async def work(conn: asyncpg.Connection) -> bool:
            status = await conn.execute(
                "INSERT INTO crl_state (generation, crl_number, this_update, next_update, der,"
                " revocation_seq) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (generation)"
                " DO UPDATE SET crl_number = excluded.crl_number,"
                " this_update = excluded.this_update, next_update = excluded.next_update,"
                " der = excluded.der, revocation_seq = excluded.revocation_seq"
                " WHERE excluded.crl_number > crl_state.crl_number",
                generation, crl_number, to_epoch(this_update), to_epoch(next_update), der,
                revocation_seq)
            return bool(status == "INSERT 0 1")

        if fence is None:
            return await self._tx(work)
        led, saved = await self.fenced(fence, work)
        return led and bool(saved)

    async def crl_number(self, generation: str) -> int:
        """The number of the newest stored CRL of a generation (0 before the first)."""
        async with self._read() as conn:
            value = await conn.fetchval(
                "SELECT crl_number FROM crl_state WHERE generation = $1", generation)
        return int(value) if value is not None else 0

    async def put_ticket(self, ticket_hash: bytes, user_id: str, password_mac: bytes,
                         expires_at: float, now: float, limit: int) -> None:
        """Keep a ticket; expired ones go, and the oldest beyond `limit`."""

        async def work(conn: asyncpg.Connection) -> None:
            await conn.execute("DELETE FROM acquisition_tickets WHERE expires_at <= $1", now)
            await conn.execute(
                "INSERT INTO acquisition_tickets (ticket_hash, user_id, password_mac,"
                " expires_at) VALUES ($1, $2, $3, $4)", ticket_hash, user_id, password_mac,
                expires_at)
            await conn.execute(
                "DELETE FROM acquisition_tickets WHERE ticket_hash IN (SELECT ticket_hash"
                " FROM acquisition_tickets ORDER BY expires_at DESC OFFSET $1)", limit)

        await self._tx(work)

    async def take_ticket(self, ticket_hash: bytes) -> tuple[str, bytes, float] | None:
        """A ticket's (user, password MAC, expiry), deleted in the same statement: it serves
        once, whichever node asks first."""

        async def work(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(
                "DELETE FROM acquisition_tickets WHERE ticket_hash = $1"
                " RETURNING user_id, password_mac, expires_at", ticket_hash)

        row = await self._tx(work)
        return (str(row[0]), bytes(row[1]), float(row[2])) if row else None

    async def load_crl(
        self, generation: str
    ) -> tuple[int, datetime, datetime, bytes, int] | None:
        """The stored CRL of a generation: (number, thisUpdate, nextUpdate, DER, the
        revocation sequence it covers)."""
        async with self._read() as conn:
            row = await conn.fetchrow(
                "SELECT crl_number, this_update, next_update, der, revocation_seq"
                " FROM crl_state WHERE generation = $1", generation)
        if row is None:
            return None
        return int(row[0]), from_epoch(row[1]), from_epoch(row[2]), bytes(row[3]), int(row[4])

    # -- leader jobs (issue 13) -----------------------------------------------------------

    async def claim_leader_term(self, job: str, node: str, now: datetime) -> int:
        """A newly elected leader's fencing term for `job`: one more than the last leader's.
        Waits for a deposed leader's fenced transaction still holding the term row (FOR
        SHARE), so the new term starts after the old leader's last write."""

        async def work(conn: asyncpg.Connection) -> int:
            return int(await conn.fetchval(
                "INSERT INTO leader_terms (job, term, node, since) VALUES ($1, 1, $2, $3)"
                " ON CONFLICT (job) DO UPDATE SET term = leader_terms.term + 1,"
                " node = excluded.node, since = excluded.since RETURNING term",
                job, node, to_epoch(now)))

        return await self._tx(work)

    @staticmethod
    async def term_is(conn: asyncpg.Connection, job: str, term: int) -> bool:
        """Inside a leader's transaction: whether `term` is still `job`'s term; the row stays
        share-locked until the transaction ends, so no new term starts meanwhile."""
        stored = await conn.fetchval(
            "SELECT term FROM leader_terms WHERE job = $1 FOR SHARE", job)
        return stored is not None and int(stored) == term

    @staticmethod
    async def fenced_term(conn: asyncpg.Connection, job: str) -> int:
        """Inside a fenced transaction: the term the fence checked (share-locked, so it
        cannot have changed), to record with the leader's write."""
        return int(await conn.fetchval("SELECT term FROM leader_terms WHERE job = $1", job))

    async def leader_terms(self) -> dict[str, tuple[int, str]]:
        """job -> (its last term, the node that claimed it)."""
        async with self._read() as conn:
            rows = await conn.fetch("SELECT job, term, node FROM leader_terms")
        return {str(row[0]): (int(row[1]), str(row[2])) for row in rows}

    async def fenced(self, fence: Fence, work: Callable[[asyncpg.Connection], Awaitable[T]],
                     *, idle_timeout_ms: int = 5000) -> tuple[bool, T | None]:
        """Run a leader's `work(conn)` in one transaction behind `fence`: (False, None)
        without running it when the caller no longer leads. A leader that loses the network
        mid-transaction holds the term row until the server ends its session:
        `idle_in_transaction_session_timeout` bounds that."""

        async def guarded(conn: asyncpg.Connection) -> tuple[bool, T | None]:
            await conn.execute(
                f"SET LOCAL idle_in_transaction_session_timeout = {int(idle_timeout_ms)}")
            if not await fence(conn):
                return False, None
            return True, await work(conn)

        return await self._tx(guarded)

    async def newest_responders(
        self,
    ) -> dict[str, tuple[str, bytes, bytes | None, datetime]]:
        """generation -> (serial, certificate DER, encrypted key PEM or None, notAfter) of
        the newest responder certificate a leader published."""
        async with self._read() as conn:
            rows = await conn.fetch(
                "SELECT DISTINCT ON (generation) generation, serial, certificate, key_pem,"
                " not_after FROM ocsp_responders"
                " ORDER BY generation, not_after DESC, issued_at DESC")
        return {str(row[0]): (str(row[1]), bytes(row[2]),
                              None if row[3] is None else bytes(row[3]), from_epoch(row[4]))
                for row in rows}

    @staticmethod
    async def insert_responder(conn: asyncpg.Connection, *, generation: str, serial: str,
                               certificate: bytes, key_pem: bytes | None, not_after: datetime,
                               now: datetime, node: str, term: int, actor: str) -> None:
        """Publish a renewed responder (inside the leader's fenced transaction), audited,
        and wake every node (NOTIFY at commit)."""
        await conn.execute(
            "INSERT INTO ocsp_responders (generation, serial, certificate, key_pem, not_after,"
            " issued_at, node, term) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            generation, serial, certificate, key_pem, to_epoch(not_after), to_epoch(now),
            node, term)
        await audit_pg.append(conn, at=now, actor=actor, action="ocsp_responder.renewed",
                              subject=generation,
                              details={"serial": serial, "not_after": to_epoch(not_after),
                                       "node": node, "term": term})
        await notify(conn, RESPONDER_CHANNEL, generation)

    async def recorded_cutovers(self) -> dict[str, int]:
        """cutover name -> affected count, for the cutovers recorded as effective."""
        async with self._read() as conn:
            rows = await conn.fetch("SELECT cutover, affected FROM cutover_effects")
        return {str(row[0]): int(row[1]) for row in rows}

    @staticmethod
    async def record_cutover(conn: asyncpg.Connection, *, name: str, effective_at: datetime,
                             affected: int, now: datetime, node: str, term: int,
                             actor: str) -> bool:
        """Inside the leader's fenced transaction: record that cutover `name` took effect,
        with its audit entry; False (and no audit entry) when it is recorded already."""
        status = await conn.execute(
            "INSERT INTO cutover_effects (cutover, effective_at, affected, recorded_at, node,"
            " term) VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (cutover) DO NOTHING",
            name, to_epoch(effective_at), affected, to_epoch(now), node, term)
        if status != "INSERT 0 1":
            return False
        await audit_pg.append(conn, at=now, actor=actor, action="cutover.effective",
                              subject=name, details={"affected": affected, "node": node,
                                                     "term": term,
                                                     "effective_at": to_epoch(effective_at)})
        return True

    # -- copy ----------------------------------------------------------------------------

    async def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row `db copy` moves, read in one snapshot (REPEATABLE READ)."""
        async with self._read() as conn, conn.transaction(isolation="repeatable_read",
                                                          readonly=True):
            return {table: [tuple(row) for row in await conn.fetch(
                f"SELECT {columns} FROM {table} ORDER BY 1")]  # noqa: S608 - constants
                for table, columns in COPIED_TABLES.items()}

    async def import_rows(self, tables: dict[str, list[tuple[Any, ...]]]) -> None:
        """Load what `export_rows` of another store returned, in one transaction, into this
        empty store (refused when it holds anything): the revocation counter and the audit
        head continue from the copied rows."""

        async def work(conn: asyncpg.Connection) -> None:
            for table in COPIED_TABLES:
                if await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {table})"):  # noqa: S608
                    raise ValueError(f"the target database already holds {table}; "
                                     "db copy only fills an empty CA database")
            for table, columns in COPIED_TABLES.items():
                rows = tables.get(table, [])
                if table == "audit_log":
                    await audit_pg.insert_copied(conn, rows)
                elif rows:
                    marks = ", ".join(f"${i + 1}" for i in range(len(rows[0])))
                    await conn.executemany(
                        f"INSERT INTO {table} ({columns}) VALUES ({marks})", rows)  # noqa: S608
            await self._set_revocation_seq(conn, int(await conn.fetchval(
                "SELECT COALESCE(MAX(revocation_seq), 0) FROM certificates")))

        await self._tx(work)

    # -- cluster -------------------------------------------------------------------------

    async def cluster_status(self, jobs: Sequence[str] = ("crl",),
                             ) -> tuple[dict[str, str | None], list[str]]:
        """(each job's leader node name or None, the nodes connected now): from each leader
        lock's holder and the sessions' application names (`sekisho-ca:<node>`)."""
        async with self._read() as conn:
            holders = {job: await current_leader(conn, job) for job in jobs}
            names = await conn.fetch(
                "SELECT DISTINCT application_name FROM pg_stat_activity"
                " WHERE datname = current_database() AND application_name LIKE 'sekisho-ca:%'"
                " ORDER BY 1")
        nodes = sorted({str(row[0]).split(":")[1] for row in names})  # ...:<node>[:listen]
        leaders = {job: None if holder is None else holder[1].rsplit(":", 1)[-1]
                   for job, holder in holders.items()}
        return leaders, nodes

    # -- audit ---------------------------------------------------------------------------

    async def audit(
        self, *, at: datetime, actor: str, action: str, subject: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry in its own transaction."""

        async def work(conn: asyncpg.Connection) -> None:
            await audit_pg.append(conn, at=at, actor=actor, action=action, subject=subject,
                                  details=details)

        await self._tx(work)

    async def verify_audit(self) -> list[str]:
        """Problems found in the audit chain (empty when intact)."""
        async with self._read() as conn:
            return await audit_pg.verify_chain(conn)

    async def audit_entries(self, limit: int = 1000) -> list[AuditEntry]:
        """The newest audit entries, oldest first."""
        async with self._read() as conn:
            return await audit_pg.entries(conn, limit=limit)
