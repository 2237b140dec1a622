"""`sekisho-gateway db migrate | status | copy` (issue 12) on a real SQLite file and a real
PostgreSQL server."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from common.postgres import PostgresSettings
from gateway import cli
from gateway.users import MIGRATIONS, SessionRecord, UserStore
from gateway.users_pg import PgUserStore
from policy.clock import FakeClock
from tests.gateway.test_users import add

SESSION = SessionRecord(token_hash=b"\x01" * 32, user_id="100003", fingerprint="f" * 64,
                        serial="ab", name="Tanaka", customer="ABC", role="contractor",
                        previous_login_at=None, csrf="c" * 43, must_change=None,
                        created_at=1_796_000_000.25, last_seen_at=1_796_000_100.5)


def _config(tmp_path: Path, database: str, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f'[gateway]\ndatabase = "{database}"\n{extra}')
    return path


def _run(config: Path, clock: FakeClock, *args: str) -> int:
    return cli.main(["--config", str(config), *args], clock=clock)


async def _embedded_install(path: Path, clock: FakeClock) -> None:
    """Users in every state the copy must keep: locked, a pending try, history, audit."""
    store = await UserStore.open(path, clock)
    try:
        await add(store, "100001", "h0")
        await store.set_password("100001", "h1", keep_previous=2, actor="user:100001")
        await store.set_password("100001", "h2", keep_previous=2, actor="user:100001")
        await add(store, "100002")
        for _ in range(3):
            assert await store.reserve_attempt("100002", 3) == "reserved"
            await store.record_failure("100002", 3)
        await add(store, "100003")
        assert await store.reserve_attempt("100003", 3) == "reserved"  # left pending
        await store.reserve_unknown_attempt("ghost", 3)
        await store.record_unknown_failure("ghost", 3)
        await store.disable("100001", actor="helpdesk:x")
        await store.create_session(SESSION)  # a logged-in user stays logged in
    finally:
        await store.close()


class TestDbCommands:
    """migrate and status on both backends."""

    def test_migrate_and_status_sqlite(self, tmp_path: Path, clock: FakeClock,
                                       capsys: pytest.CaptureFixture[str]) -> None:
        """A new file is created at the newest version; status says so and counts users."""
        config = _config(tmp_path, "var/gw.sqlite3")
        assert _run(config, clock, "db", "migrate") == 0
        assert f"schema version 0 -> {len(MIGRATIONS)}" in capsys.readouterr().out
        assert _run(config, clock, "db", "migrate") == 0
        assert "up to date" in capsys.readouterr().out
        assert _run(config, clock, "db", "status") == 0
        out = capsys.readouterr().out
        assert "backend        sqlite" in out and "audit chain    0 entries, intact" in out

    def test_migrate_and_status_postgresql(self, tmp_path: Path, clock: FakeClock,
                                           postgres_dsn: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
        """The same on PostgreSQL; the DSN is printed as configured (it holds no password)."""
        config = _config(tmp_path, postgres_dsn)
        assert _run(config, clock, "db", "status") == 1
        assert "run `sekisho-gateway db migrate`" in capsys.readouterr().out
        assert _run(config, clock, "db", "migrate") == 0
        assert f"schema version 0 -> {len(MIGRATIONS)}" in capsys.readouterr().out
        assert _run(config, clock, "db", "status") == 0
        assert "backend        postgresql" in capsys.readouterr().out

    def test_password_in_config_refused(self, tmp_path: Path, clock: FakeClock,
                                        capsys: pytest.CaptureFixture[str]) -> None:
        """A DSN with a password, or a password file that others can read, stops the
        command with one line naming the fix."""
        config = _config(tmp_path, "postgresql://gw:secret@127.0.0.1/sekisho")
        assert _run(config, clock, "db", "status") == 1
        assert "password_file" in capsys.readouterr().err
        secret = tmp_path / "pw"
        secret.write_text("s3cret\n")
        secret.chmod(0o644)
        config = _config(tmp_path, "postgresql://gw@127.0.0.1/sekisho",
                         f'database_password_file = "{secret}"\n')
        assert _run(config, clock, "db", "status") == 1
        assert "chmod 600" in capsys.readouterr().err


    def test_default_is_the_embedded_file(self, tmp_path: Path) -> None:
        """Without gateway.database the store is var/gateway/gateway.sqlite3 (make run needs
        no database server); a DSN selects PostgreSQL."""
        from common.config import load_raw
        from gateway.config import gateway_config_from

        path = tmp_path / "config.toml"
        path.write_text("[gateway]\n")
        config = gateway_config_from(load_raw(path))
        assert config.postgres is None
        assert config.database == tmp_path / "var/gateway/gateway.sqlite3"
        config = gateway_config_from(load_raw(_config(tmp_path, "postgresql://gw@/sekisho")))
        assert config.postgres is not None and config.store_name == "postgresql://gw@/sekisho"


class TestCopy:
    """db copy --to DSN: an embedded install moves to PostgreSQL with its state."""

    def test_copy_keeps_users_history_lockout_and_audit(
            self, tmp_path: Path, clock: FakeClock, postgres_dsn: str,
            capsys: pytest.CaptureFixture[str]) -> None:
        """Every row arrives; the lock, the pending try, the history and the chain hold on
        PostgreSQL, and the chain continues there; a second copy is refused."""
        database = tmp_path / "var" / "gw.sqlite3"
        asyncio.run(_embedded_install(database, clock))
        config = _config(tmp_path, "var/gw.sqlite3")
        assert _run(config, clock, "db", "copy", "--to", postgres_dsn) == 0
        out = capsys.readouterr().out
        assert "3 users" in out and "audit chain verified" in out

        async def check() -> None:
            source = await UserStore.open(database, clock)
            target = await PgUserStore.open(PostgresSettings(postgres_dsn), clock)
            try:
                assert await target.list_users() == await source.list_users()
                assert [(e.id, e.action, e.subject, e.details)
                        for e in await target.audit_entries()] == [
                    (e.id, e.action, e.subject, e.details) for e in await source.audit_entries()]
                assert await target.recent_password_hashes("100001", 3) == ["h2", "h1", "h0"]
                assert await target.reserve_attempt("100002", 3) == "locked"
                assert await target.reserve_attempt("100001", 3) == "locked"  # disabled
                assert await target.reserve_unknown_attempt("ghost", 3) == "reserved"
                assert await target.last_session_event() == await source.last_session_event()
                assert await target.load_session(SESSION.token_hash) == SESSION
                await target.unlock("100002", actor="helpdesk:x")  # the chain goes on
                assert await target.verify_audit() == []
            finally:
                await source.close()
                await target.close()

        asyncio.run(check())
        assert _run(config, clock, "db", "copy", "--to", postgres_dsn) == 1
        assert "already holds gateway data" in capsys.readouterr().err

    def test_damaged_source_chain_not_copied(self, tmp_path: Path, clock: FakeClock,
                                             postgres_dsn: str,
                                             capsys: pytest.CaptureFixture[str]) -> None:
        """A source whose audit chain does not verify is refused before anything is written."""
        import sqlite3

        database = tmp_path / "var" / "gw.sqlite3"
        asyncio.run(_embedded_install(database, clock))
        with sqlite3.connect(database) as raw:
            raw.execute("UPDATE audit_log SET subject = 'x' WHERE id = 2")
        assert _run(_config(tmp_path, "var/gw.sqlite3"), clock,
                    "db", "copy", "--to", postgres_dsn) == 1
        assert "audit chain is damaged" in capsys.readouterr().err
