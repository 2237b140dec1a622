"""R-LOCK-1 and the acquisition-password lockout (R-CERT-5): consecutive failures lock."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LockoutPolicy:
    """Lock after `max_failures` consecutive wrong secrets (the manual says three)."""

    max_failures: int = 3

    def __post_init__(self) -> None:
        if self.max_failures < 1:
            raise ValueError("lockout max_failures must be at least 1")

    def after_failure(self, failures: int) -> tuple[int, bool]:
        """The new failure count and whether the account is now locked."""
        failures += 1
        return failures, failures >= self.max_failures

    def remaining(self, failures: int) -> int:
        """How many tries are left before the lock."""
        return max(0, self.max_failures - failures)
