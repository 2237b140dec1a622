"""The CA's durable store on aiosqlite (R-CERT-3, R-OPS-2).

WAL with `synchronous=FULL` (common.sqlite): a certificate handed out is on disk first, even
across a power cut. The officer CLI writes to the same file while the daemon runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import aiosqlite

from common import audit as audit_log
from common.errors import Unavailable
from common.sqlite import (
    DEAD_OWNER as _DEAD_OWNER,
)
from common.sqlite import (
    Owner,
    SqliteStore,
    connect,
    connect_reader,
    from_epoch,
    to_epoch,
)

# Each migration runs once, in order; the index + 1 is the schema version it produces.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE certificates (
        serial TEXT PRIMARY KEY,             -- lowercase hex, no leading zeros
        user_id TEXT NOT NULL,
        generation TEXT NOT NULL,
        kind TEXT NOT NULL,                  -- 'server_key' | 'csr'
        state TEXT NOT NULL,                 -- 'intended' | 'issued' | 'abandoned'
        not_before INTEGER NOT NULL,         -- Unix seconds, UTC
        not_after INTEGER NOT NULL,
        der BLOB,
        fingerprint_sha256 TEXT,
        revoked_at INTEGER,
        revocation_reason TEXT,
        revocation_seq INTEGER UNIQUE,       -- order of revocations, followed by the gateway
        created_at INTEGER NOT NULL
    );
    CREATE INDEX certificates_by_user ON certificates (user_id, not_before);
    CREATE INDEX certificates_revoked ON certificates (generation, revocation_seq)
        WHERE revoked_at IS NOT NULL;
    CREATE TABLE acquisition_secrets (
        user_id TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        failed_attempts INTEGER NOT NULL DEFAULT 0,
        locked INTEGER NOT NULL DEFAULT 0,
        issued_at INTEGER NOT NULL,
        updated_at INTEGER NOT NULL
    );
    CREATE TABLE crl_state (
        generation TEXT PRIMARY KEY,
        crl_number INTEGER NOT NULL,
        this_update INTEGER NOT NULL,
        next_update INTEGER NOT NULL,
        der BLOB NOT NULL
    );
    """
    + audit_log.SCHEMA,
    # 2: crash recovery (R-FAULT-1..3). An intent belongs to a process (`owner`) and has a
    # `deadline` after which it can never become issued; a counted acquisition try is
    # "pending" until its result is recorded, with the same owner and deadline; a CRL records
    # the revocation sequence it covers, so a restart can tell whether it is behind the store.
    """
    ALTER TABLE certificates ADD COLUMN owner TEXT;
    ALTER TABLE certificates ADD COLUMN deadline INTEGER;
    CREATE INDEX certificates_intended ON certificates (deadline) WHERE state = 'intended';
    ALTER TABLE acquisition_secrets ADD COLUMN pending_attempts INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE acquisition_secrets ADD COLUMN pending_until INTEGER;
    ALTER TABLE acquisition_secrets ADD COLUMN pending_owner TEXT;
    CREATE INDEX acquisition_pending ON acquisition_secrets (pending_until)
        WHERE pending_attempts > 0;
    ALTER TABLE crl_state ADD COLUMN revocation_seq INTEGER NOT NULL DEFAULT 0;
    """,
    # 3: acquisition tickets in the store (ca.tickets), so any node of a cluster redeems a
    # ticket another node issued (issue 13).
    """
    CREATE TABLE acquisition_tickets (
        ticket_hash BLOB PRIMARY KEY,        -- SHA-256 of the ticket
        user_id TEXT NOT NULL,
        password_mac BLOB NOT NULL,          -- HMAC-SHA256 keyed by the ticket
        expires_at REAL NOT NULL             -- Unix seconds, UTC
    );
    CREATE INDEX acquisition_tickets_by_expiry ON acquisition_tickets (expires_at);
    """,
)

# An intent still counts (blocks another acquisition, may still become issued) only while
# its deadline has not passed; rows from before migration 2 have none and are stale.
_LIVE = "NOT (state = 'intended' AND COALESCE(deadline, 0) < ?)"


