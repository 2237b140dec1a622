"""argon2id password hashing shared by the CA and the gateway (R-PW-3, R-LOCK-2).

Parameters follow OWASP's Password Storage Cheat Sheet for argon2id: m=19456 KiB (19 MiB),
t=2, p=1. One verify costs about 22 ms on the development machine. argon2 releases the GIL, so
hashing runs in a small thread pool and never on the event loop; the pool size also bounds
the memory in use (19 MiB per running hash).

The comparison of the computed digest with the stored one happens inside libargon2
(`argon2_verify`, constant time). `generate_secret` draws from `secrets`, never `random`.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import string
import threading
from concurrent.futures import ThreadPoolExecutor

import argon2
import structlog
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

# OWASP argon2id parameters (memory in KiB).
TIME_COST = 2
MEMORY_COST_KIB = 19456
PARALLELISM = 1
HASH_LEN = 32
SALT_LEN = 16

# Letters and digits without look-alikes: no 0/O, 1/l/I. Read aloud or typed from paper.
SECRET_LETTERS = "".join(c for c in string.ascii_letters if c not in "OlI")
SECRET_DIGITS = "".join(c for c in string.digits if c not in "01")
SECRET_ALPHABET = SECRET_LETTERS + SECRET_DIGITS

_log = structlog.get_logger("passwords")


def generate_secret(length: int) -> str:
    """A random password of `length` characters with at least one letter and one digit.

    Used for acquisition passwords (R-CERT-5) and helpdesk temporary passwords (R-PW-2).
    Drawn uniformly from `SECRET_ALPHABET` and redrawn until both kinds appear, so the result
    is uniform over all qualifying strings and also passes the composition rule (R-PW-1).
    """
    if length < 2:
        raise ValueError("a generated secret needs at least 2 characters (a letter and a digit)")
    while True:
        candidate = "".join(secrets.choice(SECRET_ALPHABET) for _ in range(length))
        if any(c in SECRET_LETTERS for c in candidate) and any(
            c in SECRET_DIGITS for c in candidate
        ):
            return candidate


class PasswordHasher:
    """argon2id hashing and verification in a thread pool (R-PW-3).

    `verify(None, password)` checks against a fixed dummy hash with the same parameters, so an
    unknown user costs exactly what a known one does (R-LOCK-2).
    """

    def __init__(
        self,
        *,
        time_cost: int = TIME_COST,
        memory_cost_kib: int = MEMORY_COST_KIB,
        parallelism: int = PARALLELISM,
        workers: int | None = None,
    ) -> None:
        if workers is None:
            workers = min(4, os.cpu_count() or 1)
        if workers < 1:
            raise ValueError("the password hasher needs at least one worker thread")
        self._hasher = argon2.PasswordHasher(
            time_cost=time_cost, memory_cost=memory_cost_kib, parallelism=parallelism,
            hash_len=HASH_LEN, salt_len=SALT_LEN, type=argon2.Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="argon2")
        self._dummy_hash: str | None = None
        self._dummy_lock = threading.Lock()

    async def hash(self, password: str) -> str:
        """The argon2id hash (PHC string with its own random salt) of `password`."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._hasher.hash, password)

    async def verify(self, stored_hash: str | None, password: str) -> bool:
        """Whether `password` matches `stored_hash`; always costs one argon2id verification.

        When `stored_hash` is None (unknown user, locked user) a dummy hash is checked and the
        answer is False. A malformed stored hash is logged and answers False (fail closed).
        """
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.verify_blocking, stored_hash, password)

    def verify_blocking(self, stored_hash: str | None, password: str) -> bool:
        """`verify` for code already running in a worker thread (never on the event loop)."""
        if stored_hash is None:
            self._check(self._dummy(), password)
            return False
        return self._check(stored_hash, password)

    def needs_rehash(self, stored_hash: str) -> bool:
        """Whether `stored_hash` was made with other parameters than the current ones."""
        try:
            return self._hasher.check_needs_rehash(stored_hash)
        except (InvalidHashError, ValueError):
            return True

    def close(self) -> None:
        """Stop the worker threads after the queued work is done."""
        self._pool.shutdown(wait=True)

    def _check(self, stored_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored_hash, password)
        except VerifyMismatchError:
            return False
        except (InvalidHashError, VerificationError):
            _log.error("password_hash_unusable", hint="the stored hash is malformed; reset it")
            return False

    def _dummy(self) -> str:
        # Made once, lazily, in a worker thread, with this hasher's own parameters.
        with self._dummy_lock:
            if self._dummy_hash is None:
                self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))
            return self._dummy_hash
