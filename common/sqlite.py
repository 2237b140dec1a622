"""The SQLite conventions both stores share: WAL, `synchronous=FULL`, versioned migrations,
and transactions that coroutines sharing one connection cannot interleave.

One aiosqlite connection per process; an asyncio lock keeps coroutines from running statements
inside one another's transactions, and `BEGIN IMMEDIATE` plus `busy_timeout` serialise writes
with other processes (a CLI writing to the same file while the daemon runs).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from common.files import private_database


def to_epoch(when: datetime) -> int:
    """Aware datetime -> Unix seconds (how both stores keep times)."""
    return int(when.timestamp())


def from_epoch(seconds: int) -> datetime:
    """Unix seconds -> aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


async def connect(path: Path, migrations: Sequence[str], *, name: str) -> aiosqlite.Connection:
    """Open (creating and migrating if needed) the database at `path`, mode 0600.

    Each migration script runs once, in order; migration i produces schema version i + 1.
    """
    # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database
    # file's mode, and they hold the same data (the gateway's password hashes among it).
    await asyncio.to_thread(private_database, path)
    db = await aiosqlite.connect(path, isolation_level=None)
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute("PRAGMA busy_timeout=10000")
        await db.execute("PRAGMA foreign_keys=ON")
        await _migrate(db, migrations, name)
    except BaseException:
        await db.close()
        raise
    return db


async def _migrate(db: aiosqlite.Connection, migrations: Sequence[str], name: str) -> None:
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with db.execute("SELECT version FROM schema_version") as cursor:
            row = await cursor.fetchone()
        version = row[0] if row else 0
        if version > len(migrations):
            raise RuntimeError(
                f"{name} database schema version {version} is newer than this program "
                f"({len(migrations)}); upgrade Sekisho"
            )
        for script in migrations[version:]:
            for statement in filter(str.strip, script.split(";")):
                await db.execute(statement)
        if row is None:
            await db.execute("INSERT INTO schema_version VALUES (?)", (len(migrations),))
        else:
            await db.execute("UPDATE schema_version SET version = ?", (len(migrations),))
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


class SqliteStore:
    """Base of a store on one connection: transactions and locked reads."""

    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._lock = asyncio.Lock()

    async def close(self) -> None:
        """Close the connection."""
        await self._db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception)."""
        async with self._lock:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.execute("ROLLBACK")
                raise
            await self._db.execute("COMMIT")

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async with self._lock, self._db.execute(sql, params) as cursor:
            return list(await cursor.fetchall())

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async with self._lock, self._db.execute(sql, params) as cursor:
            return await cursor.fetchone()
