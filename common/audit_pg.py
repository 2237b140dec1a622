"""The hash-chained audit log (R-OPS-2) on PostgreSQL: the same rows and hashes as
`common.audit` (so `db copy` moves a chain row by row and it still verifies), written by any
number of processes at once.

One chain, no fork, no gap: an append locks the one-row `audit_head` (`SELECT ... FOR UPDATE`),
takes the next id and the previous hash from it, and moves it in the same transaction. A
SERIAL id would be handed out before commit (a reader could see 6 before 5, and two writers
could link to the same previous row). The head also remembers the highest id ever written,
which is what SQLite's `sqlite_sequence` gives `verify_chain`: a deleted last row is found.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg
import structlog

from common.audit import GENESIS, AuditEntry, entry_hash, row_problems

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
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    id bigint NOT NULL,
    hash text NOT NULL
);
INSERT INTO audit_head (id, hash) VALUES (0, '""" + GENESIS + """');
"""

_log = structlog.get_logger("audit")


async def append(conn: asyncpg.Connection, *, at: datetime, actor: str, action: str,
                 subject: str, details: dict[str, Any] | None = None) -> str:
    """Append one entry inside the caller's transaction and return its hash."""
    head = await conn.fetchrow("SELECT id, hash FROM audit_head FOR UPDATE")
    entry_id, prev_hash = int(head["id"]) + 1, str(head["hash"])
    at_text = at.isoformat()
    details_text = json.dumps(details or {}, ensure_ascii=False, sort_keys=True, default=str)
    new_hash = entry_hash(prev_hash, at_text, actor, action, subject, details_text)
    await conn.execute(
        "INSERT INTO audit_log (id, at, actor, action, subject, details, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
        entry_id, at_text, actor, action, subject, details_text, prev_hash, new_hash)
    await conn.execute("UPDATE audit_head SET id = $1, hash = $2", entry_id, new_hash)
    _log.info("audit", actor=actor, action=action, subject=subject, audit_hash=new_hash)
    return new_hash


async def insert_copied(conn: asyncpg.Connection, rows: list[tuple[Any, ...]]) -> None:
    """Insert rows copied verbatim from another store's chain (id, at, actor, action,
    subject, details, prev_hash, hash) and move the head to the last one (`db copy`)."""
    await conn.executemany(
        "INSERT INTO audit_log (id, at, actor, action, subject, details, prev_hash, hash)"
        " VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", rows)
    if rows:
        await conn.execute("UPDATE audit_head SET id = $1, hash = $2", rows[-1][0], rows[-1][7])


def _entry(row: Any) -> AuditEntry:
    return AuditEntry(int(row[0]), row[1], row[2], row[3], row[4], json.loads(row[5]))


async def entries(conn: asyncpg.Connection, *, limit: int = 1000) -> list[AuditEntry]:
    """The newest `limit` entries, oldest first."""
    rows = await conn.fetch(
        "SELECT id, at, actor, action, subject, details FROM audit_log ORDER BY id DESC"
        " LIMIT $1", limit)
    return [_entry(row) for row in reversed(rows)]


async def search(conn: asyncpg.Connection, *, subject: str | None = None,
                 action: str | None = None, actor: str | None = None,
                 since: datetime | None = None, until: datetime | None = None,
                 limit: int = 100) -> list[AuditEntry]:
    """`common.audit.search` on PostgreSQL: the same filters, the same answers."""
    clauses: list[str] = []
    params: list[object] = []

    def bind(value: object) -> str:
        params.append(value)
        return f"${len(params)}"

    if subject is not None:
        clauses.append(f"subject = {bind(subject)}")
    if action is not None:
        clauses.append(f"(action = {bind(action)} OR starts_with(action, {bind(action + '.')}))")
    if actor is not None:
        clauses.append(f"(actor = {bind(actor)} OR right(actor, {bind(len(actor) + 1)})"
                       f" = {bind(':' + actor)})")
    where = (" WHERE " + " AND ".join(clauses)) if clauses else ""
    found: list[Any] = []
    async with conn.transaction():  # a cursor needs one
        async for row in conn.cursor(
                "SELECT id, at, actor, action, subject, details FROM audit_log"  # noqa: S608
                f"{where} ORDER BY id DESC", *params):  # clauses are constants, values bound
            at = datetime.fromisoformat(row[1])
            if (until is not None and at >= until) or (since is not None and at < since):
                continue
            found.append(row)
            if len(found) >= limit:
                break
    return [_entry(row) for row in reversed(found)]


async def verify_chain(conn: asyncpg.Connection) -> list[str]:
    """The problems found in the chain (empty when intact), worded as `common.audit`'s."""
    problems: list[str] = []
    prev_hash = GENESIS
    expected_id = 1
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        async for row in conn.cursor(
                "SELECT id, at, actor, action, subject, details, prev_hash, hash"
                " FROM audit_log ORDER BY id"):
            row_id, at, actor, action, subject, details, stored_prev, stored_hash = row
            problems += row_problems(expected_id, prev_hash, row_id, at, actor, action, subject,
                                     details, stored_prev, stored_hash)
            prev_hash = stored_hash
            expected_id = row_id + 1
        head = await conn.fetchrow("SELECT id, hash FROM audit_head")
    highest = int(head["id"]) if head else 0
    if highest >= expected_id:
        problems.append(f"rows {expected_id}..{highest} at the end are missing (deleted)")
    elif head is not None and highest == expected_id - 1 and head["hash"] != prev_hash:
        problems.append(f"row {highest} does not match the chain's recorded head")
    return problems
