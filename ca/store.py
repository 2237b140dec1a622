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
from common.sqlite import SqliteStore, connect, from_epoch, to_epoch

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
)


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
    " revoked_at, revocation_reason, revocation_seq, created_at"
)


def _cert(row: Sequence[Any]) -> CertRecord:
    return CertRecord(
        serial=row[0], user_id=row[1], generation=row[2], kind=row[3], state=row[4],
        not_before=from_epoch(row[5]), not_after=from_epoch(row[6]), der=row[7],
        fingerprint_sha256=row[8],
        revoked_at=from_epoch(row[9]) if row[9] is not None else None,
        revocation_reason=row[10], revocation_seq=row[11], created_at=from_epoch(row[12]),
    )


class Store(SqliteStore):
    """Certificates, acquisition secrets, CRL state and the audit log of one CA."""

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating and migrating if needed) the database at `path`."""
        return cls(await connect(path, MIGRATIONS, name="CA"))

    # -- certificates ------------------------------------------------------------------

    async def reserve(
        self, *, serial: str, user_id: str, generation: str, kind: str, not_before: datetime,
        not_after: datetime, now: datetime, check: Callable[[list[CertRecord]], None],
        actor: str,
    ) -> None:
        """Record the intent to issue (STYLE 5), after `check` accepted the user's certificates.

        `check` runs inside the write transaction, so two concurrent requests for the same user
        cannot both pass a rule such as "holds no usable certificate".
        """
        async with self.transaction() as db:
            async with db.execute(
                f"SELECT {_CERT_COLUMNS} FROM certificates WHERE user_id = ?"  # noqa: S608
                " AND state != 'abandoned' ORDER BY not_before, created_at",
                (user_id,),
            ) as cursor:
                existing = [_cert(row) for row in await cursor.fetchall()]
            check(existing)
            await db.execute(
                "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before,"
                " not_after, created_at) VALUES (?, ?, ?, ?, 'intended', ?, ?, ?)",
                (serial, user_id, generation, kind, to_epoch(not_before), to_epoch(not_after),
                 to_epoch(now)),
            )
            await audit_log.append(
                db, at=now, actor=actor, action="certificate.intended", subject=user_id,
                details={"serial": serial, "generation": generation, "kind": kind},
            )

    async def complete(
        self, serial: str, der: bytes, fingerprint: str, now: datetime, actor: str
    ) -> CertRecord:
        """Store the signed certificate; it counts as issued from this commit on."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE certificates SET state = 'issued', der = ?, fingerprint_sha256 = ?"
                " WHERE serial = ? AND state = 'intended'",
                (der, fingerprint, serial),
            )
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
                    "UPDATE certificates SET state = 'abandoned' WHERE serial = ?", (serial,)
                )
            else:
                await db.execute(
                    "UPDATE certificates SET state = 'abandoned', der = ?, revoked_at = ?,"
                    " revocation_reason = 'cessationOfOperation', revocation_seq ="
                    " (SELECT COALESCE(MAX(revocation_seq), 0) + 1 FROM certificates)"
                    " WHERE serial = ?",
                    (der, to_epoch(now), serial),
                )
            await audit_log.append(
                db, at=now, actor="ca", action="certificate.abandoned", subject=serial,
                details={"why": reason},
            )

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
    ) -> list[CertRecord]:
        """Issued certificates, newest first, optionally filtered."""
        clauses: list[str] = ["state = 'issued'"]
        params: list[Any] = []
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
        """Revoke the given certificates in one transaction; already revoked ones are skipped."""
        revoked: list[CertRecord] = []
        async with self.transaction() as db:
            async with db.execute(
                "SELECT COALESCE(MAX(revocation_seq), 0) FROM certificates"
            ) as cursor:
                (seq,) = await cursor.fetchone()  # type: ignore[misc]
            for serial in serials:
                seq += 1
                cursor = await db.execute(
                    "UPDATE certificates SET revoked_at = ?, revocation_reason = ?,"
                    " revocation_seq = ? WHERE serial = ? AND state = 'issued'"
                    " AND revoked_at IS NULL",
                    (to_epoch(at), reason, seq, serial),
                )
                if cursor.rowcount != 1:
                    seq -= 1
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
                " WHERE der IS NOT NULL"
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

    async def reserve_acquisition_attempt(self, user_id: str, max_failures: int) -> str:
        """Count a try before checking it (R-CERT-5): "reserved", "locked" or "busy".

        Counting first means at most `max_failures` passwords are ever evaluated before an
        officer reissues the password, however many requests arrive at once; "busy" means
        the remaining tries are all being checked right now.
        """
        async with self.transaction() as db:
            cursor = await db.execute(
                "UPDATE acquisition_secrets SET failed_attempts = failed_attempts + 1"
                " WHERE user_id = ? AND locked = 0 AND failed_attempts < ?",
                (user_id, max_failures),
            )
            if cursor.rowcount == 1:
                return "reserved"
            async with db.execute(
                "SELECT locked FROM acquisition_secrets WHERE user_id = ?", (user_id,)
            ) as rows:
                row = await rows.fetchone()
            return "busy" if row is not None and not row[0] else "locked"

    async def acquisition_succeeded(self, user_id: str, now: datetime) -> None:
        """The reserved try was right: clear the failure count."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE acquisition_secrets SET failed_attempts = 0, updated_at = ?"
                " WHERE user_id = ?",
                (to_epoch(now), user_id),
            )

    async def acquisition_failed(
        self, user_id: str, now: datetime, max_failures: int, actor: str
    ) -> tuple[int, bool]:
        """The reserved try was wrong: keep the count, lock at the limit; returns both."""
        async with self.transaction() as db:
            await db.execute(
                "UPDATE acquisition_secrets SET locked = (failed_attempts >= ?), updated_at = ?"
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
        der: bytes,
    ) -> None:
        """Persist the newest CRL of a generation (its number must only grow)."""
        async with self.transaction() as db:
            await db.execute(
                "INSERT INTO crl_state VALUES (?, ?, ?, ?, ?) ON CONFLICT (generation) DO UPDATE"
                " SET crl_number = excluded.crl_number, this_update = excluded.this_update,"
                " next_update = excluded.next_update, der = excluded.der"
                " WHERE excluded.crl_number > crl_state.crl_number",
                (generation, crl_number, to_epoch(this_update), to_epoch(next_update), der),
            )

    async def crl_number(self, generation: str) -> int:
        """The number of the newest stored CRL of a generation (0 before the first)."""
        row = await self._fetchone(
            "SELECT crl_number FROM crl_state WHERE generation = ?", (generation,))
        return int(row[0]) if row is not None else 0

    async def load_crl(self, generation: str) -> tuple[int, datetime, datetime, bytes] | None:
        """The stored CRL of a generation: (number, thisUpdate, nextUpdate, DER)."""
        row = await self._fetchone(
            "SELECT crl_number, this_update, next_update, der FROM crl_state WHERE generation = ?",
            (generation,),
        )
        if row is None:
            return None
        return int(row[0]), from_epoch(row[1]), from_epoch(row[2]), bytes(row[3])

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
