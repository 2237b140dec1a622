"""Password rules: composition and history (R-PW-1), expiry (R-PW-2), guessability (R-PW-4).

The bank's rules come from the manual (§2.2(4), §2.5): at least 8 characters, letters and
digits mixed, different from the user ID and the user name, different from the last two
passwords, and a 90-day lifetime. NIST SP 800-63B §5.1.1.2 discourages composition rules and
periodic expiry; the bank requires both, so they are the defaults of `PasswordPolicy` and can
be switched off (`require_letters_and_digits=False`, `max_age=None`). The blocklist check that
NIST does require is R-PW-4, done with zxcvbn.

Pure: no I/O, `now` is an argument, the password history arrives as a callable.
"""

from __future__ import annotations

import enum
import threading
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from zxcvbn import zxcvbn

from policy.errors import PolicyViolation

# zxcvbn refuses longer input (its matching is super-linear in the length).
_ZXCVBN_MAX_LENGTH = 72
# zxcvbn keeps the user inputs of the current call in a module-global dictionary, so two
# threads scoring at once could match against each other's inputs; one call at a time.
_ZXCVBN_LOCK = threading.Lock()
# A name or ID fragment shorter than this is not looked for inside a password ("Li", "ab").
_MIN_FRAGMENT = 4


@dataclass(frozen=True)
class PasswordPolicy:
    """Rules for new passwords and their lifetime; defaults are the bank's (§2.2(4), §2.5).

    `history` counts the current password: 2 means "not the current one, not the one before".
    `max_age=None` turns expiry off. `min_zxcvbn_score` is zxcvbn's 0-4 scale; 2 ("guesses
    < 10^8 are needed") is the lowest that a random 8-character letters-and-digits password
    reaches, and is enough behind a three-try lockout; raise it with a longer `min_length`.
    """

    min_length: int = 8
    max_length: int = 64
    require_letters_and_digits: bool = True
    history: int = 2
    max_age: timedelta | None = timedelta(days=90)
    min_zxcvbn_score: int = 2

    def __post_init__(self) -> None:
        if not 1 <= self.min_length <= self.max_length:
            raise ValueError("password min_length must be at least 1 and at most max_length")
        if self.max_length > _ZXCVBN_MAX_LENGTH:
            raise ValueError(f"password max_length must be at most {_ZXCVBN_MAX_LENGTH}")
        if self.history < 0:
            raise ValueError("password history must be 0 (off) or more")
        if self.max_age is not None and self.max_age <= timedelta(0):
            raise ValueError("password max_age must be positive, or None to turn expiry off")
        if not 0 <= self.min_zxcvbn_score <= 4:
            raise ValueError("password min_zxcvbn_score must be between 0 and 4")


class PasswordRuleViolation(PolicyViolation):
    """A new password breaks one rule; `code` names the rule for the page and the API."""

    code = "password_rule"


class TooShort(PasswordRuleViolation):
    """R-PW-1: fewer characters than the minimum."""

    code = "password_too_short"

    def __init__(self, min_length: int) -> None:
        super().__init__(f"the password must have at least {min_length} characters")
        self.min_length = min_length


class TooLong(PasswordRuleViolation):
    """More characters than the maximum (bounds hashing and scoring work)."""

    code = "password_too_long"

    def __init__(self, max_length: int) -> None:
        super().__init__(f"the password must have at most {max_length} characters")
        self.max_length = max_length


class NeedsLettersAndDigits(PasswordRuleViolation):
    """R-PW-1: letters and digits must both appear (§2.5(4))."""

    code = "password_needs_letters_and_digits"

    def __init__(self) -> None:
        super().__init__("the password must contain both letters and digits")


class SameAsUserId(PasswordRuleViolation):
    """R-PW-1: the password is, contains or is contained in the user ID."""

    code = "password_same_as_user_id"

    def __init__(self) -> None:
        super().__init__("the password must not be or contain the user ID")


class SameAsUserName(PasswordRuleViolation):
    """R-PW-1: the password is, contains or is contained in the user name (§2.5(3))."""

    code = "password_same_as_user_name"

    def __init__(self) -> None:
        super().__init__("the password must not be or contain the user name")


class ReusedPassword(PasswordRuleViolation):
    """R-PW-1: the password is the current one or one of the previous ones (§2.5(1))."""

    code = "password_reused"

    def __init__(self, history: int) -> None:
        super().__init__(
            f"the password must differ from the current one and the {history - 1} before it"
        )
        self.history = history


class TooCommon(PasswordRuleViolation):
    """R-PW-4: the password is common or easily guessed (zxcvbn)."""

    code = "password_too_common"

    def __init__(self, score: int, warning: str) -> None:
        super().__init__(warning or "the password is too easy to guess")
        self.score = score
        self.warning = warning


def _fold(text: str) -> str:
    """Compatibility-normalised, case-folded, without white space ("Ｔａｒｏ 1" -> "taro1")."""
    return "".join(unicodedata.normalize("NFKC", text).casefold().split())


