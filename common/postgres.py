"""The PostgreSQL conventions both daemons' stores will share (issues 12 and 13), on asyncpg:
where the password comes from, the pool, versioned migrations under an advisory lock,
transactions retried on serialization failures, LISTEN/NOTIFY that survives a dropped
connection, and leader election on an advisory lock.

The same ideas as `common/sqlite.py` (one `schema_version` table, migration i produces version
i + 1), so that a store can offer both backends behind one seam.

Secrets: the DSN comes from config.toml and must not carry a password; the password comes from
a 0600 file (`password_file`) or an environment variable (`password_env`), read again for each
new connection so a rotated password needs no restart.

PgBouncer: in transaction pooling mode a server connection is shared between clients between
transactions, so asyncpg's named prepared statements would be found missing (or someone
else's). Set `statement_cache_size = 0` there: asyncpg then uses unnamed statements only. The
listener and the leader election need session state (LISTEN, a session-level advisory lock):
point them at PostgreSQL directly or at a session-mode PgBouncer pool, never at a
transaction-mode one.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import random
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

import asyncpg

log = logging.getLogger(__name__)
T = TypeVar("T")

# sslmode values that authenticate the server; anything weaker is refused off this host.
_VERIFYING_SSLMODES = frozenset({"verify-ca", "verify-full"})
# SQLSTATEs after which the whole transaction may be run again: serialization_failure and
# deadlock_detected (PostgreSQL docs, "Serialization Failure Handling").
_RETRYABLE = (asyncpg.exceptions.SerializationError, asyncpg.exceptions.DeadlockDetectedError)


class PostgresConfigError(ValueError):
    """The PostgreSQL settings are unusable; the message says what to change."""


def advisory_key(name: str) -> int:
    """A stable signed 64-bit advisory-lock key for `name` (the same in every process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


# -- settings, password, connections ---------------------------------------------------------


def check_dsn(dsn: str) -> None:
    """Refuse a DSN that is not `postgresql://`, that carries a password, or that would send
    credentials to another host without authenticating it (sslmode verify-ca/verify-full)."""
    parts = urlsplit(dsn)
    if parts.scheme not in ("postgresql", "postgres"):
        raise PostgresConfigError(f"the database DSN must start with postgresql://, not "
                                  f"{parts.scheme or dsn[:12]!r}")
    query = parse_qs(parts.query)
    if parts.password is not None or "password" in query or "passfile" in query:
        raise PostgresConfigError(
            "the database DSN contains a password; remove it from the DSN and put it in a file "
            "readable by its owner only (password_file, chmod 600) or in the environment "
            "variable named by password_env")
    hosts = [host for value in query.get("host", []) for host in value.split(",")]
    if parts.hostname:
        hosts.append(parts.hostname)
    if not hosts and os.environ.get("PGHOST"):
        hosts = os.environ["PGHOST"].split(",")  # where asyncpg goes when the DSN is silent
    remote = [host for host in hosts if not _is_local(host)]
    sslmode = query.get("sslmode", [""])[-1]
    if remote and sslmode not in _VERIFYING_SSLMODES:
        raise PostgresConfigError(
            f"the database host {remote[0]} is not on this machine: add sslmode=verify-full "
            "(and sslrootcert=...) to the DSN so the password and the data go over TLS to an "
            "authenticated server")


def _is_local(host: str) -> bool:
    if host.startswith("/") or host == "localhost":
        return True  # a Unix socket folder, or loopback
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_password_file(path: Path) -> str:
    """The password in `path`: the file must exist, be owned-only (no group/other bits, like
    keys/ requires of the key passphrase) and not be empty."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise PostgresConfigError(f"the database password file {path} does not exist") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise PostgresConfigError(
            f"{path} has mode {stat.S_IMODE(mode):04o}; the database password file must be "
            f"readable by its owner only: run chmod 600 {path}")
    password = path.read_text().strip()
    if not password:
        raise PostgresConfigError(f"the database password file {path} is empty")
    return password


@dataclass(frozen=True)
class PostgresSettings:
    """Where the database is and how to talk to it (issue 12: "a `postgresql://` DSN").

    `password_file` and `password_env` are mutually exclusive; with neither, asyncpg's
    defaults apply (PGPASSWORD, ~/.pgpass) or none is needed (peer or trust authentication on a
    Unix socket, a client certificate).
    `statement_cache_size = 0` for PgBouncer's transaction pooling mode (module docstring).
    """

    dsn: str
    password_file: Path | None = None
    password_env: str | None = None
    statement_cache_size: int = 100
    pool_min_size: int = 1
    pool_max_size: int = 10
    connect_timeout: float = 10.0
    command_timeout: float | None = 30.0
    application_name: str = "sekisho"
    server_settings: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_dsn(self.dsn)
        if self.password_file is not None and self.password_env:
            raise PostgresConfigError("set either password_file or password_env, not both")
        if self.statement_cache_size < 0:
            raise PostgresConfigError("statement_cache_size must be 0 (PgBouncer transaction "
                                      "mode) or more")
        if not 0 <= self.pool_min_size <= self.pool_max_size or self.pool_max_size < 1:
            raise PostgresConfigError("pool sizes must satisfy 0 <= min <= max, max >= 1")
        self.password()  # fail at start-up, not on the first connection

    def password(self) -> str | None:
        """The password, read now (from the file or the environment variable)."""
        if self.password_file is not None:
            return read_password_file(self.password_file)
        if self.password_env:
            value = os.environ.get(self.password_env)
            if not value:
                raise PostgresConfigError(
                    f"the environment variable {self.password_env} (password_env) is not set")
            return value
        return None

    def _connect_kwargs(self, application_name: str | None) -> dict[str, Any]:
        return {
            # asyncpg calls it for each new connection (a rotated file needs no restart);
            # with no source configured, asyncpg's own defaults apply (PGPASSWORD, ~/.pgpass,
            # which libpq's rules also keep out of config.toml).
            "password": self.password if self.password_file or self.password_env else None,
            "statement_cache_size": self.statement_cache_size,
            "timeout": self.connect_timeout,
            "command_timeout": self.command_timeout,
            "server_settings": {"application_name": application_name or self.application_name,
                                **self.server_settings},
        }

    async def connect(self, *, application_name: str | None = None) -> asyncpg.Connection:
        """A dedicated connection (listeners, the leader lock), outside any pool."""
        return await asyncpg.connect(self.dsn, **self._connect_kwargs(application_name))

    async def create_pool(self) -> asyncpg.Pool:
        """The connection pool the store's queries use."""
        pool = await asyncpg.create_pool(
            self.dsn, min_size=self.pool_min_size, max_size=self.pool_max_size,
            **self._connect_kwargs(None))
        assert pool is not None  # create_pool returns None only when awaited un-initialised
        return pool


# -- migrations ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MigrationResult:
    """Schema versions before and after `migrate` (equal when nothing was applied)."""

    before: int
    after: int


async def schema_version(conn: asyncpg.Connection) -> int:
    """The applied schema version (0 for an empty database)."""
    exists = await conn.fetchval("SELECT to_regclass('schema_version') IS NOT NULL")
    if not exists:
        return 0
    return int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))


