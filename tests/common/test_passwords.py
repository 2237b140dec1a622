"""argon2id hashing off the event loop and generated secrets (R-PW-3, R-LOCK-2, R-CERT-5)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Literal

import argon2
import pytest

from common.passwords import (
    SECRET_ALPHABET,
    SECRET_DIGITS,
    SECRET_LETTERS,
    PasswordHasher,
    generate_secret,
)


@pytest.fixture(scope="module")
def hasher() -> Iterator[PasswordHasher]:
    """The production parameters (one verify is about 20 ms)."""
    instance = PasswordHasher()
    yield instance
    instance.close()


class TestHashing:
    """argon2id with OWASP parameters, run in worker threads (R-PW-3)."""

    async def test_hash_is_argon2id_with_owasp_parameters_R_PW_3(
        self, hasher: PasswordHasher
    ) -> None:
        """Stored hashes are argon2id, m=19456 KiB, t=2, p=1, each with its own salt."""
        first = await hasher.hash("kj3h5gq8")
        second = await hasher.hash("kj3h5gq8")
        assert first.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
        assert first != second
        assert not hasher.needs_rehash(first)

    async def test_verify_right_and_wrong_R_PW_3(self, hasher: PasswordHasher) -> None:
        """The right password verifies; a wrong one, a case change and an empty one do not."""
        stored = await hasher.hash("kj3h5gq8")
        assert await hasher.verify(stored, "kj3h5gq8")
        assert not await hasher.verify(stored, "KJ3H5GQ8")
        assert not await hasher.verify(stored, "")

    async def test_malformed_hash_fails_closed_R_PW_3(self, hasher: PasswordHasher) -> None:
        """A corrupted stored hash answers False instead of raising."""
        assert not await hasher.verify("not-a-hash", "kj3h5gq8")
        assert hasher.needs_rehash("not-a-hash")

    async def test_other_parameters_need_rehash_R_PW_3(self, hasher: PasswordHasher) -> None:
        """A hash made with weaker parameters is reported for re-hashing."""
        weak = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1).hash("x1x1x1x1")
        assert hasher.needs_rehash(weak)
        assert await hasher.verify(weak, "x1x1x1x1")

    async def test_hashing_runs_off_the_event_loop_R_PW_3(self, hasher: PasswordHasher) -> None:
        """argon2 runs in the hasher's worker threads, never in the event loop's thread."""
        seen: list[str] = []
        inner = hasher._hasher  # the argon2-cffi object the worker threads call

        class Spy(argon2.PasswordHasher):
            def verify(self, hash: str | bytes, password: str | bytes) -> Literal[True]:
                seen.append(threading.current_thread().name)
                return inner.verify(hash, password)

        hasher._hasher = Spy(time_cost=2, memory_cost=19456, parallelism=1)
        try:
            stored = await hasher.hash("kj3h5gq8")
            await hasher.verify(stored, "kj3h5gq8")
            await hasher.verify(None, "kj3h5gq8")
        finally:
            hasher._hasher = inner
        assert len(seen) == 2
        assert all(name.startswith("argon2") for name in seen)
        assert threading.current_thread().name not in seen


class TestDummyVerification:
    """Unknown users cost one argon2id verification too (R-LOCK-2)."""

    async def test_unknown_user_verifies_a_dummy_and_fails_R_LOCK_2(
        self, hasher: PasswordHasher
    ) -> None:
        """verify(None, ...) is always False and checks a hash made with the same parameters."""
        assert not await hasher.verify(None, "kj3h5gq8")
        assert not await hasher.verify(None, "")
        assert not hasher.needs_rehash(hasher._dummy())

    async def test_dummy_costs_about_the_same_R_LOCK_2(self, hasher: PasswordHasher) -> None:
        """The fastest dummy check is within a factor of two of the fastest real one (samples
        interleaved and the minimum taken: load from other processes only ever adds time)."""
        stored = await hasher.hash("kj3h5gq8")
        await hasher.verify(None, "warm-up")  # builds the dummy hash
        samples: dict[str | None, list[float]] = {stored: [], None: []}
        for _ in range(9):
            for stored_hash, times in samples.items():
                start = time.perf_counter()
                await hasher.verify(stored_hash, "wrong-password-1")
                times.append(time.perf_counter() - start)
        real, dummy = min(samples[stored]), min(samples[None])
        assert 0.5 < dummy / real < 2.0


class TestGenerateSecret:
    """Officer and helpdesk secrets are unambiguous and mix letters and digits (R-CERT-5)."""

    def test_alphabet_has_no_look_alikes_R_CERT_5(self) -> None:
        """0/O and 1/l/I never appear."""
        assert not set("0O1lI") & set(SECRET_ALPHABET)
        assert len(set(SECRET_ALPHABET)) == len(SECRET_ALPHABET) == 49 + 8

    @pytest.mark.parametrize("length", [2, 3, 8, 12, 16])
    def test_letters_and_digits_always_present_R_PW_1(self, length: int) -> None:
        """Every secret of every length contains a letter and a digit (the composition rule)."""
        for _ in range(300):
            secret = generate_secret(length)
            assert len(secret) == length
            assert set(secret) <= set(SECRET_ALPHABET)
            assert set(secret) & set(SECRET_LETTERS)
            assert set(secret) & set(SECRET_DIGITS)

    def test_secrets_differ_R_CERT_5(self) -> None:
        """Secrets are random, not repeated."""
        assert len({generate_secret(16) for _ in range(1000)}) == 1000

    @pytest.mark.parametrize("length", [-1, 0, 1])
    def test_too_short_refused_R_CERT_5(self, length: int) -> None:
        """A length that cannot hold a letter and a digit is a configuration error."""
        with pytest.raises(ValueError, match="at least 2"):
            generate_secret(length)
