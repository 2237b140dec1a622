"""An append-only, hash-chained audit log in SQLite (R-OPS-2), shared by the CA and gateway.

Each row stores `hash = SHA-256(prev_hash || canonical JSON of the row)`. `verify_chain` finds an
edited row (its hash no longer matches), a deleted row in the middle (the next row's prev_hash
no longer links) and a deleted last row (AUTOINCREMENT's sqlite_sequence remembers the highest
id ever handed out). Every append is also written to the JSON log with its hash, so the log
stream shipped elsewhere anchors the chain against a rewrite of the whole table.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import aiosqlite
import structlog

GENESIS = "0" * 64

SCHEMA = """
CREATE TABLE IF NOT EXISTS audit_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at TEXT NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    subject TEXT NOT NULL,
    details TEXT NOT NULL,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
"""

_log = structlog.get_logger("audit")


def entry_hash(
    prev_hash: str, at: str, actor: str, action: str, subject: str, details: str
) -> str:
    """SHA-256(prev_hash || canonical JSON of the row): the link of the chain (R-OPS-2)."""
    canonical = json.dumps([at, actor, action, subject, details], ensure_ascii=False)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


async def append(
    db: aiosqlite.Connection, *, at: datetime, actor: str, action: str, subject: str,
    details: dict[str, Any] | None = None,
) -> str:
    """Append one entry inside the caller's transaction and return its hash."""
    async with db.execute("SELECT hash FROM audit_log ORDER BY id DESC LIMIT 1") as cursor:
        row = await cursor.fetchone()
    prev_hash = row[0] if row else GENESIS
    at_text = at.isoformat()
    details_text = json.dumps(details or {}, ensure_ascii=False, sort_keys=True, default=str)
    new_hash = entry_hash(prev_hash, at_text, actor, action, subject, details_text)
    await db.execute(
        "INSERT INTO audit_log (at, actor, action, subject, details, prev_hash, hash)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (at_text, actor, action, subject, details_text, prev_hash, new_hash),
    )
    _log.info("audit", actor=actor, action=action, subject=subject, audit_hash=new_hash)
    return new_hash


@dataclass(frozen=True)
class AuditEntry:
    """One row of the audit log."""

    id: int
    at: str
    actor: str
    action: str
    subject: str
    details: dict[str, Any]


async def entries(db: aiosqlite.Connection, *, limit: int = 1000) -> list[AuditEntry]:
    """The newest `limit` entries, oldest first."""
    async with db.execute(
        "SELECT id, at, actor, action, subject, details FROM audit_log ORDER BY id DESC LIMIT ?",
        (limit,),
    ) as cursor:
        rows = await cursor.fetchall()
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5]))
            for r in reversed(list(rows))]


async def search(
    db: aiosqlite.Connection, *, subject: str | None = None, action: str | None = None,
    actor: str | None = None, since: datetime | None = None, until: datetime | None = None,
    limit: int = 100,
) -> list[AuditEntry]:
    """The newest `limit` entries matching every filter given, oldest first.

    `action` matches the action or a family of them (`login` matches `login.failed`);
    `actor` matches exactly or by its name after the colon (`alice` matches
    `helpdesk:alice`); `since` inclusive, `until` exclusive.
    """
    clauses: list[str] = []
    params: list[object] = []
    if subject is not None:
        clauses.append("subject = ?")
        params.append(subject)
    if action is not None:
        clauses.append("(action = ? OR substr(action, 1, ?) = ?)")
        params += [action, len(action) + 1, action + "."]
    if actor is not None:
        clauses.append("(actor = ? OR substr(actor, -?) = ?)")
        params += [actor, len(actor) + 1, ":" + actor]
    rows = []
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    async with db.execute(
        "SELECT id, at, actor, action, subject, details FROM audit_log"  # noqa: S608
        f"{where} ORDER BY id DESC", params,  # clauses are constants, values are bound
    ) as cursor:
        async for row in cursor:
            # `at` is ISO 8601 with its offset: compared as times, not as text.
            at = datetime.fromisoformat(row[1])
            if until is not None and at >= until:
                continue
            if since is not None and at < since:
                continue
            rows.append(row)
            if len(rows) >= limit:
                break
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]


def row_problems(expected_id: int, prev_hash: str, row_id: int, at: str, actor: str,
                 action: str, subject: str, details: str, stored_prev: str,
                 stored_hash: str) -> list[str]:
    """What is wrong with one stored row, given the id and hash the chain expects before it
    (R-OPS-2; shared by the SQLite and PostgreSQL chains)."""
    problems = []
    if row_id != expected_id:
        problems.append(f"rows {expected_id}..{row_id - 1} are missing (deleted)")
    if stored_prev != prev_hash:
        problems.append(f"row {row_id} does not link to the row before it")
    if entry_hash(stored_prev, at, actor, action, subject, details) != stored_hash:
        problems.append(f"row {row_id} was edited (its hash does not match its content)")
    return problems


async def verify_chain(db: aiosqlite.Connection) -> list[str]:
    """Return the problems found in the chain (empty when intact)."""
    problems: list[str] = []
    prev_hash = GENESIS
    expected_id = 1
    async with db.execute(
        "SELECT id, at, actor, action, subject, details, prev_hash, hash FROM audit_log ORDER BY id"
    ) as cursor:
        async for row_id, at, actor, action, subject, details, stored_prev, stored_hash in cursor:
            problems += row_problems(expected_id, prev_hash, row_id, at, actor, action, subject,
                                     details, stored_prev, stored_hash)
            prev_hash = stored_hash
            expected_id = row_id + 1
    async with db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'audit_log'") as cursor:
        row = await cursor.fetchone()
    highest = row[0] if row else 0
    if highest >= expected_id:
        problems.append(f"rows {expected_id}..{highest} at the end are missing (deleted)")
    return problems