async def migrate(conn: asyncpg.Connection, migrations: Sequence[str], *, name: str,
                  ) -> MigrationResult:
    """Apply the migrations not yet applied, in order, in one transaction; migration i produces
    schema version i + 1 (as `common.sqlite`). A transaction-level advisory lock keyed by
    `name` makes concurrent starters wait for the first one, which migrates; the others then
    find the schema current. A database newer than `migrations` is refused.
    """
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)",
                           advisory_key(f"sekisho:migrate:{name}"))
        await conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version integer NOT NULL)")
        before = await schema_version(conn)
        if before > len(migrations):
            raise RuntimeError(f"{name} database schema version {before} is newer than this "
                               f"program ({len(migrations)}); upgrade Sekisho")
        for script in migrations[before:]:
            # No arguments: the simple query protocol, so one script may hold many statements.
            await conn.execute(script)
        if before < len(migrations):
            await conn.execute("DELETE FROM schema_version")
            await conn.execute("INSERT INTO schema_version VALUES ($1)", len(migrations))
    return MigrationResult(before=before, after=max(before, len(migrations)))


# -- transactions ----------------------------------------------------------------------------


async def run_transaction(pool: asyncpg.Pool, work: Callable[[asyncpg.Connection], Awaitable[T]],
                          *, isolation: str = "serializable", attempts: int = 5,
                          backoff: float = 0.01) -> T:
    """Run `work(conn)` in one transaction; when PostgreSQL aborts it with a serialization
    failure or a deadlock, run it again from the start (at most `attempts` times in all, with
    a short jittered backoff), then let the error out.

    `work` must be safe to run again: only database effects, which the abort rolled back.
    """
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    for attempt in range(1, attempts + 1):
        try:
            async with pool.acquire() as conn, conn.transaction(isolation=isolation):
                return await work(conn)
        except _RETRYABLE as exc:
            if attempt == attempts:
                raise
            log.debug("transaction retried (%s), attempt %d of %d", exc.sqlstate, attempt,
                      attempts)
            await asyncio.sleep(random.uniform(0, backoff * 2 ** (attempt - 1)))  # noqa: S311 - jitter, not a secret
    raise AssertionError("unreachable")