def serial_hex(serial: int) -> str:
    """The canonical text form of a serial number: lowercase hex."""
    return format(serial, "x")


@dataclass(frozen=True)
class CertRecord:
    """One certificate row."""

    serial: str
    user_id: str
    generation: str
    kind: str
    state: str
    not_before: datetime
    not_after: datetime
    der: bytes | None
    fingerprint_sha256: str | None
    revoked_at: datetime | None
    revocation_reason: str | None
    revocation_seq: int | None
    created_at: datetime
    owner: str | None = None
    deadline: datetime | None = None

    def stale(self, now: datetime) -> bool:
        """An intent whose request can no longer complete (R-FAULT-2)."""
        return self.state == "intended" and (self.deadline is None or self.deadline < now)


class IntentExpired(Unavailable):
    """The certificate was signed after its intent's deadline (or the officer revoked the
    intent meanwhile): it is not stored as issued and never delivered (R-CERT-3)."""

    code = "issuance_deadline_passed"


@dataclass(frozen=True)
class AcquisitionSecret:
    """A user's acquisition-password hash and lockout state (R-CERT-5)."""

    user_id: str
    password_hash: str
    failed_attempts: int
    locked: bool
    issued_at: datetime


_CERT_COLUMNS = (
    "serial, user_id, generation, kind, state, not_before, not_after, der, fingerprint_sha256,"
    " revoked_at, revocation_reason, revocation_seq, created_at, owner, deadline"
)


# What `db copy` moves (issue 13), table by table, in these columns; the same names on both
# backends. The audit rows keep their ids and hashes, so the copied chain verifies as it is.
COPIED_TABLES: dict[str, str] = {
    "certificates": _CERT_COLUMNS,
    "acquisition_secrets": "user_id, password_hash, failed_attempts, locked, issued_at,"
                           " updated_at, pending_attempts, pending_until, pending_owner",
    "crl_state": "generation, crl_number, this_update, next_update, der, revocation_seq",
    "audit_log": "id, at, actor, action, subject, details, prev_hash, hash",
}


def _cert(row: Sequence[Any]) -> CertRecord:
    return CertRecord(
        serial=row[0], user_id=row[1], generation=row[2], kind=row[3], state=row[4],
        not_before=from_epoch(row[5]), not_after=from_epoch(row[6]), der=row[7],
        fingerprint_sha256=row[8],
        revoked_at=from_epoch(row[9]) if row[9] is not None else None,
        revocation_reason=row[10], revocation_seq=row[11], created_at=from_epoch(row[12]),
        owner=row[13], deadline=from_epoch(row[14]) if row[14] is not None else None,
    )


