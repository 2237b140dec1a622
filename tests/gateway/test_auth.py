"""Login, lockout and password change through the Authenticator (R-PW-1..4, R-LOCK-1, R-LOCK-2)."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import argon2
import pytest

from common.passwords import PasswordHasher
from gateway.auth import Authenticator, ChangeStatus, LoginStatus
from gateway.users import UserStore
from policy.clock import FakeClock
from policy.password import PasswordPolicy

USER = "2004000003"
GOOD = "kj3h5gq8"
SECOND = timedelta(seconds=1)
NINETY_DAYS = timedelta(days=90)


class CountingHasher(PasswordHasher):
    """Counts argon2 verifications: real ones (a stored hash) and dummy ones (None)."""

    def __init__(self, **kwargs: int) -> None:
        super().__init__(**kwargs)
        self.real = 0
        self.dummy = 0

    def verify_blocking(self, stored_hash: str | None, password: str) -> bool:
        """Count, then verify."""
        if stored_hash is None:
            self.dummy += 1
        else:
            self.real += 1
        return super().verify_blocking(stored_hash, password)


@pytest.fixture
def counting() -> Iterator[CountingHasher]:
    """A cheap counting hasher."""
    hasher = CountingHasher(time_cost=1, memory_cost_kib=1024)
    yield hasher
    hasher.close()


@pytest.fixture
def counted_auth(store: UserStore, counting: CountingHasher, clock: FakeClock) -> Authenticator:
    """An authenticator whose argon2 checks are counted."""
    return Authenticator(store, counting, PasswordPolicy(), clock=clock, lockout_max=3)


async def active_user(auth: Authenticator, user_id: str = USER, password: str = GOOD) -> None:
    """A user who has replaced the temporary password with `password`."""
    _, temporary = await auth.add_user(user_id, name="Tanaka Taro", customer="ABC Trading",
                                       role="admin", actor="helpdesk:test")
    assert (await auth.change_password(user_id, temporary, password)).status is (
        ChangeStatus.CHANGED
    )


class TestLogin:
    """Where a right password leads (R-PW-2, §2.2(4))."""

    async def test_temporary_password_leads_to_change_page_R_PW_2(
        self, auth: Authenticator
    ) -> None:
        """The first login with the temporary password only reaches the change page."""
        user, temporary = await auth.add_user(USER, name="Tanaka Taro", customer="ABC Trading",
                                              role="contractor", actor="helpdesk:test")
        assert len(temporary) == 12
        result = await auth.login(USER, temporary)
        assert result.status is LoginStatus.MUST_CHANGE_TEMPORARY
        assert result.authenticated
        assert result.user is not None
        assert result.user.user_id == user.user_id

    async def test_after_change_login_is_ok_R_PW_2(
        self, auth: Authenticator, clock: FakeClock
    ) -> None:
        """After the change the new password logs in; the previous login time is reported."""
        await active_user(auth)
        first = await auth.login(USER, GOOD)
        assert first.status is LoginStatus.OK
        assert first.previous_login_at is None
        earlier = clock.now()
        clock.advance(timedelta(hours=3))
        second = await auth.login(USER, GOOD)
        assert second.previous_login_at == earlier
        assert second.password_expires_at is not None

    @pytest.mark.parametrize(
        ("offset", "status"),
        [
            (NINETY_DAYS - SECOND, LoginStatus.OK),
            (NINETY_DAYS, LoginStatus.MUST_CHANGE_EXPIRED),
            (NINETY_DAYS + SECOND, LoginStatus.MUST_CHANGE_EXPIRED),
        ],
    )
    async def test_expired_password_leads_to_change_page_R_PW_2(
        self, auth: Authenticator, clock: FakeClock, offset: timedelta, status: LoginStatus
    ) -> None:
        """Ninety days after it was set, the password only reaches the change page."""
        set_at = clock.now()
        await active_user(auth)
        clock.set(set_at + offset)
        result = await auth.login(USER, GOOD)
        assert result.status is status
        assert result.password_expires_at == set_at + NINETY_DAYS

    async def test_reset_leads_to_change_page_and_unlocks_R_PW_2(
        self, auth: Authenticator
    ) -> None:
        """After a helpdesk reset the new temporary password works even for a locked user."""
        await active_user(auth)
        for _ in range(3):
            await auth.login(USER, "wrong-1")
        temporary = await auth.reset_password(USER, actor="helpdesk:test")
        assert (await auth.login(USER, GOOD)).status is LoginStatus.BAD_CREDENTIALS
        assert (await auth.login(USER, temporary)).status is LoginStatus.MUST_CHANGE_TEMPORARY

    async def test_outdated_hash_is_upgraded_R_PW_3(
        self, store: UserStore, auth: Authenticator, cheap_hasher: PasswordHasher
    ) -> None:
        """A hash made with other argon2 parameters is replaced at the next right login."""
        weak = argon2.PasswordHasher(time_cost=3, memory_cost=512, parallelism=1).hash("Temp7x9q")
        await store.add_user(USER, name="n", customer="c", role="admin", password_hash=weak,
                             actor="t")
        assert (await auth.login(USER, "Temp7x9q")).authenticated
        user = await store.get(USER)
        assert user is not None
        assert user.password_hash != weak
        assert not cheap_hasher.needs_rehash(user.password_hash)
        assert (await auth.login(USER, "Temp7x9q")).authenticated


class TestLockout:
    """Three consecutive wrong passwords lock the user (R-LOCK-1, §2.3, §2.7)."""

    async def test_three_wrong_lock_and_right_is_refused_R_LOCK_1(
        self, auth: Authenticator
    ) -> None:
        """The third wrong password locks; the right one is refused until the helpdesk unlocks."""
        await active_user(auth)
        statuses = [(await auth.login(USER, f"wrong-{n}")).status for n in range(3)]
        assert statuses == [LoginStatus.BAD_CREDENTIALS, LoginStatus.BAD_CREDENTIALS,
                            LoginStatus.LOCKED]
        assert (await auth.login(USER, GOOD)).status is LoginStatus.LOCKED
        await auth._store.unlock(USER, actor="helpdesk:test")
        assert (await auth.login(USER, GOOD)).status is LoginStatus.OK

    async def test_only_consecutive_failures_count_R_LOCK_1(self, auth: Authenticator) -> None:
        """A right password in between starts the count again."""
        await active_user(auth)
        for password in ["x1", "x2", GOOD, "x3", "x4"]:
            await auth.login(USER, password)
        assert (await auth.login(USER, GOOD)).status is LoginStatus.OK

    async def test_hundred_concurrent_wrong_tries_count_three_R_LOCK_1(
        self, store: UserStore, clock: FakeClock, tmp_path: Path
    ) -> None:
        """100 simultaneous wrong passwords: exactly 3 evaluated and counted, then locked."""
        hasher = CountingHasher()  # the production parameters
        try:
            auth = Authenticator(store, hasher, PasswordPolicy(), clock=clock, lockout_max=3)
            await active_user(auth)
            hasher.real = hasher.dummy = 0
            results = await asyncio.gather(
                *(auth.login(USER, f"wrong-{n}") for n in range(100))
            )
            # The three evaluated tries were all counted before any finished, so each of them
            # already sees the limit reached and shows the lock page; the others arrived while
            # those three were being checked and are asked to try again.
            statuses = [r.status for r in results]
            assert set(statuses) <= {LoginStatus.LOCKED, LoginStatus.BUSY}
            assert statuses.count(LoginStatus.LOCKED) >= 3
            assert hasher.real == 3  # only three passwords were ever checked
            assert hasher.dummy == 97  # the others still cost one argon2 each
            user = await store.get(USER)
            assert user is not None
            assert (user.failed_attempts, user.locked) == (3, True)
            assert (await auth.login(USER, GOOD)).status is LoginStatus.LOCKED
        finally:
            hasher.close()
        actions = [e.action for e in await store.audit_entries()]
        assert actions.count("login.failed") + actions.count("login.locked") == 3
        assert actions.count("login.locked") == 1
        assert actions.count("login.refused") == 97 + 1  # and the right password after
        assert await store.verify_audit() == []

    async def test_wrong_current_password_on_change_page_counts_R_LOCK_1(
        self, auth: Authenticator
    ) -> None:
        """The change page is no unlimited oracle: wrong current passwords lock too."""
        await active_user(auth)
        results = [await auth.change_password(USER, f"wrong-{n}", "n3wPass99") for n in range(3)]
        assert [r.status for r in results] == [ChangeStatus.BAD_CREDENTIALS,
                                               ChangeStatus.BAD_CREDENTIALS, ChangeStatus.LOCKED]
        assert (await auth.login(USER, GOOD)).status is LoginStatus.LOCKED


class TestNoUserEnumeration:
    """Unknown IDs, empty and wrong passwords answer the same, at the same cost (R-LOCK-2)."""

    @pytest.mark.parametrize(
        ("user_id", "password"),
        [(USER, "wrong-1"), (USER, ""), ("9999999999", "wrong-1"), ("9999999999", ""),
         ("../etc", "wrong-1"), ("x" * 200, "")],
    )
    async def test_same_answer_and_one_argon2_each_R_LOCK_2(
        self, counted_auth: Authenticator, counting: CountingHasher, user_id: str, password: str
    ) -> None:
        """Each bad login is BAD_CREDENTIALS with nothing else and costs exactly one argon2."""
        await active_user(counted_auth)
        counting.real = counting.dummy = 0
        result = await counted_auth.login(user_id, password)
        assert result.status is LoginStatus.BAD_CREDENTIALS
        assert (result.user, result.previous_login_at, result.password_expires_at) == (
            None, None, None
        )
        assert counting.real + counting.dummy == 1

    async def test_unknown_id_locks_like_a_known_one_R_LOCK_2(
        self, auth: Authenticator
    ) -> None:
        """Four wrong tries give the same sequence of pages for a real and a made-up ID."""
        await active_user(auth)
        known = [(await auth.login(USER, f"w{n}")).status for n in range(4)]
        unknown = [(await auth.login("9999999999", f"w{n}")).status for n in range(4)]
        assert known == unknown == [LoginStatus.BAD_CREDENTIALS, LoginStatus.BAD_CREDENTIALS,
                                    LoginStatus.LOCKED, LoginStatus.LOCKED]

    async def test_disabled_user_looks_unknown_R_LOCK_2(
        self, auth: Authenticator, store: UserStore
    ) -> None:
        """A disabled user gets BAD_CREDENTIALS even with the right password."""
        await active_user(auth)
        await store.disable(USER, actor="helpdesk:test")
        assert (await auth.login(USER, GOOD)).status is LoginStatus.BAD_CREDENTIALS

    async def test_timing_of_unknown_and_wrong_is_alike_R_LOCK_2(
        self, store: UserStore, clock: FakeClock
    ) -> None:
        """With production argon2, an unknown ID and a wrong password cost the same: one argon2id
        verification each, and about the same time (samples interleaved and the fastest of
        each taken: load from other processes only ever adds time)."""
        hasher = PasswordHasher()
        verifications: list[str | None] = []
        verify = hasher.verify

        async def counting_verify(password_hash: str | None, password: str) -> bool:
            verifications.append(password_hash)
            return await verify(password_hash, password)

        hasher.verify = counting_verify  # type: ignore[method-assign]
        try:
            auth = Authenticator(store, hasher, PasswordPolicy(), clock=clock, lockout_max=100)
            await active_user(auth)
            await auth.login("warm-up", "x")
            loop = asyncio.get_running_loop()
            samples: dict[str, list[float]] = {USER: [], "9999999999": []}
            for n in range(11):
                for user_id, times in samples.items():
                    verifications.clear()
                    start = loop.time()
                    await auth.login(user_id, f"wrong-{n}")
                    times.append(loop.time() - start)
                    assert len(verifications) == 1, (user_id, verifications)
        finally:
            hasher.close()
        known, unknown = (min(t) for t in samples.values())  # load only ever adds time
        assert 0.5 < unknown / known < 2.0


class TestChangePassword:
    """Every rule is checked and every violation listed (R-PW-1, R-PW-4, §2.5)."""

    async def test_all_violations_listed_R_PW_1(self, auth: Authenticator) -> None:
        """A new password breaking several rules is refused with all of them."""
        await active_user(auth)
        result = await auth.change_password(USER, GOOD, "taro")
        assert result.status is ChangeStatus.REJECTED
        assert [v.code for v in result.violations] == [
            "password_too_short", "password_needs_letters_and_digits",
            "password_same_as_user_name", "password_too_common",
        ]
        assert (await auth.login(USER, GOOD)).status is LoginStatus.OK

    @pytest.mark.parametrize(
        ("new", "accepted"),
        [("Cedar9mw", False), ("Spruce3kv", False), ("zero0pwx", True)],
    )
    async def test_last_two_passwords_refused_R_PW_1(
        self, auth: Authenticator, new: str, accepted: bool
    ) -> None:
        """The current password and the one before are refused; the one before those is not."""
        await active_user(auth, password="zero0pwx")
        assert (await auth.change_password(USER, "zero0pwx", "Cedar9mw")).status is (
            ChangeStatus.CHANGED
        )
        assert (await auth.change_password(USER, "Cedar9mw", "Spruce3kv")).status is (
            ChangeStatus.CHANGED
        )
        result = await auth.change_password(USER, "Spruce3kv", new)
        if accepted:
            assert result.status is ChangeStatus.CHANGED
        else:
            assert [v.code for v in result.violations] == ["password_reused"]

    async def test_temporary_password_cannot_be_kept_R_PW_1(self, auth: Authenticator) -> None:
        """The temporary password counts as the current one."""
        _, temporary = await auth.add_user(USER, name="n", customer="c", role="admin",
                                           actor="t")
        result = await auth.change_password(USER, temporary, temporary)
        assert [v.code for v in result.violations] == ["password_reused"]

    async def test_common_password_refused_R_PW_4(self, auth: Authenticator) -> None:
        """A common password is refused with TooCommon."""
        await active_user(auth)
        result = await auth.change_password(USER, GOOD, "Passw0rd1")
        assert [v.code for v in result.violations] == ["password_too_common"]

    async def test_change_sets_time_and_old_password_stops_working_R_PW_2(
        self, auth: Authenticator, store: UserStore, clock: FakeClock
    ) -> None:
        """After a change the old password fails, the new works, and the 90 days restart."""
        await active_user(auth)
        clock.advance(timedelta(days=100))
        assert (await auth.login(USER, GOOD)).status is LoginStatus.MUST_CHANGE_EXPIRED
        assert (await auth.change_password(USER, GOOD, "n3wPass99")).status is (
            ChangeStatus.CHANGED
        )
        assert (await auth.login(USER, GOOD)).status is LoginStatus.BAD_CREDENTIALS
        assert (await auth.login(USER, "n3wPass99")).status is LoginStatus.OK
        user = await store.get(USER)
        assert user is not None
        assert user.password_set_at == clock.now()

    async def test_reset_during_change_wins_R_PW_2(
        self, auth: Authenticator, store: UserStore, tmp_path: Path
    ) -> None:
        """A reset between the check of the current password and the write is not overwritten."""
        await active_user(auth)
        original = store.recent_password_hashes

        async def reset_meanwhile(user_id: str, count: int) -> list[str]:
            hashes = await original(user_id, count)
            await auth.reset_password(USER, actor="helpdesk:test")
            return hashes

        store.recent_password_hashes = reset_meanwhile  # type: ignore[method-assign]
        result = await auth.change_password(USER, GOOD, "n3wPass99")
        assert result.status is ChangeStatus.BAD_CREDENTIALS
        user = await store.get(USER)
        assert user is not None
        assert user.must_change
        with sqlite3.connect(tmp_path / "gateway" / "gateway.sqlite3") as raw:
            actions = [row[0] for row in raw.execute("SELECT action FROM audit_log")]
        assert actions[-1] == "password.reset"
