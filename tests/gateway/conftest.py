"""Fixtures for the gateway's user store and authenticator (a real SQLite file per test)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from common.passwords import PasswordHasher
from gateway.auth import Authenticator
from gateway.users import UserStore
from policy.clock import FakeClock
from policy.password import PasswordPolicy


@pytest.fixture
def cheap_hasher() -> Iterator[PasswordHasher]:
    """argon2id with small parameters, for tests that are not about hashing cost."""
    hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)
    yield hasher
    hasher.close()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[UserStore]:
    """A fresh user store in its own SQLite file."""
    opened = await UserStore.open(tmp_path / "gateway" / "gateway.sqlite3", clock)
    yield opened
    await opened.close()


@pytest.fixture
def auth(store: UserStore, cheap_hasher: PasswordHasher, clock: FakeClock) -> Authenticator:
    """The bank's default password policy and a three-try lockout."""
    return Authenticator(store, cheap_hasher, PasswordPolicy(), clock=clock, lockout_max=3)