class Store(SqliteStore):
    """Certificates, acquisition secrets, CRL state and the audit log of one CA."""

    what = "CA database"

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating and migrating if needed) the database at `path`."""
        db = await connect(path, MIGRATIONS, name="CA")
        return cls(db, await connect_reader(path))

    # -- certificates ------------------------------------------------------------------

    async def reserve(
        self, *, serial: str, user_id: str, generation: str, kind: str, not_before: datetime,
        not_after: datetime, now: datetime, check: Callable[[list[CertRecord]], None],
        actor: str, owner: str, deadline: datetime,
    ) -> None:
        """Record the intent to issue (STYLE 5), after `check` accepted the user's certificates.

        `check` runs inside the write transaction, so two concurrent requests for the same user
        cannot both pass a rule such as "holds no usable certificate"; it sees issued rows and
        the intents still in progress (before their deadline), never stale ones (R-FAULT-2).
        """
        async with self.transaction() as db:
            async with db.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = ?"  # noqa: S608
                f" AND state != 'abandoned' AND {_LIVE} ORDER BY not_before, created_at",
                (user_id, to_epoch(now)),
            ) as cursor:
                existing = [_cert(row) for row in await cursor.fetchall()]
            check(existing)
            await db.execute(
                "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before,"
                " not_after, created_at, owner, deadline)"
                " VALUES (?, ?, ?, ?, 'intended', ?, ?, ?, ?, ?)",
                (serial, user_id, generation, kind, to_epoch(not_before), to_epoch(not_after),
                 to_epoch(now), owner, to_epoch(deadline)),
            )
            await audit_log.append(
                db, at=now, actor=actor, action="certificate.intended", subject=user_id,
                details={"serial": serial, "generation": generation, "kind": kind},
            )

    async def complete(
        self, serial: str, der: bytes, fingerprint: str, now: datetime, actor: str
    ) -> CertRecord:
        """Store the signed certificate; it counts as issued from this commit on.

        Only an intent that is still live (before its deadline, not revoked by the officer)
        becomes issued; otherwise `IntentExpired` and nothing may be delivered (R-FAULT-2).
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE certificates SET state = 'issued', der = ?, fingerprint_sha256 = ?"
                " WHERE serial = ? AND state = 'intended' AND deadline >= ?"
                " AND revoked_at IS NULL",
                (der, fingerprint, serial, to_epoch(now)),
            )
            if cursor.rowcount != 1:
                raise IntentExpired(
                    "the certificate could not be issued in time (the CA was overloaded or"
                    " restarted); nothing was delivered: try again", code=IntentExpired.code)
            row = await self._select_one(db, serial)
            await audit_log.append(
                db, at=now, actor=actor, action="certificate.issued", subject=row.user_id,
                details={"serial": serial, "not_after": row.not_after.isoformat()},
            )
        return row

    async def abandon(self, serial: str, der: bytes | None, now: datetime, reason: str) -> None:
        """Mark an intent that was never delivered; a signed one is also revoked."""
        async with self.transaction() as db:
            if der is None:
                await db.execute(
                    "UPDATE certificates SET state = 'abandoned' WHERE serial = ?"
                    " AND state = 'intended'", (serial,)
                )
            else:
                await db.execute(
                    "UPDATE certificates SET state = 'abandoned', der = ?, revoked_at ="
                    " COALESCE(revoked_at, ?), revocation_reason = COALESCE(revocation_reason,"
                    " 'cessationOfOperation'), revocation_seq = COALESCE(revocation_seq,"
                    " (SELECT COALESCE(MAX(revocation_seq), 0) + 1 FROM certificates))"
                    " WHERE serial = ? AND state IN ('intended', 'abandoned')",
                    (der, to_epoch(now), serial),
                )
            await audit_log.append(
                db, at=now, actor="ca", action="certificate.abandoned", subject=serial,
                details={"why": reason},
            )

    async def reconcile_intents(self, now: datetime, owner: Owner) -> list[tuple[str, str]]:
        """Settle every intent whose request can no longer complete (R-FAULT-2): past its
        deadline, or held by an earlier run of `owner`'s instance (it died). Returns (serial,
        user ID) of each.

        An intent never holds a DER: `complete` stores the DER and the state in one
        statement, so a stale intent was never stored and never delivered (R-CERT-3) and is
        simply abandoned; OCSP answers "unknown" for it, never "good". Should an intent ever
        hold a DER, it is abandoned *and revoked* (cessationOfOperation), one statement each.
        """
        pattern, me = owner.earlier_runs
        dead_owner = _DEAD_OWNER.format(column="owner")
        stale = f"state = 'intended' AND (COALESCE(deadline, 0) < ? OR {dead_owner})"
        params = (to_epoch(now), pattern, me)
        settled: list[tuple[str, str]] = []
        async with self.transaction() as db:
            async with db.execute(
                f"UPDATE certificates SET state = 'abandoned' WHERE {stale}"  # noqa: S608
                " AND der IS NULL RETURNING serial, user_id", params,
            ) as cursor:
                settled += [(row[0], row[1]) for row in await cursor.fetchall()]
            while True:
                async with db.execute(
                    "UPDATE certificates SET state = 'abandoned', revoked_at = ?,"  # noqa: S608
                    " revocation_reason = 'cessationOfOperation', revocation_seq ="
                    " (SELECT COALESCE(MAX(revocation_seq), 0) + 1 FROM certificates)"
                    f" WHERE serial = (SELECT serial FROM certificates WHERE {stale}"
                    " AND der IS NOT NULL LIMIT 1) RETURNING serial, user_id",
                    (to_epoch(now), *params),
                ) as cursor:
                    row = await cursor.fetchone()
                if row is None:
                    break
                settled.append((row[0], row[1]))
            for serial, user_id in settled:
                await audit_log.append(
                    db, at=now, actor="ca", action="certificate.abandoned", subject=serial,
                    details={"why": "intent_stale", "user_id": user_id},
                )
        return settled

    @staticmethod
    async def _select_one(db: aiosqlite.Connection, serial: str) -> CertRecord:
        async with db.execute(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?", (serial,)  # noqa: S608
        ) as cursor:
            row = await cursor.fetchone()
        if row is None:
            raise KeyError(serial)
        return _cert(row)

    async def get(self, serial: str) -> CertRecord | None:
        """The certificate with this serial (any state), or None."""
        row = await self._fetchone(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE serial = ?", (serial,)  # noqa: S608
        )
        return _cert(row) if row else None

    async def certificates_of(self, user_id: str) -> list[CertRecord]:
        """A user's issued certificates, oldest first."""
        rows = await self._fetchall(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = ?"  # noqa: S608
            " AND state = 'issued' ORDER BY not_before, created_at",
            (user_id,),
        )
        return [_cert(row) for row in rows]

    async def list_certificates(
        self, *, user_id: str | None = None, generation: str | None = None,
        issued_before: datetime | None = None, limit: int | None = None,
        states: Sequence[str] = ("issued",), unrevoked: bool = False,
    ) -> list[CertRecord]:
        """Certificates in `states` (issued ones by default), newest first, optionally filtered."""
        clauses: list[str] = [f"state IN ({', '.join('?' * len(states))})"]
        params: list[Any] = list(states)
        if unrevoked:
            clauses.append("revoked_at IS NULL")
        if user_id is not None:
            clauses.append("user_id = ?")
            params.append(user_id)
        if generation is not None:
            clauses.append("generation = ?")
            params.append(generation)
        if issued_before is not None:
            clauses.append("not_before <= ?")
            params.append(to_epoch(issued_before))
        sql = (
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE {' AND '.join(clauses)}"  # noqa: S608
            " ORDER BY not_before DESC, created_at DESC"
        )
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [_cert(row) for row in await self._fetchall(sql, params)]

    async def revoke(
        self, serials: Sequence[str], *, at: datetime, reason: str, actor: str,
        details: dict[str, Any] | None = None,
    ) -> list[CertRecord]:
        """Revoke the given certificates in one transaction; already revoked ones are skipped
        (so a bulk run can be repeated or resumed). An intent (in progress or stale) can be
        revoked too: it becomes abandoned, can never be issued, and its serial is listed on the
        CRL and answered "revoked" by OCSP (R-FAULT-2)."""
        revoked: list[CertRecord] = []
        async with self.transaction() as db:
            for serial in serials:
                cursor = await db.execute(
                    "UPDATE certificates SET revoked_at = ?, revocation_reason = ?,"
                    " revocation_seq = (SELECT COALESCE(MAX(revocation_seq), 0) + 1"
                    " FROM certificates), state = CASE state WHEN 'intended' THEN 'abandoned'"
                    " ELSE state END WHERE serial = ? AND revoked_at IS NULL",
                    (to_epoch(at), reason, serial),
                )
                if cursor.rowcount != 1:
                    continue
                record = await self._select_one(db, serial)
                revoked.append(record)
                await audit_log.append(
                    db, at=at, actor=actor, action="certificate.revoked", subject=record.user_id,
                    details={"serial": serial, "reason": reason, **(details or {})},
                )
        return revoked

    async def revocations_after(self, seq: int, limit: int = 1000) -> list[CertRecord]:
        """Revocations with revocation_seq greater than `seq`, in order (the gateway's feed)."""
        rows = await self._fetchall(
            f"SELECT {_CERT_COLUMNS} FROM certificates WHERE revocation_seq > ?"  # noqa: S608
            " ORDER BY revocation_seq LIMIT ?",
            (seq, limit),
        )
        return [_cert(row) for row in rows]

    async def last_revocation_seq(self) -> int:
        """The highest revocation sequence number so far (0 when nothing is revoked)."""
        row = await self._fetchone("SELECT COALESCE(MAX(revocation_seq), 0) FROM certificates")
        return int(row[0])

    async def revoked_entries(
        self, generation: str, *, expired_before: datetime | None
    ) -> list[tuple[str, int, str]]:
        """(serial hex, revoked_at epoch, reason) of a generation's revoked certificates.

        With `expired_before`, entries whose certificate expired before it are left out
        (RFC 5280 §3.3 lets a CRL drop them once they are past notAfter).
        """
        sql = (
            "SELECT serial, revoked_at, revocation_reason FROM certificates"
            " WHERE generation = ? AND revoked_at IS NOT NULL"
        )
        params: list[Any] = [generation]
        if expired_before is not None:
            sql += " AND not_after >= ?"
            params.append(to_epoch(expired_before))
        rows = await self._fetchall(sql + " ORDER BY revocation_seq", params)
        return [tuple(row) for row in rows]

    async def status_index(self) -> list[tuple[str, str, int | None, str | None]]:
        """(serial, generation, revoked_at, reason) of every signed certificate (OCSP index)."""
        return [
            tuple(row)
            for row in await self._fetchall(
                "SELECT serial, generation, revoked_at, revocation_reason FROM certificates"
                " WHERE der IS NOT NULL OR revoked_at IS NOT NULL"
            )
        ]

    # -- acquisition secrets -----------------------------------------------------------

    async def set_acquisition_secret(
        self, user_id: str, password_hash: str, now: datetime, actor: str
    ) -> None:
        """Create or replace a user's acquisition password; clears failures and the lock."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO acquisition_secrets (user_id, password_hash, failed_attempts, locked,"
                " issued_at, updated_at) VALUES (?, ?, 0, 0, ?, ?) ON CONFLICT (user_id) DO UPDATE"
                " SET password_hash = excluded.password_hash, failed_attempts = 0, locked = 0,"
                " pending_attempts = 0, pending_owner = NULL, pending_until = NULL,"
                " issued_at = excluded.issued_at, updated_at = excluded.updated_at",
                (user_id, password_hash, to_epoch(now), to_epoch(now)),
            )
            await audit_log.append(
                db, at=now, actor=actor, action="acquisition_password.issued", subject=user_id
            )

    async def get_acquisition_secret(self, user_id: str) -> AcquisitionSecret | None:
        """A user's acquisition secret, or None when the officer never issued one."""
        row = await self._fetchone(
            "SELECT user_id, password_hash, failed_attempts, locked, issued_at"
            " FROM acquisition_secrets WHERE user_id = ?",
            (user_id,),
        )
        if row is None:
            return None
        return AcquisitionSecret(row[0], row[1], row[2], bool(row[3]), from_epoch(row[4]))

    async def reserve_acquisition_attempt(
        self, user_id: str, max_failures: int, *, now: datetime, deadline: datetime,
        owner: Owner,
    ) -> str:
        """Count a try before checking it (R-CERT-5): "reserved", "locked" or "busy".

        Counting first means at most `max_failures` passwords are ever evaluated before an
        officer reissues the password, however many requests arrive at once; "busy" means
        the remaining tries are all being checked right now. The try is also recorded as
        pending (owner, deadline) until its result is; a pending try that can no longer
        complete is settled first (`expire_acquisition_attempts`), so a crash never leaves the
        user "busy" for good (R-FAULT-3).
        """
        async with self.transaction() as db:
            await self._expire_attempts(db, now, max_failures, owner, user_id)
            cursor = await db.execute(
                "UPDATE acquisition_secrets SET failed_attempts = failed_attempts + 1,"
                " pending_attempts = pending_attempts + 1, pending_owner = ?,"
                " pending_until = MAX(COALESCE(pending_until, 0), ?)"
                " WHERE user_id = ? AND locked = 0 AND failed_attempts < ?",
                (owner.id, to_epoch(deadline), user_id, max_failures),
            )
            if cursor.rowcount == 1:
                return "reserved"
            async with db.execute(
                "SELECT locked FROM acquisition_secrets WHERE user_id = ?", (user_id,)
            ) as rows:
                row = await rows.fetchone()
            return "busy" if row is not None and not row[0] else "locked"

    async def expire_acquisition_attempts(
        self, now: datetime, max_failures: int, owner: Owner
    ) -> list[str]:
        """Settle every pending try that can no longer complete; returns the user IDs."""
        async with self.transaction() as db:
            return await self._expire_attempts(db, now, max_failures, owner, None)

    @staticmethod
    async def _expire_attempts(
        db: aiosqlite.Connection, now: datetime, max_failures: int, owner: Owner,
        user_id: str | None,
    ) -> list[str]:
        """One statement (R-FAULT-3): a pending try past its deadline, or held by an earlier
        run of our instance, *counts as a failure*. Its count was taken at reservation and
        stays; it only stops being pending, and the lock follows the count. Never refunded:
        the password may have been evaluated just before the crash, so a refund could let a
        fourth password be evaluated."""
        pattern, me = owner.earlier_runs
        dead_owner = _DEAD_OWNER.format(column="pending_owner")
        async with db.execute(
            "UPDATE acquisition_secrets SET pending_attempts = 0, pending_owner = NULL,"  # noqa: S608
            " pending_until = NULL, locked = MAX(locked, failed_attempts >= ?), updated_at = ?"
            f" WHERE pending_attempts > 0 AND (COALESCE(pending_until, 0) < ? OR {dead_owner})"
            " AND (? IS NULL OR user_id = ?) RETURNING user_id, failed_attempts, locked",
            (max_failures, to_epoch(now), to_epoch(now), pattern, me, user_id, user_id),
        ) as cursor:
            rows = list(await cursor.fetchall())
        for row in rows:
            await audit_log.append(
                db, at=now, actor="ca", action="acquisition_password.attempt_expired",
                subject=row[0], details={"failures": row[1], "locked": bool(row[2])},
            )
        return [row[0] for row in rows]

    async def acquisition_succeeded(self, user_id: str, now: datetime) -> bool:
        """The reserved try was right: clear the failure count. False when the password
        was locked meanwhile (a concurrent wrong try, or this try's reservation expired)."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE acquisition_secrets SET failed_attempts = 0, updated_at = ?,"
                " pending_attempts = MAX(pending_attempts - 1, 0)"
                " WHERE user_id = ? AND locked = 0",
                (to_epoch(now), user_id),
            )
            return cursor.rowcount == 1

    async def acquisition_failed(
        self, user_id: str, now: datetime, max_failures: int, actor: str
    ) -> tuple[int, bool]:
        """The reserved try was wrong: keep the count, lock at the limit; returns both."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE acquisition_secrets SET locked = MAX(locked, failed_attempts >= ?),"
                " pending_attempts = MAX(pending_attempts - 1, 0), updated_at = ?"
                " WHERE user_id = ?",
                (max_failures, to_epoch(now), user_id),
            )
            async with db.execute(
                "SELECT failed_attempts, locked FROM acquisition_secrets WHERE user_id = ?",
                (user_id,),
            ) as cursor:
                row = await cursor.fetchone()
            failures, locked = (int(row[0]), bool(row[1])) if row else (0, False)
            await audit_log.append(
                db, at=now, actor=actor,
                action="acquisition_password.locked" if locked else "acquisition_password.failed",
                subject=user_id, details={"failures": failures},
            )
        return failures, locked

    # -- CRL state ---------------------------------------------------------------------

    async def save_crl(
        self, generation: str, crl_number: int, this_update: datetime, next_update: datetime,
        der: bytes, revocation_seq: int = 0, *, fence: object = None,
    ) -> bool:
        """Persist the newest CRL of a generation (its number must only grow) with the
        revocation sequence it covers (R-FAULT-1); False when a CRL with this number or a
        higher one is already stored (nothing changed). `fence` is for PostgreSQL (a
        cluster's leader); one node on SQLite has no other signer to be fenced from."""
        async with self.transaction() as db:
            cursor = await db.execute(
                "INSERT INTO crl_state (generation, crl_number, this_update, next_update, der,"
                " revocation_seq) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (generation) DO UPDATE"
                " SET crl_number = excluded.crl_number, this_update = excluded.this_update,"
                " next_update = excluded.next_update, der = excluded.der,"
                " revocation_seq = excluded.revocation_seq"
                " WHERE excluded.crl_number > crl_state.crl_number",
                (generation, crl_number, to_epoch(this_update), to_epoch(next_update), der,
                 revocation_seq),
            )
            return cursor.rowcount == 1

    async def crl_number(self, generation: str) -> int:
        """The number of the newest stored CRL of a generation (0 before the first)."""
        row = await self._fetchone(
            "SELECT crl_number FROM crl_state WHERE generation = ?", (generation,))
        return int(row[0]) if row is not None else 0

    async def load_crl(
        self, generation: str
    ) -> tuple[int, datetime, datetime, bytes, int] | None:
        """The stored CRL of a generation: (number, thisUpdate, nextUpdate, DER, the
        revocation sequence it covers)."""
        row = await self._fetchone(
            "SELECT crl_number, this_update, next_update, der, revocation_seq FROM crl_state"
            " WHERE generation = ?",
            (generation,),
        )
        if row is None:
            return None
        return int(row[0]), from_epoch(row[1]), from_epoch(row[2]), bytes(row[3]), int(row[4])

    # -- acquisition tickets (ca.tickets) ------------------------------------------------

    async def put_ticket(self, ticket_hash: bytes, user_id: str, password_mac: bytes,
                         expires_at: float, now: float, limit: int) -> None:
        """Keep a ticket; expired ones go, and the oldest beyond `limit`."""
        async with self.transaction() as db:
            await db.execute("DELETE FROM acquisition_tickets WHERE expires_at <= ?", (now,))
            await db.execute(
                "INSERT INTO acquisition_tickets (ticket_hash, user_id, password_mac,"
                " expires_at) VALUES (?, ?, ?, ?)", (ticket_hash, user_id, password_mac,
                                                     expires_at))
            await db.execute(
                "DELETE FROM acquisition_tickets WHERE ticket_hash IN (SELECT ticket_hash"
                " FROM acquisition_tickets ORDER BY expires_at DESC LIMIT -1 OFFSET ?)",
                (limit,))

    async def take_ticket(self, ticket_hash: bytes) -> tuple[str, bytes, float] | None:
        """A ticket's (user, password MAC, expiry), deleted in the same statement: it serves
        once, whoever asks first."""
        async with self.transaction() as db, db.execute(
                "DELETE FROM acquisition_tickets WHERE ticket_hash = ?"
                " RETURNING user_id, password_mac, expires_at", (ticket_hash,)) as cursor:
            row = await cursor.fetchone()
        return (str(row[0]), bytes(row[1]), float(row[2])) if row else None

    # -- copy ----------------------------------------------------------------------------

    async def export_rows(self) -> dict[str, list[tuple[Any, ...]]]:
        """Every row `db copy` moves, read in one transaction (a consistent snapshot)."""
        async with self.transaction() as db:
            tables = {}
            for table, columns in COPIED_TABLES.items():
                async with db.execute(
                    f"SELECT {columns} FROM {table} ORDER BY 1"  # noqa: S608 - constants
                ) as cursor:
                    tables[table] = [tuple(row) for row in await cursor.fetchall()]
            return tables

    async def schema_status(self) -> tuple[int, int]:
        """(applied schema version, the version this program knows)."""
        row = await self._fetchone("SELECT version FROM schema_version")
        return (int(row[0]) if row else 0), len(MIGRATIONS)

    # -- audit ---------------------------------------------------------------------------

    async def audit(
        self, *, at: datetime, actor: str, action: str, subject: str,
        details: dict[str, Any] | None = None,
    ) -> None:
        """Append an audit entry in its own transaction."""
        async with self.transaction() as db:
            await audit_log.append(db, at=at, actor=actor, action=action, subject=subject,
                               details=details)

    async def verify_audit(self) -> list[str]:
        """Problems found in the audit chain (empty when intact)."""
        async with self._lock:
            return await audit_log.verify_chain(self._db)

    async def audit_entries(self, limit: int = 1000) -> list[audit_log.AuditEntry]:
        """The newest audit entries, oldest first."""
        async with self._lock:
            return await audit_log.entries(self._db, limit=limit)
