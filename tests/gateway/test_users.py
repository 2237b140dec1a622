"""The gateway's user store: schema, passwords, attempt counting, audit (R-PW-*, R-LOCK-1,
R-OPS-2)."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from datetime import timedelta
from pathlib import Path

import pytest

from common.postgres import PostgresSettings
from gateway import users_pg
from gateway.errors import BadRequest, Conflict, NotFound
from gateway.store import UserBackend
from gateway.users import MIGRATIONS, Role, UserStore
from gateway.users_pg import PgUserStore
from policy.clock import FakeClock
from tests.gateway.conftest import BOTH_STORES

HOUR = timedelta(hours=1)


async def add(store: UserBackend, user_id: str = "2004000003", password_hash: str = "h0") -> None:
    """Add a contractor with a fake hash (the store never looks inside hashes)."""
    await store.add_user(user_id, name="Tanaka Taro", customer="ABC Trading", role="contractor",
                         password_hash=password_hash, actor="helpdesk:test")


def db_path(tmp_path: Path) -> Path:
    """Where the `store` fixture keeps its file."""
    return tmp_path / "gateway" / "gateway.sqlite3"


class TestSchema:
    """A durable, versioned SQLite file of the gateway's own (R-OPS-2)."""

    async def test_wal_version_and_mode_R_OPS_2(self, store: UserBackend, tmp_path: Path) -> None:
        """The file is in WAL mode, owner-only, at the newest schema version."""
        path = db_path(tmp_path)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert raw.execute("SELECT version FROM schema_version").fetchall() == [
                (len(MIGRATIONS),)
            ]

    async def test_reopen_keeps_data_R_OPS_2(
        self, store: UserBackend, tmp_path: Path, clock: FakeClock
    ) -> None:
        """Opening an existing file runs no migration again and keeps the users."""
        await add(store)
        again = await UserStore.open(db_path(tmp_path), clock)
        try:
            assert (await again.get("2004000003")) is not None
        finally:
            await again.close()

    async def test_newer_schema_refused_R_OPS_2(self, tmp_path: Path, clock: FakeClock) -> None:
        """A file written by a newer Sekisho is refused with a message saying so."""
        path = tmp_path / "newer.sqlite3"
        with sqlite3.connect(path) as raw:
            raw.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
            raw.execute("INSERT INTO schema_version VALUES (99)")
        with pytest.raises(RuntimeError, match="upgrade Sekisho"):
            await UserStore.open(path, clock)


@pytest.mark.parametrize("gateway_store", ["postgresql"])
class TestPostgresSchema:
    """The same versioned schema on PostgreSQL (issue 12)."""

    async def test_same_versions_on_both_backends(self, store: UserBackend,
                                                  clock: FakeClock) -> None:
        """Both backends number their migrations alike; a reopen migrates nothing and keeps
        the users; a newer database is refused."""
        assert isinstance(store, PgUserStore)
        assert len(users_pg.MIGRATIONS) == len(MIGRATIONS)
        assert await store.schema_version() == len(MIGRATIONS)
        await add(store)
        again = await PgUserStore.open(store.settings, clock)
        try:
            assert (await again.get("2004000003")) is not None
        finally:
            await again.close()
        conn = await store.settings.connect()
        try:
            await conn.execute("UPDATE schema_version SET version = 99")
        finally:
            await conn.close()
        with pytest.raises(RuntimeError, match="upgrade Sekisho"):
            await PgUserStore.open(store.settings, clock)

    def test_password_never_in_the_dsn(self, gateway_store: str) -> None:
        """A DSN that carries a password is refused, naming where the password goes."""
        with pytest.raises(ValueError, match="password_file"):
            PostgresSettings("postgresql://gw:secret@127.0.0.1/sekisho")


