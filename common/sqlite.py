"""The SQLite conventions both stores share: WAL, `synchronous=FULL`, versioned migrations,
and transactions that coroutines sharing one connection cannot interleave.

One aiosqlite connection per process; an asyncio lock keeps coroutines from running statements
inside one another's transactions, and `BEGIN IMMEDIATE` plus `busy_timeout` serialise writes
with other processes (a CLI writing to the same file while the daemon runs).

Storage faults are named, never a traceback (R-FAULT-*): a write that still finds the file
locked after `busy_timeout`, a full disk, a read-only or vanished file become
`common.errors.Unavailable` with a stable code (`store_busy`, `store_full`,
`store_unwritable`), which the daemons answer with 503 and Retry-After. A failed COMMIT is
rolled back, so the connection is usable again as soon as the cause goes away (space
returns): no restart needed. A store may also open a second, read-only connection for reads
outside transactions, so that a read (`/health`, an OCSP lookup) never queues behind a write
that is waiting for another process's lock (WAL lets readers and one writer run together).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiosqlite

from common.errors import Unavailable
from common.files import private_database

# How long a write waits for another process's write lock before giving up with `store_busy`.
BUSY_TIMEOUT_MS = 10000


def to_epoch(when: datetime) -> int:
    """Aware datetime -> Unix seconds (how both stores keep times)."""
    return int(when.timestamp())


def from_epoch(seconds: int) -> datetime:
    """Unix seconds -> aware UTC datetime."""
    return datetime.fromtimestamp(seconds, UTC)


# Whose reservations are dead when a process starts: those of earlier runs of the same
# instance name (one daemon per store), e.g. "ca-daemon:%" but not the new run's own id.
# Parameters: Owner.earlier_runs.
DEAD_OWNER = "(COALESCE({column}, '') LIKE ? AND {column} != ?)"


@dataclass(frozen=True)
class Owner:
    """Who holds reservations: `instance` names the process role (one per store, e.g.
    "ca-daemon"), `run` this start of it. A new run of an instance declares the earlier
    runs' reservations dead at once; reservations of other instances wait for their deadline."""

    instance: str
    run: str

    @property
    def id(self) -> str:
        """The value stored in owner columns."""
        return f"{self.instance}:{self.run}"

    @property
    def earlier_runs(self) -> tuple[str, str]:
        """Parameters of _DEAD_OWNER: the LIKE pattern and our own id."""
        return f"{self.instance}:%", self.id



def store_error(exc: BaseException, what: str) -> Unavailable | None:
    """The named 503 for a storage fault (None when `exc` is not one, e.g. a constraint).

    Classified by SQLite's primary result code, which names the cause whatever the wording.
    """
    if isinstance(exc, Unavailable):
        return exc
    if not isinstance(exc, sqlite3.OperationalError | sqlite3.DatabaseError) or isinstance(
        exc, sqlite3.IntegrityError | sqlite3.ProgrammingError
    ):
        return None
    name = getattr(exc, "sqlite_errorname", "") or ""
    text = str(exc).lower()
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in text:
        return Unavailable(f"the {what} is busy (another process holds its write lock); retry",
                           code="store_busy")
    if name.startswith("SQLITE_FULL") or "full" in text:
        return Unavailable(f"the {what} cannot be written: the disk is full",
                           code="store_full")
    if name.startswith(("SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_PERM",
                        "SQLITE_AUTH")) or "readonly" in text or "disk i/o" in text \
            or "unable to open" in text:
        return Unavailable(f"the {what} cannot be written ({exc}): read-only, missing or failing"
                           " file system", code="store_unwritable")
    return None


async def connect(path: Path, migrations: Sequence[str], *, name: str) -> aiosqlite.Connection:
    """Open (creating and migrating if needed) the database at `path`, mode 0600.

    Each migration script runs once, in order; migration i produces schema version i + 1.
    A store that cannot be created or written raises `Unavailable` naming why.
    """
    # Created 0600 before SQLite opens it: SQLite gives the -wal and -shm files the database
    # file's mode, and they hold the same data (the gateway's password hashes among it).
    try:
        await asyncio.to_thread(private_database, path)
    except OSError as exc:
        raise Unavailable(f"the {name} database {path} cannot be created:"
                          f" {exc.strerror}", code="store_unwritable") from None
    try:
        db = await aiosqlite.connect(path, isolation_level=None)
    except sqlite3.Error as exc:
        raise (store_error(exc, f"{name} database {path}") or exc) from None
    try:
        await db.execute("PRAGMA journal_mode=WAL")
        await db.execute("PRAGMA synchronous=FULL")
        await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        await db.execute("PRAGMA foreign_keys=ON")
        await _migrate(db, migrations, name)
        await asyncio.to_thread(path.chmod, 0o600)
    except BaseException as exc:
        await db.close()
        if isinstance(exc, OSError):
            raise Unavailable(f"the {name} database {path} cannot be written: {exc.strerror}",
                              code="store_unwritable") from None
        mapped = store_error(exc, f"{name} database {path}")
        if mapped is not None:
            raise mapped from None
        raise
    return db


async def connect_reader(path: Path) -> aiosqlite.Connection:
    """A second connection for reads only (`query_only`), see the module docstring."""
    db = await aiosqlite.connect(path, isolation_level=None)
    await db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    await db.execute("PRAGMA query_only=1")
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

    # Named in Unavailable messages ("the {what} is busy").
    what = "database"

    def __init__(self, db: aiosqlite.Connection, reader: aiosqlite.Connection | None = None,
                 ) -> None:
        self._db = db
        self._lock = asyncio.Lock()
        self._reader = reader
        self._reader_lock = asyncio.Lock() if reader is not None else self._lock

    async def close(self) -> None:
        """Close the connection(s)."""
        if self._reader is not None:
            await self._reader.close()
        await self._db.close()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """A write transaction (BEGIN IMMEDIATE ... COMMIT, rolled back on any exception,
        a failed COMMIT included); storage faults become `Unavailable` (module docstring)."""
        async with self._lock:
            try:
                await self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise (store_error(exc, self.what) or exc) from None
            try:
                yield self._db
                await self._db.execute("COMMIT")
            except BaseException as exc:
                if self._db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("ROLLBACK")
                mapped = store_error(exc, self.what)
                if mapped is not None and mapped is not exc:
                    raise mapped from None
                raise

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        db = self._reader or self._db
        try:
            async with self._reader_lock, db.execute(sql, params) as cursor:
                return list(await cursor.fetchall())
        except sqlite3.Error as exc:
            raise (store_error(exc, self.what) or exc) from None

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        db = self._reader or self._db
        try:
            async with self._reader_lock, db.execute(sql, params) as cursor:
                return await cursor.fetchone()
        except sqlite3.Error as exc:
            raise (store_error(exc, self.what) or exc) from None