# -- LISTEN/NOTIFY ---------------------------------------------------------------------------


Callback = Callable[[str], Awaitable[None] | None]


async def _call(callback: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    result = callback(*args)
    if asyncio.iscoroutine(result):
        await result


class _Backoff:
    """Waits that double from `initial` up to `maximum`, reset after a success."""

    def __init__(self, initial: float, maximum: float) -> None:
        self.initial, self.maximum = initial, maximum
        self.current = initial

    def reset(self) -> None:
        self.current = self.initial

    async def wait(self, stopping: asyncio.Event) -> None:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stopping.wait(), self.current)
        self.current = min(self.current * 2, self.maximum)


class ChannelListener:
    """LISTEN on `channel` on a dedicated connection and call `on_notify(payload)` for each
    notification; when that connection drops, connect again (backoff from `backoff_initial`
    doubling up to `backoff_max` seconds) and LISTEN again.

    NOTIFY is a wake-up, not a log: notifications sent while no connection listened are lost.
    So after every (re)connection, once LISTEN is active, `on_listening()` is called: the
    consumer re-reads the table that is the truth (e.g. session ends after the last sequence
    it saw). A silent network loss (no FIN) is found by a `SELECT 1` every `probe_interval`
    seconds that must answer within `probe_timeout`.
    """

    def __init__(self, settings: PostgresSettings, channel: str, on_notify: Callback, *,
                 on_listening: Callable[[], Awaitable[None] | None] | None = None,
                 backoff_initial: float = 0.05, backoff_max: float = 2.0,
                 probe_interval: float = 5.0, probe_timeout: float = 2.0) -> None:
        self._settings = settings
        self.channel = channel
        self._on_notify = on_notify
        self._on_listening = on_listening
        self._backoff = _Backoff(backoff_initial, backoff_max)
        self._probe_interval, self._probe_timeout = probe_interval, probe_timeout
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()
        self.connections = 0  # how many times LISTEN was set up (1 + reconnections)
        self.backend_pid: int | None = None
        self._deliveries: set[asyncio.Task[None]] = set()

    async def start(self, *, within: float = 10.0) -> None:
        """Start listening; returns once LISTEN is active, or stops and raises TimeoutError
        when it is not within `within` seconds."""
        self._task = asyncio.create_task(self._run(), name=f"listen:{self.channel}")
        try:
            await asyncio.wait_for(self.listening.wait(), within)
        except TimeoutError:
            await self.close()
            raise

    async def close(self) -> None:
        """Stop listening and close the connection."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while not self._stopping.is_set():
            # Any failure (not only a lost connection: too many connections, a password
            # file made unreadable, the consumer's callback) means connect again later; this
            # task must never die while the process relies on it.
            try:
                conn = await self._settings.connect(
                    application_name=f"{self._settings.application_name}:listen")
            except Exception as exc:
                log.warning("LISTEN %s: cannot connect (%s); retrying", self.channel, exc)
                await self._backoff.wait(self._stopping)
                continue
            try:
                await self._listen_on(conn)
            except Exception as exc:
                log.warning("LISTEN %s: connection lost (%s); reconnecting", self.channel, exc)
            finally:
                self.listening.clear()
                conn.terminate()
            await self._backoff.wait(self._stopping)

    async def _listen_on(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())

        def deliver(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            task = asyncio.create_task(self._deliver(payload))
            self._deliveries.add(task)  # keep a reference until it is done
            task.add_done_callback(self._deliveries.discard)

        await conn.add_listener(self.channel, deliver)
        self.backend_pid = conn.get_server_pid()
        self.connections += 1
        self.listening.set()
        self._backoff.reset()
        if self._on_listening is not None:
            await _call(self._on_listening)
        while not lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self._probe_interval)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self._probe_timeout)

    async def _deliver(self, payload: str) -> None:
        try:
            await _call(self._on_notify, payload)
        except Exception:
            log.exception("LISTEN %s: the notification callback failed", self.channel)


async def notify(conn: asyncpg.Connection, channel: str, payload: str = "") -> None:
    """NOTIFY `channel` with `payload` (delivered at commit when inside a transaction)."""
    await conn.execute("SELECT pg_notify($1, $2)", channel, payload)


# -- leader election -------------------------------------------------------------------------


class LeaderElection:
    """Leader election on a session-level `pg_try_advisory_lock` held on a dedicated
    connection (issue 13: "leader election with PostgreSQL advisory locks").

    Every contender tries the lock every `retry_interval` seconds; the one that gets it is
    leader while its connection lives. Leadership is lost when that connection dies (the
    server ends the session and releases the lock), which is noticed by asyncpg's termination
    callback at once, or by a heartbeat (`SELECT 1` every `heartbeat_interval`, answer within
    `heartbeat_timeout`) when the network drops silently.

    The server side bounds the other direction: the lock connection sets
    `idle_session_timeout` to `server_idle_timeout` (> heartbeat interval + timeout), so a
    leader that froze or lost the network loses the lock after that long, and by then it has
    stepped down on its own heartbeat failure: two leaders never overlap by the clock of
    this design. A job's database writes can still be fenced with `holds_lock()` inside the
    job's transaction, and by the database constraints the job relies on.

    `elected` is set while leader and `lost` while not; `on_elected()` / `on_lost()` are
    called on each change.
    """

    def __init__(self, settings: PostgresSettings, name: str, *, node: str = "",
                 on_elected: Callable[[], Awaitable[None] | None] | None = None,
                 on_lost: Callable[[], Awaitable[None] | None] | None = None,
                 retry_interval: float = 0.5, heartbeat_interval: float = 0.5,
                 heartbeat_timeout: float = 1.0, server_idle_timeout: float = 4.0) -> None:
        if server_idle_timeout <= heartbeat_interval + heartbeat_timeout:
            raise ValueError("server_idle_timeout must exceed heartbeat interval + timeout")
        self._settings = settings
        self.name = name
        self.node = node or f"pid{os.getpid()}"
        self.key = advisory_key(f"sekisho:leader:{name}")
        self._on_elected, self._on_lost = on_elected, on_lost
        self._retry_interval = retry_interval
        self._heartbeat_interval, self._heartbeat_timeout = heartbeat_interval, heartbeat_timeout
        self._server_idle_ms = int(server_idle_timeout * 1000)
        self._stopping = asyncio.Event()
        self._backoff = _Backoff(retry_interval, max(retry_interval, 2.0))
        self._task: asyncio.Task[None] | None = None
        self.elected = asyncio.Event()
        self.lost = asyncio.Event()
        self.lost.set()
        self.backend_pid: int | None = None
        self.terms = 0  # how many times this contender became leader

    @property
    def is_leader(self) -> bool:
        """True while this contender holds the lock."""
        return self.elected.is_set()

    @property
    def application_name(self) -> str:
        """What pg_stat_activity shows for the lock connection (see `current_leader`)."""
        return f"sekisho-leader:{self.name}:{self.node}"

    async def start(self) -> None:
        """Start contending (returns at once; wait on `elected` to know when leading)."""
        self._task = asyncio.create_task(self._run(), name=f"leader:{self.name}")

    async def close(self) -> None:
        """Stop contending; a leader releases the lock (closing its connection)."""
        self._stopping.set()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def holds_lock(self, conn: asyncpg.Connection) -> bool:
        """Whether this contender's lock connection holds the lock now, as seen from `conn`
        (e.g. inside a leader job's transaction, to fence its writes)."""
        if self.backend_pid is None or not self.is_leader:
            return False
        return bool(await conn.fetchval(_HOLDER_SQL + " AND l.pid = $3",
                                        *_lock_parts(self.key), self.backend_pid))

    async def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                try:
                    conn = await self._settings.connect(application_name=self.application_name)
                except Exception as exc:  # whatever it is, contend again later (see above)
                    log.warning("leader %s: cannot connect (%s); retrying", self.name, exc)
                    await self._backoff.wait(self._stopping)
                    continue
                try:
                    await self._contend(conn)
                except Exception as exc:
                    log.warning("leader %s: lock connection lost (%s)", self.name, exc)
                finally:
                    await self._step_down()  # first: never lead without the lock
                    await self._release(conn)
                await self._backoff.wait(self._stopping)
        finally:
            await self._step_down()

    async def _release(self, conn: asyncpg.Connection) -> None:
        """Unlock and close (a handover the next leader sees at once); a connection that
        does not answer within a second is dropped, which releases the lock too."""
        try:
            if not conn.is_closed():
                await conn.execute("SELECT pg_advisory_unlock_all()", timeout=1.0)
                await conn.close(timeout=1.0)
        except Exception:  # dead or stuck: the server frees the lock when the session ends
            log.debug("leader %s: unlock failed; dropping the connection", self.name)
        finally:
            if not conn.is_closed():
                conn.terminate()

    async def _contend(self, conn: asyncpg.Connection) -> None:
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn: lost.set())
        if conn.get_server_version().major >= 14:
            await conn.execute(f"SET idle_session_timeout = {self._server_idle_ms}")
        self.backend_pid = conn.get_server_pid()
        self._backoff.reset()
        while not lost.is_set():
            got = await conn.fetchval("SELECT pg_try_advisory_lock($1)", self.key,
                                      timeout=self._heartbeat_timeout)
            if got:
                break
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self._retry_interval)
        if lost.is_set():
            return
        self.terms += 1
        self.lost.clear()
        self.elected.set()
        log.info("leader %s: %s elected", self.name, self.node)
        if self._on_elected is not None:
            await _call(self._on_elected)
        while not lost.is_set():
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(lost.wait(), self._heartbeat_interval)
            if not lost.is_set():
                await conn.fetchval("SELECT 1", timeout=self._heartbeat_timeout)

    async def _step_down(self) -> None:
        if not self.elected.is_set():
            return
        self.elected.clear()
        self.lost.set()
        log.warning("leader %s: %s lost leadership", self.name, self.node)
        if self._on_lost is not None:
            await _call(self._on_lost)


_HOLDER_SQL = """
SELECT a.pid, a.application_name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1
  AND l.classid = $1 AND l.objid = $2
  AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())"""


def _lock_parts(key: int) -> tuple[int, int]:
    """pg_locks shows a bigint advisory key as classid (high 32 bits) and objid (low 32)."""
    unsigned = key & 0xFFFFFFFFFFFFFFFF
    return unsigned >> 32, unsigned & 0xFFFFFFFF


async def current_leader(conn: asyncpg.Connection, name: str) -> tuple[int, str] | None:
    """(backend pid, application name) of the session holding `name`'s leader lock, or None:
    what `cluster status` and `/metrics` can show."""
    row = await conn.fetchrow(_HOLDER_SQL, *_lock_parts(advisory_key(f"sekisho:leader:{name}")))
    return None if row is None else (int(row["pid"]), str(row["application_name"]))