@BOTH_STORES
class TestUsers:
    """Adding users, temporary passwords, helpdesk actions (R-PW-2, §2.6, §2.7)."""

    async def test_new_user_has_temporary_password_R_PW_2(
        self, store: UserBackend, clock: FakeClock
    ) -> None:
        """A new user must change the password at first login; times come from the clock."""
        await add(store)
        user = await store.get("2004000003")
        assert user is not None
        assert user.must_change
        assert user.role is Role.CONTRACTOR
        assert user.password_set_at == user.created_at == clock.now()
        assert user.last_login_at is None
        assert "h0" not in repr(user)

    async def test_duplicate_and_bad_input_refused_R_CERT_1(self, store: UserBackend) -> None:
        """A second user with the same ID, a bad ID shape and an unknown role are refused."""
        await add(store)
        with pytest.raises(Conflict):
            await add(store)
        with pytest.raises(BadRequest):
            await add(store, user_id="a/b")
        with pytest.raises(BadRequest):
            await store.add_user("x1", name="n", customer="c", role="officer",
                                 password_hash="h", actor="t")

    async def test_list_users_R_UI_2(self, store: UserBackend) -> None:
        """Users are listed with their customer, name and role."""
        await add(store, "b2")
        await add(store, "a1")
        assert [u.user_id for u in await store.list_users()] == ["a1", "b2"]

    async def test_set_password_pushes_history_R_PW_1(
        self, store: UserBackend, clock: FakeClock
    ) -> None:
        """A change keeps the old hash in the history, clears must_change and stamps the time."""
        start = clock.now()
        await add(store)
        for n in range(1, 4):
            clock.advance(HOUR)
            assert await store.set_password("2004000003", f"h{n}", keep_previous=1,
                                            actor="user:2004000003")
        user = await store.get("2004000003")
        assert user is not None
        assert not user.must_change
        assert user.password_set_at == start + 3 * HOUR
        assert await store.recent_password_hashes("2004000003", 2) == ["h3", "h2"]
        assert await store.recent_password_hashes("2004000003", 5) == ["h3", "h2"]  # pruned
        assert await store.recent_password_hashes("nobody", 2) == []

    async def test_set_password_checks_expected_hash_R_PW_1(self, store: UserBackend) -> None:
        """A change based on a hash that was replaced meanwhile does nothing."""
        await add(store)
        assert not await store.set_password("2004000003", "h1", keep_previous=1, actor="t",
                                            expected_hash="other")
        assert await store.recent_password_hashes("2004000003", 2) == ["h0"]

    async def test_reset_sets_temporary_and_unlocks_R_PW_2(self, store: UserBackend) -> None:
        """A helpdesk reset sets a temporary password and clears the lock (§2.6)."""
        await add(store)
        await store.set_password("2004000003", "h1", keep_previous=1, actor="t")
        for _ in range(3):
            await store.reserve_attempt("2004000003", 3)
            await store.record_failure("2004000003", 3)
        await store.reset_password("2004000003", "temp", keep_previous=1, actor="helpdesk:x")
        user = await store.get("2004000003")
        assert user is not None
        assert (user.must_change, user.locked, user.failed_attempts) == (True, False, 0)
        assert await store.recent_password_hashes("2004000003", 2) == ["temp", "h1"]

    @pytest.mark.parametrize("action", ["unlock", "disable", "reset_password", "set_password"])
    async def test_unknown_user_not_found_R_LOCK_1(self, store: UserBackend, action: str) -> None:
        """Helpdesk actions on a user ID that does not exist fail with NotFound."""
        method = getattr(store, action)
        args = ("nobody", "h") if "password" in action else ("nobody",)
        kwargs = {"keep_previous": 1} if "password" in action else {}
        with pytest.raises(NotFound):
            await method(*args, actor="helpdesk:x", **kwargs)


@BOTH_STORES
class TestAttempts:
    """A try is counted before it is checked (R-LOCK-1)."""

    async def test_reserve_until_max_then_lock_R_LOCK_1(self, store: UserBackend) -> None:
        """Three reservations pass, the fourth is refused; the third failure locks."""
        await add(store)
        results = []
        for _ in range(3):
            assert await store.reserve_attempt("2004000003", 3) == "reserved"
            results.append(await store.record_failure("2004000003", 3))
        assert results == [(1, False), (2, False), (3, True)]
        assert await store.reserve_attempt("2004000003", 3) == "locked"
        await store.unlock("2004000003", actor="helpdesk:x")
        assert await store.reserve_attempt("2004000003", 3) == "reserved"

    async def test_success_clears_count_and_returns_previous_login_R_LOCK_1(
        self, store: UserBackend, clock: FakeClock
    ) -> None:
        """A right password resets the count; the previous login time is handed back."""
        start = clock.now()
        await add(store)
        assert await store.reserve_attempt("2004000003", 3) == "reserved"
        assert await store.record_success("2004000003") == (True, None)
        clock.advance(HOUR)
        await store.reserve_attempt("2004000003", 3)
        await store.record_failure("2004000003", 3)
        await store.reserve_attempt("2004000003", 3)
        assert await store.record_success("2004000003") == (True, start)
        user = await store.get("2004000003")
        assert user is not None
        assert (user.failed_attempts, user.last_login_at) == (0, start + HOUR)

    async def test_disabled_and_unknown_not_reserved_R_LOCK_1(self, store: UserBackend) -> None:
        """Disabled and unknown users get no try."""
        await add(store)
        await store.disable("2004000003", actor="helpdesk:x")
        assert await store.reserve_attempt("2004000003", 3) == "locked"
        assert await store.reserve_attempt("nobody", 3) == "locked"
        assert await store.record_success("2004000003") == (False, None)

    async def test_hundred_concurrent_reservations_give_three_R_LOCK_1(
        self, store: UserBackend
    ) -> None:
        """100 simultaneous reservations: exactly three succeed."""
        await add(store)
        granted = await asyncio.gather(
            *(store.reserve_attempt("2004000003", 3) for _ in range(100))
        )
        assert granted.count("reserved") == 3
        assert granted.count("busy") == 97  # counted tries still being checked
        user = await store.get("2004000003")
        assert user is not None
        assert user.failed_attempts == 3

    async def test_unknown_ids_are_counted_too_R_LOCK_2(self, store: UserBackend) -> None:
        """Unknown user IDs have their own counter that locks the same way."""
        results = []
        for _ in range(3):
            assert await store.reserve_unknown_attempt("ghost", 3) == "reserved"
            results.append(await store.record_unknown_failure("ghost", 3))
        assert results == [(1, False), (2, False), (3, True)]
        assert await store.reserve_unknown_attempt("ghost", 3) == "locked"
        await add(store, "ghost")  # the counter does not follow the ID into existence
        assert await store.reserve_unknown_attempt("ghost", 3) == "reserved"


