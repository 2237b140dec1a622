"""The PostgreSQL foundation (issues 12 and 13) against a real throwaway server: the fixture,
password rules, migrations under an advisory lock, retried transactions, LISTEN/NOTIFY that
survives a killed connection, and leader election across processes."""

from __future__ import annotations

import asyncio
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from common import pgdev
from common.pgdev import LocalCluster
from common.postgres import (
    ChannelListener,
    LeaderElection,
    PostgresConfigError,
    PostgresSettings,
    current_leader,
    migrate,
    notify,
    run_transaction,
    schema_version,
)
from tests.support.pgworker import RACE_MIGRATIONS
from tests.support.postgres import start_throwaway_cluster
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]
_roles = itertools.count(1)


@pytest.fixture
async def superuser(postgres_dsn: str) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the test's database."""
    conn = await PostgresSettings(postgres_dsn).connect()
    yield conn
    await conn.close()


def role_with_password(cluster: LocalCluster, password: str) -> str:
    """A new login role that must authenticate with `password` (SCRAM, pg_hba)."""
    role = f"app_{os.getpid()}_{next(_roles)}"
    cluster.psql(f"CREATE ROLE {role} LOGIN PASSWORD '{password}'")
    return role


def secret_file(folder: Path, content: str, mode: int) -> Path:
    """A password file with `mode`."""
    path = folder / "db-password"
    path.write_text(content + "\n")
    path.chmod(mode)
    return path


class Worker:
    """A `tests.support.pgworker` process whose stdout lines arrive on a queue."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: asyncio.Queue[str] = asyncio.Queue()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, *args: str) -> Worker:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "tests.support.pgworker", *args, cwd=REPO,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            await self.lines.put(line.decode().strip())

    async def expect(self, prefix: str, within: float) -> str:
        """The next line, which must start with `prefix`, within `within` seconds."""
        line = await asyncio.wait_for(self.lines.get(), within)
        assert line.startswith(prefix), line
        return line

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write(line.encode() + b"\n")

    async def stop(self) -> None:
        if self.process.returncode is None:
            with_signal = signal.SIGCONT  # a stopped process must run to die of SIGKILL
            self.process.send_signal(with_signal)
            self.process.kill()
        await self.process.wait()
        self._reader.cancel()


async def _wait_until(condition: object, within: float) -> None:
    deadline = time.monotonic() + within
    while not condition():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"not true within {within} s")
        await asyncio.sleep(0.02)


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in status


def _folder_mode_and_server_uid(cluster: LocalCluster) -> tuple[int, int]:
    """The cluster folder's mode and the uid the postmaster runs as (from /proc)."""
    postmaster = int((cluster.data / "postmaster.pid").read_text().split()[0])
    uid_line = next(line for line in Path(f"/proc/{postmaster}/status").read_text()
                    .splitlines() if line.startswith("Uid:"))
    return cluster.folder.stat().st_mode & 0o777, int(uid_line.split()[1])


class Partition:
    """A loopback TCP relay to the cluster's Unix socket whose `cut()` drops the network
    silently: nothing is relayed any more and no close is passed on, in either direction
    (what a dead switch does; no FIN, no RST)."""

    def __init__(self, socket_path: Path) -> None:
        self._socket_path = socket_path
        self._cut = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = free_port()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)

    def cut(self) -> None:
        self._cut.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.close()

    async def _relay(self, client_reader: asyncio.StreamReader,
                     client_writer: asyncio.StreamWriter) -> None:
        self._writers.append(client_writer)
        if self._cut.is_set():
            return  # accepted, then silence
        server_reader, server_writer = await asyncio.open_unix_connection(self._socket_path)
        self._writers.append(server_writer)
        for source, sink in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._pump(source, sink))
            self._tasks.add(task)

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self._cut.is_set():
                await asyncio.Event().wait()  # hold everything, forever
            sink.write(data)
            await sink.drain()
        if not self._cut.is_set():
            sink.close()


