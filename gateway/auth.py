"""Password login, lockout and password change (R-PW-1..4, R-LOCK-1, R-LOCK-2, §2.2-§2.7).

How a login answers without revealing whether a user ID exists (R-LOCK-2):

* An unknown user ID, a disabled user, an empty password and a wrong password all give
  `BAD_CREDENTIALS` - one status, one message ("user ID or password is wrong"), no count of
  remaining tries - and each costs one argon2id verification (a dummy hash when there is no
  user) and the same two store writes.
* Three consecutive wrong tries lock (§2.3, §2.7) and from then on every try, right or
  wrong, gets `LOCKED` and the page telling the user to call the helpdesk. So that this page
  does not give existence away either, wrong tries against an ID that does not exist are
  counted too (`unknown_attempts`) and lock it the same way: whoever types three wrong
  passwords for any ID sees the lock page on the third, whether the ID exists or not.
* Remaining tries are never shown: a real user's earlier failures would make the first
  answer for an existing ID differ from the first answer for a made-up one.
* What stays visible: an ID whose *owner* locked it answers `LOCKED` to a stranger's first
  try. The manual requires the lock page (§2.7); the gateway also asks for that user's
  certificate on the login page, so only the acquisition page exposes this.

Lockout under concurrency (R-LOCK-1): a try is counted before its password is checked
(`UserStore.reserve_attempt`), so at most `lockout_max` passwords are evaluated before the
helpdesk unlocks, whatever the number of simultaneous requests. A try refused for lack of
tries answers `LOCKED`. argon2 runs in the hasher's thread pool, never on the event loop.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from datetime import datetime

from common import faults
from common.passwords import PasswordHasher, generate_secret
from gateway.errors import Locked, TooManyAttempts, Unauthorized
from gateway.users import Role, User, UserStore
from policy.clock import Clock
from policy.lockout import LockoutPolicy
from policy.password import (
    LoginOutcome,
    PasswordPolicy,
    PasswordRuleViolation,
    check_new_password,
    expires_at,
    login_outcome,
)
from policy.profile import USER_ID_PATTERN

BAD_CREDENTIALS_MESSAGE = "user ID or password is wrong"


class LoginStatus(enum.StrEnum):
    """What the login page shows next."""

    OK = "ok"  # the initial screen (§2.2(5))
    MUST_CHANGE_TEMPORARY = "must_change_temporary"  # only the change page (§2.2(4))
    MUST_CHANGE_EXPIRED = "must_change_expired"  # only the change page (R-PW-2)
    BAD_CREDENTIALS = "bad_credentials"  # the error page (§2.3), same for unknown IDs
    LOCKED = "locked"  # call the helpdesk (§2.7)
    BUSY = "busy"  # the remaining tries are being checked by concurrent requests: retry


_OUTCOME_STATUS = {
    LoginOutcome.OK: LoginStatus.OK,
    LoginOutcome.MUST_CHANGE_TEMPORARY: LoginStatus.MUST_CHANGE_TEMPORARY,
    LoginOutcome.MUST_CHANGE_EXPIRED: LoginStatus.MUST_CHANGE_EXPIRED,
}


@dataclass(frozen=True)
class LoginResult:
    """The answer to a login; `user` and the times are only set when the password was right."""

    status: LoginStatus
    user: User | None = None
    previous_login_at: datetime | None = None  # shown in the header (§2.2(5), R-UI-2)
    password_expires_at: datetime | None = None

    @property
    def authenticated(self) -> bool:
        """Whether the password was right (the session may only reach what `status` allows)."""
        return self.status in (
            LoginStatus.OK, LoginStatus.MUST_CHANGE_TEMPORARY, LoginStatus.MUST_CHANGE_EXPIRED
        )

    def require_user(self) -> User:
        """The user whose password was right; otherwise the error of a refused password:
        Locked (§2.7), TooManyAttempts while concurrent tries are checked, else Unauthorized,
        the same for unknown IDs (R-LOCK-2)."""
        if self.status is LoginStatus.LOCKED:
            raise Locked("the login password is locked")
        if self.status is LoginStatus.BUSY:
            raise TooManyAttempts("other tries are being checked; try again")
        if not self.authenticated or self.user is None:
            raise Unauthorized(BAD_CREDENTIALS_MESSAGE, code="bad_credentials")
        return self.user


class ChangeStatus(enum.StrEnum):
    """The answer of the password change page (§2.5)."""

    CHANGED = "changed"
    BAD_CREDENTIALS = "bad_credentials"  # the current password is wrong (counts as a try)
    LOCKED = "locked"
    REJECTED = "rejected"  # the new password breaks rules, all listed in `violations`


@dataclass(frozen=True)
class ChangeResult:
    """The answer to a password change."""

    status: ChangeStatus
    violations: tuple[PasswordRuleViolation, ...] = ()


class _Check(enum.Enum):
    RIGHT = enum.auto()
    WRONG = enum.auto()
    LOCKED = enum.auto()
    BUSY = enum.auto()


class Authenticator:
    """Checks login passwords with lockout, changes and resets passwords."""

    def __init__(
        self,
        store: UserStore,
        hasher: PasswordHasher,
        password_policy: PasswordPolicy,
        *,
        clock: Clock,
        lockout_max: int = 3,
        temporary_password_length: int = 12,
    ) -> None:
        self._lockout = LockoutPolicy(max_failures=lockout_max)
        if temporary_password_length < password_policy.min_length:
            raise ValueError(
                "temporary_password_length must be at least the password policy's min_length"
            )
        self._store = store
        self._hasher = hasher
        self._policy = password_policy
        self._clock = clock
        self._temporary_length = temporary_password_length

    @property
    def password_policy(self) -> PasswordPolicy:
        """The rules new passwords are checked against."""
        return self._policy

    async def login(self, user_id: str, password: str, *, actor: str = "login") -> LoginResult:
        """Check a login password (§2.2(3)); see the module docstring for what each answer means."""
        return await self._authenticate(user_id, password, actor=actor, login=True)

    async def verify_password(self, user_id: str, password: str, *, actor: str) -> LoginResult:
        """The same lockout-guarded check for certificate acquisition and renewal (§2.1(2),
        §2.10.1(3)): it counts toward the lock but is not a login (last login unchanged)."""
        return await self._authenticate(user_id, password, actor=actor, login=False)

    async def _authenticate(
        self, user_id: str, password: str, *, actor: str, login: bool
    ) -> LoginResult:
        check, user = await self._check_password(user_id, password, actor)
        if check is _Check.LOCKED:
            return LoginResult(LoginStatus.LOCKED)
        if check is _Check.BUSY:
            return LoginResult(LoginStatus.BUSY)
        if check is _Check.WRONG or user is None:
            return LoginResult(LoginStatus.BAD_CREDENTIALS)
        counted, previous_login_at = await self._store.record_success(
            user.user_id, login=login, actor=actor)
        if not counted:  # a concurrent wrong try locked the user meanwhile
            return LoginResult(LoginStatus.LOCKED)
        if self._hasher.needs_rehash(user.password_hash):
            await self._store.replace_hash(
                user.user_id, user.password_hash, await self._hasher.hash(password)
            )
        outcome = login_outcome(user.must_change, user.password_set_at, self._clock.now(),
                                self._policy)
        return LoginResult(
            _OUTCOME_STATUS[outcome], user=user, previous_login_at=previous_login_at,
            password_expires_at=expires_at(user.password_set_at, self._policy),
        )

    async def spend_one_check(self, password: str) -> None:
        """The cost of one password check, evaluating nothing and counting nothing: for an
        answer that must take as long as a checked password (issue 10 item 3)."""
        await self._hasher.verify(None, password)

    async def change_password(
        self, user_id: str, current: str, new: str, *, actor: str | None = None
    ) -> ChangeResult:
        """§2.5 / R-PW-1, R-PW-4: check the current password (a counted try), then every rule.

        A wrong current password counts toward the lock like a wrong login, so the change
        page is no unlimited guessing oracle for someone holding a session.
        """
        actor = actor or f"user:{user_id}"
        check, user = await self._check_password(user_id, current, actor)
        if check is _Check.LOCKED:
            return ChangeResult(ChangeStatus.LOCKED)
        if check is _Check.WRONG or user is None:
            return ChangeResult(ChangeStatus.BAD_CREDENTIALS)
        counted, _ = await self._store.record_success(user.user_id, login=False)
        if not counted:
            return ChangeResult(ChangeStatus.LOCKED)
        hashes = await self._store.recent_password_hashes(user.user_id, self._policy.history)

        def matches_history(candidate: str) -> bool:
            return any(self._hasher.verify_blocking(h, candidate) for h in hashes)

        # argon2 (history) and zxcvbn are CPU work: off the event loop.
        violations = await asyncio.to_thread(
            check_new_password, self._policy, new, user.user_id, user.name, matches_history,
            other_inputs=[user.customer],
        )
        if violations:
            return ChangeResult(ChangeStatus.REJECTED, tuple(violations))
        changed = await self._store.set_password(
            user.user_id, await self._hasher.hash(new), keep_previous=self._policy.history - 1,
            actor=actor, expected_hash=user.password_hash,
        )
        # Not changed: the helpdesk reset the password between the check and now.
        return ChangeResult(ChangeStatus.CHANGED if changed else ChangeStatus.BAD_CREDENTIALS)

    async def add_user(
        self, user_id: str, *, name: str, customer: str, role: Role | str, actor: str
    ) -> tuple[User, str]:
        """Helpdesk: create a user with a temporary password; returns it once (never stored)."""
        temporary = generate_secret(self._temporary_length)
        user = await self._store.add_user(
            user_id, name=name, customer=customer, role=role,
            password_hash=await self._hasher.hash(temporary), actor=actor,
        )
        return user, temporary

    async def reset_password(self, user_id: str, *, actor: str) -> str:
        """Helpdesk (§2.6): a new temporary password that also unlocks; returns it once."""
        temporary = generate_secret(self._temporary_length)
        await self._store.reset_password(
            user_id, await self._hasher.hash(temporary),
            keep_previous=self._policy.history - 1, actor=actor,
        )
        return temporary

    async def _check_password(
        self, user_id: str, password: str, actor: str
    ) -> tuple[_Check, User | None]:
        """One counted, lockout-guarded argon2 check; always exactly one verification."""
        user = await self._store.get(user_id)
        if user is None or user.disabled:
            return await self._check_unknown(user_id, password, actor), None
        max_failures = self._lockout.max_failures
        reservation = await self._store.reserve_attempt(user.user_id, max_failures)
        if reservation != "reserved":
            await self._hasher.verify(None, password)
            await self._store.record_refused(user.user_id, known=True, actor=actor)
            return (_Check.BUSY if reservation == "busy" else _Check.LOCKED), None
        await faults.reached("gateway.after_attempt_counted")
        if await self._hasher.verify(user.password_hash, password):
            return _Check.RIGHT, user
        _, locked = await self._store.record_failure(user.user_id, max_failures, actor=actor)
        return (_Check.LOCKED if locked else _Check.WRONG), None

    async def _check_unknown(self, user_id: str, password: str, actor: str) -> _Check:
        """The same steps and cost as a known user with a wrong password (R-LOCK-2)."""
        max_failures = self._lockout.max_failures
        if not USER_ID_PATTERN.fullmatch(user_id):
            # No ID of this shape can exist; do not store it, only spend the same time.
            await self._hasher.verify(None, password)
            await self._store.record_unknown_failure(
                "(malformed)", max_failures, actor=actor
            )
            return _Check.WRONG
        reservation = await self._store.reserve_unknown_attempt(user_id, max_failures)
        if reservation != "reserved":
            await self._hasher.verify(None, password)
            await self._store.record_refused(user_id, known=False, actor=actor)
            return _Check.BUSY if reservation == "busy" else _Check.LOCKED
        await self._hasher.verify(None, password)
        _, locked = await self._store.record_unknown_failure(user_id, max_failures, actor=actor)
        return _Check.LOCKED if locked else _Check.WRONG