@BOTH_STORES
class TestAudit:
    """Every action is in a hash-chained audit log that shows tampering (R-OPS-2)."""

    async def test_actions_are_audited_R_OPS_2(self, store: UserBackend) -> None:
        """Add, change, reset, logins, failures, lock, refusal, unlock and disable are logged."""
        await add(store)
        await store.set_password("2004000003", "h1", keep_previous=1, actor="user:2004000003")
        await store.reserve_attempt("2004000003", 1)
        await store.record_success("2004000003")
        await store.reserve_attempt("2004000003", 1)
        await store.record_failure("2004000003", 1)
        await store.record_refused("2004000003", known=True)
        await store.unlock("2004000003", actor="helpdesk:x")
        await store.reserve_unknown_attempt("ghost", 3)
        await store.record_unknown_failure("ghost", 3)
        await store.reset_password("2004000003", "t", keep_previous=1, actor="helpdesk:x")
        await store.disable("2004000003", actor="helpdesk:x")
        entries = await store.audit_entries()
        assert [(e.action, e.subject) for e in entries] == [
            ("user.added", "2004000003"),
            ("password.changed", "2004000003"),
            ("login.succeeded", "2004000003"),
            ("login.locked", "2004000003"),
            ("login.refused", "2004000003"),
            ("user.unlocked", "2004000003"),
            ("login.failed", "ghost"),
            ("password.reset", "2004000003"),
            ("user.disabled", "2004000003"),
        ]
        assert entries[0].actor == "helpdesk:test"
        assert entries[6].details == {"failures": 1, "known": False}
        assert not any("h1" in str(e.details) for e in entries)
        assert await store.verify_audit() == []

    @pytest.fixture
    async def audited(self, store: UserBackend, tmp_path: Path) -> Path:
        """A store with five audit rows; returns the file for raw tampering (SQLite)."""
        for n in range(5):
            await add(store, f"u{n}")
        assert await store.verify_audit() == []
        return db_path(tmp_path)

    @staticmethod
    async def tamper_with(store: UserBackend, database: Path, sql: str) -> None:
        """Run `sql` behind the store's back, as someone with access to the database."""
        if isinstance(store, PgUserStore):
            conn = await store.settings.connect()
            try:
                await conn.execute(sql)
            finally:
                await conn.close()
        else:
            with sqlite3.connect(database) as raw:
                raw.execute(sql)

    @pytest.mark.parametrize(
        ("tamper", "problem"),
        [
            ("UPDATE audit_log SET subject = 'someone-else' WHERE id = 3", "row 3 was edited"),
            ("UPDATE audit_log SET details = '{}' WHERE id = 1", "row 1 was edited"),
            ("DELETE FROM audit_log WHERE id = 3", "rows 3..3 are missing"),
            ("DELETE FROM audit_log WHERE id = 5", "rows 5..5 at the end are missing"),
            ("DELETE FROM audit_log WHERE id >= 4", "rows 4..5 at the end are missing"),
        ],
    )
    async def test_tampering_detected_R_OPS_2(
        self, store: UserBackend, audited: Path, tamper: str, problem: str
    ) -> None:
        """An edited row, a deleted middle row and deleted last rows are all reported."""
        await self.tamper_with(store, audited, tamper)
        problems = await store.verify_audit()
        assert any(problem in p for p in problems), problems