def _resembles(password: str, identifier: str) -> bool:
    """Equal, or one contains the other (the contained part at least `_MIN_FRAGMENT` long)."""
    folded_password, folded_identifier = _fold(password), _fold(identifier)
    if not folded_password or not folded_identifier:
        return False
    if folded_password == folded_identifier:
        return True
    if len(folded_identifier) >= _MIN_FRAGMENT and folded_identifier in folded_password:
        return True
    return len(folded_password) >= _MIN_FRAGMENT and folded_password in folded_identifier


def _resembles_name(password: str, user_name: str) -> bool:
    """The whole name, or one of its white-space separated parts ("Tanaka" of "Tanaka Taro")."""
    parts = [user_name, *(user_name.split() if len(user_name.split()) > 1 else [])]
    return any(_resembles(password, part) for part in parts if part.strip())


def guessability(password: str, user_inputs: Sequence[str] = ()) -> tuple[int, str, bool]:
    """zxcvbn's score (0-4), its warning, and whether the whole password is a known password."""
    with _ZXCVBN_LOCK:
        result = zxcvbn(password, user_inputs=list(user_inputs), max_length=_ZXCVBN_MAX_LENGTH)
    sequence = result["sequence"]
    listed = len(sequence) == 1 and sequence[0].get("dictionary_name") == "passwords"
    return int(result["score"]), str(result["feedback"]["warning"]), listed


def check_new_password(
    policy: PasswordPolicy,
    new_password: str,
    user_id: str,
    user_name: str,
    previous_passwords_match: Callable[[str], bool],
    *,
    other_inputs: Sequence[str] = (),
) -> list[PasswordRuleViolation]:
    """Every rule `new_password` breaks (R-PW-1, R-PW-4), in a fixed order; empty when fine.

    Comparisons with the user ID and name fold case and full/half width (NFKC) and ignore
    white space. The password violates them when it equals the ID/name, contains it (or a
    part of the name) of at least 4 characters, or is itself a 4+ character piece of it:
    "Tanaka2024" is refused for "Tanaka Taro", "Li2024ab" is not refused for "Li".
    `previous_passwords_match(new_password)` answers whether it matches the current password
    or one of the `policy.history - 1` before it (an argon2 check; call this off the event
    loop). `other_inputs` (e.g. the customer name) only feed zxcvbn's dictionary.
    """
    violations: list[PasswordRuleViolation] = []
    if len(new_password) < policy.min_length:
        violations.append(TooShort(policy.min_length))
    if len(new_password) > policy.max_length:
        violations.append(TooLong(policy.max_length))
    if policy.require_letters_and_digits and not (
        any(c.isalpha() for c in new_password) and any(c.isdecimal() for c in new_password)
    ):
        violations.append(NeedsLettersAndDigits())
    if _resembles(new_password, user_id):
        violations.append(SameAsUserId())
    if _resembles_name(new_password, user_name):
        violations.append(SameAsUserName())
    if policy.history > 0 and new_password and previous_passwords_match(new_password):
        violations.append(ReusedPassword(policy.history))
    if new_password and len(new_password) <= _ZXCVBN_MAX_LENGTH:
        inputs = [user_id, user_name, *other_inputs]
        score, warning, listed = guessability(
            new_password, [*inputs, *(part for text in inputs for part in text.split())]
        )
        if listed or score < policy.min_zxcvbn_score:
            violations.append(TooCommon(score, warning))
    return violations


def expires_at(set_at: datetime, policy: PasswordPolicy) -> datetime | None:
    """The first instant at which a password set at `set_at` has expired (None: never)."""
    return None if policy.max_age is None else set_at + policy.max_age


def password_expired(set_at: datetime, now: datetime, policy: PasswordPolicy) -> bool:
    """R-PW-2: a password is valid for `max_age` after it is set and expired from then on.

    Set at 09:00 on day 0, it works until 08:59:59 on day 90 and is expired at 09:00:00.
    The manual's "90 calendar days" is read as 90 x 24 hours from the moment it was set.
    """
    limit = expires_at(set_at, policy)
    return limit is not None and now >= limit


class LoginOutcome(enum.StrEnum):
    """Where a correct password leads (R-PW-2, §2.2(4))."""

    OK = "ok"
    MUST_CHANGE_TEMPORARY = "must_change_temporary"
    MUST_CHANGE_EXPIRED = "must_change_expired"


def login_outcome(
    must_change: bool, set_at: datetime, now: datetime, policy: PasswordPolicy
) -> LoginOutcome:
    """R-PW-2: temporary (first login or helpdesk reset) or expired -> only the change page.

    A temporary password takes precedence: the page then says it is the first login.
    """
    if must_change:
        return LoginOutcome.MUST_CHANGE_TEMPORARY
    if password_expired(set_at, now, policy):
        return LoginOutcome.MUST_CHANGE_EXPIRED
    return LoginOutcome.OK