class TestThrowawayCluster:
    """The session fixture: a socket-only server run by an unprivileged user, one database
    per test."""

    async def test_socket_only_and_not_root(self, postgres_cluster: LocalCluster,
                                            superuser: asyncpg.Connection) -> None:
        """No TCP listener, the socket in the cluster's 0700 folder, a non-root server."""
        assert await superuser.fetchval("SHOW listen_addresses") == ""
        assert await superuser.fetchval("SHOW unix_socket_directories") == str(
            postgres_cluster.folder)
        assert await superuser.fetchval("SHOW fsync") == "off"
        folder_mode, server_uid = _folder_mode_and_server_uid(postgres_cluster)
        assert folder_mode == 0o700
        assert server_uid != 0
        if os.geteuid() == 0:
            assert pwd.getpwuid(server_uid).pw_name == pgdev.SERVER_USER

    @pytest.mark.parametrize(("ci", "outcome"), [("", pytest.skip.Exception),
                                                  ("true", pytest.fail.Exception)])
    def test_missing_binaries_skip_locally_and_fail_in_ci(
            self, monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[Exception]) -> None:
        """Without initdb the PostgreSQL tests skip on a developer's machine but fail under CI
        (the browser tests' rule), saying what to install."""
        monkeypatch.setenv("SEKISHO_PG_BINDIR", "/nonexistent/postgresql/bin")
        monkeypatch.setenv("CI", ci)
        with pytest.raises(outcome, match="apt-get install postgresql"):
            start_throwaway_cluster()

    def test_the_cluster_is_removed_when_tests_fail(self, tmp_path: Path,
                                                   postgres_cluster: LocalCluster) -> None:
        """A pytest run whose test fails still stops its server and deletes its folder."""
        (tmp_path / "conftest.py").write_text(
            "from tests.support.postgres import postgres_cluster  # noqa: F401\n")
        (tmp_path / "test_fails.py").write_text(
            "from pathlib import Path\n"
            "def test_fails(postgres_cluster):\n"
            f"    Path({str(tmp_path / 'seen')!r}).write_text(\n"
            "        str(postgres_cluster.folder) + ' ' +\n"
            "        (postgres_cluster.data / 'postmaster.pid').read_text().split()[0])\n"
            "    raise AssertionError('this test fails on purpose')\n")
        result = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
            cwd=tmp_path, env=os.environ | {"PYTHONPATH": str(REPO)}, capture_output=True,
            text=True, timeout=120, check=False)
        assert result.returncode == 1, result.stdout + result.stderr
        assert "this test fails on purpose" in result.stdout
        folder, postmaster = (tmp_path / "seen").read_text().split()
        assert not Path(folder).exists()
        deadline = time.monotonic() + 10  # an orphan's exit is reaped by init, not by us
        while _running(int(postmaster)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(int(postmaster))

    def test_a_server_that_cannot_start_fails_clearly(self,
                                                      postgres_cluster: LocalCluster) -> None:
        """A bad setting: start() fails within its bound with the server log's reason, and
        destroy() leaves nothing behind."""
        cluster = LocalCluster.throwaway()
        try:
            cluster.init()
            with (cluster.data / "postgresql.conf").open("a") as conf:
                conf.write("shared_buffers = 'plenty'\n")
            with pytest.raises(pgdev.ClusterError, match=r"did not start(.|\n)*shared_buffers"):
                cluster.start(timeout=20)
            assert not cluster.is_running()
        finally:
            cluster.destroy()
        assert not cluster.folder.exists()

    @pytest.mark.parametrize("turn", [1, 2])
    async def test_each_test_has_its_own_database(self, superuser: asyncpg.Connection,
                                                  turn: int) -> None:
        """Whichever turn runs second finds no trace of the first (a fresh clone)."""
        assert (await superuser.fetchval("SELECT current_database()")).startswith("test_")
        assert await superuser.fetchval("SELECT to_regclass('marker')") is None
        await superuser.execute("CREATE TABLE marker (turn integer)")


class TestSettings:
    """The DSN carries no password; the password comes from a 0600 file or the environment."""

    @pytest.mark.parametrize("dsn", [
        "postgresql://app:secret@/sekisho?host=/run/postgresql",
        "postgresql://app:@/sekisho?host=/run/postgresql",
        "postgres://app:secret@127.0.0.1/sekisho",
        "postgresql://app@/sekisho?host=/run/postgresql&password=secret",
        "postgresql://app@/sekisho?host=/run/postgresql&passfile=/tmp/pgpass",
    ])
    def test_dsn_with_a_password_is_refused(self, dsn: str) -> None:
        """Each spelling of a password in the DSN is refused, saying where it belongs."""
        with pytest.raises(PostgresConfigError, match=r"password_file.*chmod 600.*password_env"):
            PostgresSettings(dsn)

    @pytest.mark.parametrize("dsn", [
        "mysql://app@localhost/sekisho", "sekisho.sqlite3", "http://db/sekisho"])
    def test_other_schemes_are_refused(self, dsn: str) -> None:
        """Only postgresql:// (and its alias postgres://) names a PostgreSQL database."""
        with pytest.raises(PostgresConfigError, match="postgresql://"):
            PostgresSettings(dsn)

    @pytest.mark.parametrize(("dsn", "accepted"), [
        ("postgresql://app@db.bank.example/sekisho", False),
        ("postgresql://app@db.bank.example/sekisho?sslmode=require", False),
        ("postgresql://app@/sekisho?host=10.1.2.3", False),
        ("postgresql://app@db.bank.example/sekisho?sslmode=verify-full", True),
        ("postgresql://app@127.0.0.1:5432/sekisho", True),
        ("postgresql://app@[::1]/sekisho", True),
        ("postgresql://app@/sekisho?host=/run/postgresql", True),
    ])
    def test_a_remote_server_must_be_authenticated(self, dsn: str, accepted: bool) -> None:
        """Off this host the DSN must verify the server's certificate (sslmode=verify-*)."""
        if accepted:
            PostgresSettings(dsn)
        else:
            with pytest.raises(PostgresConfigError, match="sslmode=verify-full"):
                PostgresSettings(dsn)

    def test_a_remote_pghost_counts_too(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A DSN without a host goes where PGHOST says: the same rule applies."""
        monkeypatch.setenv("PGHOST", "db.bank.example")
        with pytest.raises(PostgresConfigError, match=r"db\.bank\.example"):
            PostgresSettings("postgresql://app@/sekisho")
        monkeypatch.setenv("PGHOST", "/run/postgresql")
        PostgresSettings("postgresql://app@/sekisho")

    @pytest.mark.parametrize("mode", [0o640, 0o604, 0o620, 0o602, 0o660, 0o644])
    def test_password_file_with_group_or_other_bits_is_refused(self, tmp_path: Path,
                                                               mode: int) -> None:
        """Like keys/ for the passphrase: any group/other bit refuses the file at start-up."""
        path = secret_file(tmp_path, "secret", mode)
        with pytest.raises(PostgresConfigError, match=f"mode {mode:04o}.*chmod 600"):
            PostgresSettings("postgresql://app@/db?host=/tmp", password_file=path)

    def test_missing_or_empty_password_file_is_refused(self, tmp_path: Path) -> None:
        """A missing or empty file is a start-up error, not a password-less connection."""
        with pytest.raises(PostgresConfigError, match="does not exist"):
            PostgresSettings("postgresql://app@/db?host=/tmp", password_file=tmp_path / "none")
        empty = secret_file(tmp_path, "", 0o600)
        with pytest.raises(PostgresConfigError, match="is empty"):
            PostgresSettings("postgresql://app@/db?host=/tmp", password_file=empty)

    def test_password_env_must_be_set_and_is_exclusive(self, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
        """password_env names a variable that must be set; file and variable not both."""
        monkeypatch.delenv("SEKISHO_TEST_DB_PASSWORD", raising=False)
        with pytest.raises(PostgresConfigError, match="SEKISHO_TEST_DB_PASSWORD"):
            PostgresSettings("postgresql://app@/db?host=/tmp",
                             password_env="SEKISHO_TEST_DB_PASSWORD")
        path = secret_file(tmp_path, "secret", 0o600)
        with pytest.raises(PostgresConfigError, match="not both"):
            PostgresSettings("postgresql://app@/db?host=/tmp", password_file=path,
                             password_env="SEKISHO_TEST_DB_PASSWORD")

    async def test_password_file_authenticates_and_is_reread(
            self, postgres_cluster: LocalCluster, postgres_database: str,
            tmp_path: Path) -> None:
        """A 0600 file logs a SCRAM role in; a wrong one is refused by the server; a rotated
        file is read again for the next connection, without new settings."""
        role = role_with_password(postgres_cluster, "first-password")
        path = secret_file(tmp_path, "first-password", 0o600)
        settings = PostgresSettings(postgres_cluster.dsn(postgres_database, user=role),
                                    password_file=path, pool_max_size=2)
        pool = await settings.create_pool()
        try:
            assert await pool.fetchval("SELECT current_user") == role
            postgres_cluster.psql(f"ALTER ROLE {role} PASSWORD 'second-password'")
            with pytest.raises(asyncpg.InvalidPasswordError):
                await settings.connect()
            secret_file(tmp_path, "second-password", 0o600)
            conn = await settings.connect()
            assert await conn.fetchval("SELECT current_user") == role
            await conn.close()
        finally:
            await pool.close()

    async def test_password_env_authenticates(self, postgres_cluster: LocalCluster,
                                              postgres_database: str,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
        """The password from the environment variable logs the role in."""
        role = role_with_password(postgres_cluster, "env-password")
        monkeypatch.setenv("SEKISHO_TEST_DB_PASSWORD", "env-password")
        settings = PostgresSettings(postgres_cluster.dsn(postgres_database, user=role),
                                    password_env="SEKISHO_TEST_DB_PASSWORD")
        conn = await settings.connect()
        assert await conn.fetchval("SELECT current_user") == role
        await conn.close()

    async def test_statement_cache_off_for_pgbouncer(self, postgres_dsn: str) -> None:
        """statement_cache_size = 0 (PgBouncer transaction mode) leaves no named statement."""
        settings = PostgresSettings(postgres_dsn, statement_cache_size=0)
        conn = await settings.connect()
        try:
            for _ in range(3):
                await conn.fetchval("SELECT $1::int + 1", 1)
            assert await conn.fetchval("SELECT count(*) FROM pg_prepared_statements") == 0
        finally:
            await conn.close()
        cached = await PostgresSettings(postgres_dsn).connect()
        try:
            await cached.fetchval("SELECT $1::int + 1", 1)
            assert await cached.fetchval("SELECT count(*) FROM pg_prepared_statements") > 0
        finally:
            await cached.close()


class TestMigrations:
    """The same versioned migrations as common.sqlite, applied once under an advisory lock."""

    async def test_versions_advance_once(self, superuser: asyncpg.Connection) -> None:
        """Migration i gives version i + 1; a second run applies nothing."""
        first = ["CREATE TABLE users (id text PRIMARY KEY)"]
        both = [*first, "ALTER TABLE users ADD COLUMN name text"]
        assert await schema_version(superuser) == 0
        assert (await migrate(superuser, first, name="t")).after == 1
        result = await migrate(superuser, both, name="t")
        assert (result.before, result.after) == (1, 2)
        result = await migrate(superuser, both, name="t")
        assert (result.before, result.after) == (2, 2)
        assert await superuser.fetchval("SELECT count(*) FROM schema_version") == 1

    async def test_newer_database_is_refused(self, superuser: asyncpg.Connection) -> None:
        """An older program refuses a database migrated by a newer one."""
        await migrate(superuser, ["SELECT 1", "SELECT 2"], name="t")
        with pytest.raises(RuntimeError, match="newer than this program"):
            await migrate(superuser, ["SELECT 1"], name="t")

    async def test_a_failing_migration_changes_nothing(self,
                                                       superuser: asyncpg.Connection) -> None:
        """All pending migrations commit together or not at all."""
        broken = ["CREATE TABLE a (x int)", "CREATE TABLE b (x no_such_type)"]
        with pytest.raises(asyncpg.UndefinedObjectError):
            await migrate(superuser, broken, name="t")
        assert await superuser.fetchval("SELECT to_regclass('a')") is None
        assert await schema_version(superuser) == 0

    async def test_two_processes_starting_at_once_migrate_once(
            self, postgres_dsn: str, superuser: asyncpg.Connection) -> None:
        """Two real processes released together: one applies the (non-repeatable) migrations,
        the other waits on the lock and finds the schema current."""
        workers = [await Worker.start("migrate", postgres_dsn) for _ in range(2)]
        try:
            for worker in workers:
                await worker.expect("READY", 30)
            for worker in workers:
                worker.send("GO")
            results = sorted([await worker.expect("MIGRATED", 30) for worker in workers])
        finally:
            for worker in workers:
                await worker.stop()
        assert results == [f"MIGRATED 0 {len(RACE_MIGRATIONS)}",
                           f"MIGRATED {len(RACE_MIGRATIONS)} {len(RACE_MIGRATIONS)}"]
        assert await superuser.fetchval("SELECT count(*) FROM applied") == 1
        assert await schema_version(superuser) == len(RACE_MIGRATIONS)


class TestRunTransaction:
    """Serialization failures and deadlocks are retried, a bounded number of times."""

    async def test_serialization_failures_are_retried(self, postgres_dsn: str,
                                                      superuser: asyncpg.Connection) -> None:
        """Concurrent read-modify-write transactions at SERIALIZABLE: every increment lands,
        the conflicts having been run again."""
        await superuser.execute("CREATE TABLE counter (n integer); INSERT INTO counter VALUES (0)")
        pool = await PostgresSettings(postgres_dsn, pool_max_size=5).create_pool()
        calls = 0

        async def increment(conn: asyncpg.Connection) -> None:
            nonlocal calls
            calls += 1
            value = await conn.fetchval("SELECT n FROM counter")
            await asyncio.sleep(0.05)
            await conn.execute("UPDATE counter SET n = $1", value + 1)

        try:
            await asyncio.gather(*(run_transaction(pool, increment, attempts=20)
                                   for _ in range(5)))
        finally:
            await pool.close()
        assert await superuser.fetchval("SELECT n FROM counter") == 5
        assert calls > 5  # some ran again after a serialization failure

    async def test_deadlocks_are_retried(self, postgres_dsn: str,
                                         superuser: asyncpg.Connection) -> None:
        """Two transactions locking two rows in opposite orders: PostgreSQL aborts one, which
        runs again and succeeds."""
        await superuser.execute("CREATE TABLE rows (id integer PRIMARY KEY, v integer);"
                                "INSERT INTO rows VALUES (1, 0), (2, 0)")
        pool = await PostgresSettings(postgres_dsn, pool_max_size=2).create_pool()
        both_hold_one = asyncio.Barrier(2)
        calls = 0

        def crossing(first: int, second: int):  # type: ignore[no-untyped-def]
            async def work(conn: asyncpg.Connection) -> None:
                nonlocal calls
                calls += 1
                await conn.execute("UPDATE rows SET v = v + 1 WHERE id = $1", first)
                if calls <= 2:
                    await both_hold_one.wait()
                await conn.execute("UPDATE rows SET v = v + 1 WHERE id = $1", second)
            return work

        try:
            await asyncio.gather(
                run_transaction(pool, crossing(1, 2), isolation="read_committed"),
                run_transaction(pool, crossing(2, 1), isolation="read_committed"))
        finally:
            await pool.close()
        assert calls == 3
        assert [row["v"] for row in await superuser.fetch("SELECT v FROM rows ORDER BY id")
                ] == [2, 2]

    async def test_retries_are_bounded(self, postgres_dsn: str) -> None:
        """A transaction that always fails to serialize is tried `attempts` times, then the
        error comes out; other errors are not retried."""
        pool = await PostgresSettings(postgres_dsn, pool_max_size=1).create_pool()
        calls = 0

        async def always_conflicts(conn: asyncpg.Connection) -> None:
            nonlocal calls
            calls += 1
            await conn.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' "
                               "USING ERRCODE = 'serialization_failure'; END $$")

        async def divides_by_zero(conn: asyncpg.Connection) -> None:
            nonlocal calls
            calls += 1
            await conn.fetchval("SELECT 1 / 0")

        try:
            with pytest.raises(asyncpg.SerializationError):
                await run_transaction(pool, always_conflicts, attempts=3, backoff=0.001)
            assert calls == 3
            calls = 0
            with pytest.raises(asyncpg.DivisionByZeroError):
                await run_transaction(pool, divides_by_zero, attempts=3)
            assert calls == 1
        finally:
            await pool.close()


class TestChannelListener:
    """LISTEN/NOTIFY between connections, surviving the death of the listening one."""

    async def test_delivered_and_resumed_after_the_backend_is_killed(
            self, postgres_dsn: str, superuser: asyncpg.Connection) -> None:
        """A notification arrives within 1 s; after pg_terminate_backend kills the listening
        connection the listener reconnects, calls on_listening again (the consumer's cue to
        re-read what it missed) and delivers the next notification within 1 s."""
        received: asyncio.Queue[str] = asyncio.Queue()
        listening_calls = 0

        def on_listening() -> None:
            nonlocal listening_calls
            listening_calls += 1

        listener = ChannelListener(PostgresSettings(postgres_dsn), "session_end",
                                   received.put_nowait, on_listening=on_listening)
        await listener.start()
        try:
            sent_at = time.monotonic()
            await notify(superuser, "session_end", "user-1")
            assert await asyncio.wait_for(received.get(), 1.0) == "user-1"
            print(f"NOTIFY -> callback: {(time.monotonic() - sent_at) * 1000:.1f} ms")

            killed = listener.backend_pid
            assert await superuser.fetchval("SELECT pg_terminate_backend($1)", killed)
            await _wait_until(lambda: listener.connections == 2 and listener.listening.is_set(),
                              10)
            assert listener.backend_pid != killed
            assert listening_calls == 2

            await notify(superuser, "session_end", "user-2")
            assert await asyncio.wait_for(received.get(), 1.0) == "user-2"
        finally:
            await listener.close()
        assert not listener.listening.is_set()

    async def test_keeps_trying_through_errors_other_than_a_lost_connection(
            self, postgres_cluster: LocalCluster, postgres_database: str, tmp_path: Path,
            superuser: asyncpg.Connection) -> None:
        """While the password file is unusable (chmod 644) reconnecting fails with a config
        error; the listener keeps trying and resumes once the file is fixed."""
        role = role_with_password(postgres_cluster, "listen-password")
        path = secret_file(tmp_path, "listen-password", 0o600)
        received: asyncio.Queue[str] = asyncio.Queue()
        listener = ChannelListener(
            PostgresSettings(postgres_cluster.dsn(postgres_database, user=role),
                             password_file=path), "c", received.put_nowait)
        await listener.start()
        try:
            path.chmod(0o644)
            await superuser.fetchval("SELECT pg_terminate_backend($1)", listener.backend_pid)
            await _wait_until(lambda: not listener.listening.is_set(), 5)
            await asyncio.sleep(0.5)  # several refused reconnections
            assert not listener.listening.is_set()
            path.chmod(0o600)
            await asyncio.wait_for(listener.listening.wait(), 5)
            await notify(superuser, "c", "back")
            assert await asyncio.wait_for(received.get(), 1.0) == "back"
        finally:
            await listener.close()

    async def test_notifications_inside_a_transaction_arrive_at_commit(
            self, postgres_dsn: str, superuser: asyncpg.Connection) -> None:
        """A rolled-back transaction's NOTIFY is never delivered; a committed one is."""
        received: asyncio.Queue[str] = asyncio.Queue()
        listener = ChannelListener(PostgresSettings(postgres_dsn), "ends", received.put_nowait)
        await listener.start()
        try:
            transaction = superuser.transaction()
            await transaction.start()
            await notify(superuser, "ends", "rolled-back")
            await transaction.rollback()
            async with superuser.transaction():
                await notify(superuser, "ends", "committed")
            assert await asyncio.wait_for(received.get(), 1.0) == "committed"
            assert received.empty()
        finally:
            await listener.close()

    async def test_start_gives_up_when_no_server_answers(self, tmp_path: Path) -> None:
        """Against a socket folder with no server, start() fails within its bound and leaves
        no task retrying behind."""
        listener = ChannelListener(
            PostgresSettings(f"postgresql://postgres@/x?host={tmp_path}"), "c", print)
        with pytest.raises(TimeoutError):
            await listener.start(within=0.5)
        assert listener._task is not None and listener._task.done()


class TestLeaderElection:
    """One leader among contenders; a new one within seconds when it dies."""

    async def test_one_leader_of_two_processes_and_failover_on_kill_9(
            self, postgres_dsn: str, superuser: asyncpg.Connection) -> None:
        """Two processes contend: exactly one leads (also as pg_locks shows it); kill -9 the
        leader and the other leads within 5 s."""
        workers = {node: await Worker.start("leader", postgres_dsn, "crl", node)
                   for node in ("node1", "node2")}
        try:
            for worker in workers.values():
                await worker.expect("STARTED", 30)
            first = await _first_elected(workers, within=10)
            other = next(node for node in workers if node != first)
            await asyncio.sleep(1.5)  # three retry intervals: the other must not lead
            assert workers[other].lines.empty()
            holder = await current_leader(superuser, "crl")
            assert holder is not None and holder[1].endswith(f":{first}")

            workers[first].process.kill()
            killed_at = time.monotonic()
            await workers[other].expect(f"ELECTED {other}", 5)
            failover = time.monotonic() - killed_at
            holder = await current_leader(superuser, "crl")
            assert holder is not None and holder[1].endswith(f":{other}")
            print(f"failover after kill -9: {failover:.3f} s")
        finally:
            for worker in workers.values():
                await worker.stop()

    async def test_a_frozen_leader_is_replaced_and_steps_down(
            self, postgres_dsn: str) -> None:
        """A leader that stops answering (SIGSTOP: like a network drop, no FIN) loses the lock
        on the server after idle_session_timeout; the other process leads, and the frozen one,
        once it runs again, reports it lost leadership."""
        workers = {node: await Worker.start("leader", postgres_dsn, "ocsp", node)
                   for node in ("node1", "node2")}
        try:
            for worker in workers.values():
                await worker.expect("STARTED", 30)
            first = await _first_elected(workers, within=10)
            other = next(node for node in workers if node != first)
            workers[first].process.send_signal(signal.SIGSTOP)
            frozen_at = time.monotonic()
            await workers[other].expect(f"ELECTED {other}", 10)
            print(f"failover after a freeze: {time.monotonic() - frozen_at:.3f} s")
            workers[first].process.send_signal(signal.SIGCONT)
            await workers[first].expect(f"LOST {first}", 10)
        finally:
            for worker in workers.values():
                await worker.stop()

    async def test_a_partitioned_leader_steps_down_before_another_leads(
            self, postgres_cluster: LocalCluster, postgres_database: str) -> None:
        """The network between the leader and PostgreSQL drops silently: the leader's
        heartbeat fails and it steps down; only later (idle_session_timeout) does the server
        free the lock and the other contender lead; the two never lead at once."""
        partition = Partition(postgres_cluster.socket)
        await partition.start()
        moments: dict[str, float] = {}
        over_network = LeaderElection(
            PostgresSettings(f"postgresql://postgres@127.0.0.1:{partition.port}/"
                             f"{postgres_database}", connect_timeout=2),
            "campaign", node="a", on_lost=lambda: moments.setdefault("a lost", time.monotonic()))
        direct = LeaderElection(
            PostgresSettings(postgres_cluster.dsn(postgres_database)), "campaign", node="b",
            on_elected=lambda: moments.setdefault("b elected", time.monotonic()))
        await over_network.start()
        try:
            await asyncio.wait_for(over_network.elected.wait(), 5)
            await direct.start()
            await asyncio.sleep(1.0)
            assert not direct.is_leader
            partition.cut()
            cut_at = time.monotonic()
            await asyncio.wait_for(direct.elected.wait(), 10)
            assert not over_network.is_leader
            assert moments["a lost"] < moments["b elected"]
            print(f"partition: leader stepped down after {moments['a lost'] - cut_at:.2f} s, "
                  f"the other leads after {moments['b elected'] - cut_at:.2f} s")
        finally:
            await over_network.close()
            await direct.close()
            await partition.close()

    async def test_terminated_lock_connection_loses_leadership(
            self, postgres_dsn: str, superuser: asyncpg.Connection) -> None:
        """pg_terminate_backend of the leader's lock connection: it notices at once (lost set,
        on_lost called, holds_lock false), and with no rival it is elected again."""
        events: list[str] = []
        election = LeaderElection(PostgresSettings(postgres_dsn), "cutover", node="n1",
                                  on_elected=lambda: events.append("elected"),
                                  on_lost=lambda: events.append("lost"))
        await election.start()
        try:
            await asyncio.wait_for(election.elected.wait(), 5)
            assert await election.holds_lock(superuser)
            lock_pid = election.backend_pid
            assert await superuser.fetchval("SELECT pg_terminate_backend($1)", lock_pid)
            await asyncio.wait_for(election.lost.wait(), 2)
            assert not election.is_leader
            assert not await election.holds_lock(superuser)
            await asyncio.wait_for(election.elected.wait(), 5)
            assert election.backend_pid != lock_pid
            assert election.terms == 2
            assert events == ["elected", "lost", "elected"]
        finally:
            await election.close()
        assert events[-1] == "lost"  # closing steps down
        assert await current_leader(superuser, "cutover") is None

    async def test_elections_of_other_names_do_not_interfere(self, postgres_dsn: str) -> None:
        """Each job name has its own lock: two names, two leaders."""
        settings = PostgresSettings(postgres_dsn)
        elections = [LeaderElection(settings, name) for name in ("crl", "ocsp")]
        for election in elections:
            await election.start()
        try:
            for election in elections:
                await asyncio.wait_for(election.elected.wait(), 5)
        finally:
            for election in elections:
                await election.close()


async def _first_elected(workers: dict[str, Worker], within: float) -> str:
    """The node whose worker prints ELECTED first."""
    waits = {asyncio.create_task(worker.expect("ELECTED", within)): node
             for node, worker in workers.items()}
    done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    task = done.pop()
    task.result()  # raises when no line came in time
    return waits[task]


class TestDevCluster:
    """`python -m common.pgdev`: the developer's cluster, made by the same code."""

    def test_start_dsn_status_stop(self, postgres_cluster: LocalCluster) -> None:
        """start prints a DSN that works; status tells; stop stops; var/ opens to the server's
        group only (0710) and its folder is 0700."""
        root = Path(tempfile.mkdtemp(prefix="sekisho-pgdev-"))
        root.chmod(0o755)  # like a checkout: the server's user may pass through
        folder = root / "var" / "pg"
        try:
            def pgdev_cli(*args: str) -> subprocess.CompletedProcess[str]:
                return subprocess.run([sys.executable, "-m", "common.pgdev", *args,
                                       "--folder", str(folder)], cwd=REPO, text=True,
                                      capture_output=True, timeout=120, check=False)

            started = pgdev_cli("start")
            assert started.returncode == 0, started.stderr
            dsn = started.stdout.strip()
            assert dsn == pgdev_cli("dsn").stdout.strip()
            assert pgdev_cli("status").returncode == 0
            assert (folder.stat().st_mode & 0o777) == 0o700
            if os.geteuid() == 0:
                assert (folder.parent.stat().st_mode & 0o777) == 0o710

            async def query() -> str:
                conn = await PostgresSettings(dsn).connect()
                try:
                    return str(await conn.fetchval("SHOW fsync"))
                finally:
                    await conn.close()

            assert asyncio.run(query()) == "on"  # the dev cluster is durable
            assert pgdev_cli("start").returncode == 0  # already running: fine
            assert pgdev_cli("stop").returncode == 0
            assert pgdev_cli("status").returncode == 3
        finally:
            LocalCluster.in_folder(folder).stop(immediate=True)
            shutil.rmtree(root, ignore_errors=True)

    @pytest.mark.skipif(os.geteuid() != 0, reason="only root runs the server as another user")
    def test_unreachable_folder_is_refused_with_advice(self,
                                                       postgres_cluster: LocalCluster) -> None:
        """A folder the server's user cannot reach is refused, naming the folder to open."""
        root = Path(tempfile.mkdtemp(prefix="sekisho-pgdev-"))  # 0700, root's
        try:
            cluster = LocalCluster.in_folder(root / "pg")
            with pytest.raises(pgdev.ClusterError, match=f"{root} has no search"):
                cluster.init()
        finally:
            shutil.rmtree(root, ignore_errors=True)
