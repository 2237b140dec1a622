"""The hash-chained audit log (R-OPS-2) on PostgreSQL, for stores shared by several nodes
(issue 13: "the audit chain stays one chain ... `audit verify` checks it on PostgreSQL").

The same rows and hashes as `common.audit` (so a chain copied from SQLite verifies here
unchanged). What differs is how appenders on several nodes stay on one chain: a one-row
`audit_head` (the last id and hash) is locked FOR UPDATE by each append, inside the caller's
transaction, so a second appender waits for the first to commit and then links to it; a
fork is impossible. Ids come from that head, never from a sequence: a sequence hands numbers
out before commit, so two transactions could commit out of order and a follower reading
"after id N" would skip one. The head also remembers the highest id ever appended, which
finds a deleted last row (as sqlite_sequence does on SQLite).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from common.audit import GENESIS, AuditEntry, entry_hash

SCHEMA = """
CREATE TABLE audit_log (
    id bigint PRIMARY KEY,
    at text NOT NULL,
    actor text NOT NULL,
    action text NOT NULL,
    subject text NOT NULL,
    details text NOT NULL,
    prev_hash text NOT NULL,
    hash text NOT NULL
);
CREATE TABLE audit_head (
    only_row boolean PRIMARY KEY DEFAULT true CHECK (only_row),
    last_id bigint NOT NULL,
    last_hash text NOT NULL
);
INSERT INTO audit_head (last_id, last_hash) VALUES (0, '""" + GENESIS + """');
"""

_log = structlog.get_logger("audit")


async def append(
    conn: asyncpg.Connection, *, at: datetime, actor: str, action: str, subject: str,
    details: dict[str, Any] | None = None,
) -> str:
    """Append one entry inside the caller's transaction (locking the chain's head until it
    commits) and return its hash."""
    head = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head FOR UPDATE")
    at_text = at.isoformat()
    details_text = json.dumps(details or {}, ensure_ascii=False, sort_keys=True, default=str)
    new_id = int(head["last_id"]) + 1
    new_hash = entry_hash(head["last_hash"], at_text, actor, action, subject, details_text)
    await conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, subject, details, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        new_id, at_text, actor, action, subject, details_text, head["last_hash"], new_hash)
    await conn.execute("UPDATE audit_head SET last_id = $1, last_hash = $2", new_id, new_hash)
    _log.info("audit", actor=actor, action=action, subject=subject, audit_hash=new_hash)
    return new_hash


async def insert_copied(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows copied verbatim from another store's chain (id, at, actor, action,
    subject, details, prev_hash, hash) and move the head to the last one (`db copy`)."""
    await conn.executemany(
        "INSERT INTO audit_log (id, at, actor, action, subject, details, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)
    if rows:
        await conn.execute("UPDATE audit_head SET last_id = $1, last_hash = $2",
                           rows[-1][0], rows[-1][7])


async def entries(conn: asyncpg.Connection, *, limit: int = 1000) -> list[AuditEntry]:
    """The newest `limit` entries, oldest first."""
    rows = await conn.fetch(
        "SELECT id, at, actor, action, subject, details FROM audit_log ORDER BY id DESC"
        " LIMIT $1", limit)
    return [AuditEntry(r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in reversed(rows)]


async def verify_chain(conn: asyncpg.Connection) -> list[str]:
    """Return the problems found in the chain (empty when intact): an edited row, a deleted
    row in the middle, or deleted rows at the end (the head remembers the last id and hash)."""
    problems: list[str] = []
    prev_hash = GENESIS
    expected_id = 1
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        cursor = conn.cursor(
            "SELECT id, at, actor, action, subject, details, prev_hash, hash FROM audit_log"
            " ORDER BY id")
        async for row_id, at, actor, action, subject, details, stored_prev, stored_hash \
                in cursor:
            if row_id != expected_id:
                problems.append(f"rows {expected_id}..{row_id - 1} are missing (deleted)")
            if stored_prev != prev_hash:
                problems.append(f"row {row_id} does not link to the row before it")
            if entry_hash(stored_prev, at, actor, action, subject, details) != stored_hash:
                problems.append(f"row {row_id} was edited (its hash does not match its content)")
            prev_hash = stored_hash
            expected_id = row_id + 1
        head = await conn.fetchrow("SELECT last_id, last_hash FROM audit_head")
    highest = int(head["last_id"]) if head else 0
    if highest >= expected_id:
        problems.append(f"rows {expected_id}..{highest} at the end are missing (deleted)")
    elif head is not None and highest == expected_id - 1 and head["last_hash"] != prev_hash:
        problems.append(f"row {highest} does not match the chain's recorded head")
    return problems
