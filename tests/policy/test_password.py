"""Password rules at their edges (R-PW-1, R-PW-2, R-PW-4)."""

from __future__ import annotations

import inspect
from datetime import UTC, datetime, timedelta

import pytest

from policy import password as rules
from policy.password import (
    LoginOutcome,
    NeedsLettersAndDigits,
    PasswordPolicy,
    PasswordRuleViolation,
    ReusedPassword,
    SameAsUserId,
    SameAsUserName,
    TooCommon,
    TooLong,
    TooShort,
    check_new_password,
    login_outcome,
    password_expired,
)

POLICY = PasswordPolicy()
USER_ID = "2004000003"
NAME = "Tanaka Taro"
SET_AT = datetime(2026, 1, 5, 9, 0, 0, tzinfo=UTC)
SECOND = timedelta(seconds=1)
NINETY_DAYS = timedelta(days=90)


def _never(_password: str) -> bool:
    return False


def codes(password: str, *, user_id: str = USER_ID, name: str = NAME,
          policy: PasswordPolicy = POLICY) -> list[str]:
    """The codes of every rule `password` breaks."""
    return [v.code for v in check_new_password(policy, password, user_id, name, _never)]


class TestComposition:
    """Length, letters and digits, user ID and user name (R-PW-1, §2.5)."""

    @pytest.mark.parametrize("password", ["kj3h5gq8", "hx4Rt9Lm", "Shokochukin7", "Li2024ab"])
    def test_good_passwords_pass_R_PW_1(self, password: str) -> None:
        """Passwords meeting every rule give no violation."""
        assert codes(password, name="Li Wei") == []

    @pytest.mark.parametrize(
        ("password", "expected"),
        [
            ("kj3h5g8", ["password_too_short"]),  # 7 characters: one below the edge
            ("kj3h5gq8", []),  # 8: at the edge
            ("kj3h5gq8z", []),  # 9
        ],
    )
    def test_length_edge_R_PW_1(self, password: str, expected: list[str]) -> None:
        """At least 8 characters: 7 is refused, 8 and 9 are accepted."""
        assert codes(password) == expected

    def test_too_long_refused_R_PW_1(self) -> None:
        """More than max_length characters is refused (it bounds hashing and scoring)."""
        assert codes("kj3h5gq8" * 8) == []
        assert "password_too_long" in codes("kj3h5gq8" * 8 + "x")

    @pytest.mark.parametrize("password", ["zqxwvkpjtrmb", "39481726504"])
    def test_letters_and_digits_both_needed_R_PW_1(self, password: str) -> None:
        """Only letters or only digits break the composition rule (§2.5(4))."""
        assert "password_needs_letters_and_digits" in codes(password)

    def test_composition_rule_can_be_switched_off_R_PW_1(self) -> None:
        """NIST SP 800-63B discourages composition rules, so the bank's rule is configurable."""
        policy = PasswordPolicy(require_letters_and_digits=False)
        assert codes("zqxwvkpjtrmb", policy=policy) == []

    @pytest.mark.parametrize(
        ("password", "user_id"),
        [
            ("ab12cd34", "ab12cd34"),  # equal
            ("AB12CD34", "ab12cd34"),  # case folded
            ("ＡＢ１２ｃｄ３４", "ab12cd34"),  # full width folded (NFKC)
            ("x2004000003", USER_ID),  # contains the ID
            ("20040000", USER_ID),  # a piece of the ID
        ],
    )
    def test_user_id_refused_R_PW_1(self, password: str, user_id: str) -> None:
        """The password must not be, contain or be a piece of the user ID."""
        assert "password_same_as_user_id" in codes(password, user_id=user_id)

    @pytest.mark.parametrize(
        ("password", "name"),
        [
            ("tanakataro", NAME),  # the name without its space
            ("TANAKA taro", NAME),  # case and white space ignored
            ("Tanaka2024", NAME),  # contains a part of the name
            ("taro9tanaka", "Taro9Tanaka"),  # equal, case folded
        ],
    )
    def test_user_name_refused_R_PW_1(self, password: str, name: str) -> None:
        """The password must not be or contain the user name or a 4+ letter part of it."""
        assert "password_same_as_user_name" in codes(password, name=name)

    def test_short_name_parts_do_not_ban_letters_R_PW_1(self) -> None:
        """A two-letter name part ("Li") is not looked for inside passwords."""
        assert "password_same_as_user_name" not in codes("Li2024ab", name="Li Wei")

    def test_japanese_name_R_PW_1(self) -> None:
        """A Japanese user name is compared the same way."""
        assert "password_same_as_user_name" in codes("法人ユーザー1", name="法人ユーザー1")
        assert codes("kj3h5gq8", name="法人ユーザー1") == []

    def test_every_violation_is_listed_R_PW_1(self) -> None:
        """A password breaking several rules gets all of them, not just the first."""
        violations = check_new_password(POLICY, "taro", USER_ID, "Taro", lambda _p: True)
        assert [type(v) for v in violations] == [
            TooShort, NeedsLettersAndDigits, SameAsUserName, ReusedPassword, TooCommon,
        ]


class TestHistory:
    """Not the current password nor the one before (R-PW-1, §2.5(1))."""

    def test_reuse_refused_R_PW_1(self) -> None:
        """The history callable is asked about the new password and its answer is obeyed."""
        asked: list[str] = []

        def matches(candidate: str) -> bool:
            asked.append(candidate)
            return True

        violations = check_new_password(POLICY, "kj3h5gq8", USER_ID, NAME, matches)
        assert asked == ["kj3h5gq8"]
        assert [v.code for v in violations] == ["password_reused"]

    def test_history_off_never_asks_R_PW_1(self) -> None:
        """With history=0 the (costly) history check does not run."""

        def must_not_run(_candidate: str) -> bool:
            raise AssertionError("history consulted")

        policy = PasswordPolicy(history=0)
        assert check_new_password(policy, "kj3h5gq8", USER_ID, NAME, must_not_run) == []


class TestGuessability:
    """Common or easily guessed passwords are refused (R-PW-4)."""

    @pytest.mark.parametrize(
        "password", ["password1", "Passw0rd1", "qwerty123", "abcd1234", "iloveyou1", "letmein12"]
    )
    def test_common_passwords_refused_R_PW_4(self, password: str) -> None:
        """Passwords from zxcvbn's lists (also with l33t or case changes) are refused."""
        assert codes(password) == ["password_too_common"]

    def test_warning_is_kept_R_PW_4(self) -> None:
        """The violation carries zxcvbn's score and warning for the page."""
        (violation,) = check_new_password(POLICY, "password1", USER_ID, NAME, _never)
        assert isinstance(violation, TooCommon)
        assert violation.score == 0
        assert "common" in str(violation)

    def test_user_inputs_lower_the_score_R_PW_4(self) -> None:
        """The customer name is fed to zxcvbn, so a password built on it scores lower."""
        password = "Hokuseido12"
        assert codes(password) == []
        violations = check_new_password(POLICY, password, USER_ID, NAME, _never,
                                        other_inputs=["Hokuseido Trading"])
        assert [v.code for v in violations] == ["password_too_common"]

    def test_threshold_is_configurable_R_PW_4(self) -> None:
        """min_zxcvbn_score=0 turns the estimator off except for listed passwords."""
        policy = PasswordPolicy(min_zxcvbn_score=0)
        assert codes("Passw0rd1", policy=policy) == []
        assert codes("password1", policy=policy) == ["password_too_common"]


class TestViolationTypes:
    """Each rule is its own type with a stable code (STYLE 7)."""

    def test_codes_are_unique_R_PW_1(self) -> None:
        """Every violation class has its own code, all prefixed with password_."""
        classes = [
            cls for _, cls in inspect.getmembers(rules, inspect.isclass)
            if issubclass(cls, PasswordRuleViolation) and cls is not PasswordRuleViolation
        ]
        assert {TooShort, TooLong, NeedsLettersAndDigits, SameAsUserId, SameAsUserName,
                ReusedPassword, TooCommon} == set(classes)
        assert len({cls.code for cls in classes}) == len(classes)
        assert all(cls.code.startswith("password_") for cls in classes)

    @pytest.mark.parametrize(
        "kwargs",
        [{"min_length": 0}, {"min_length": 9, "max_length": 8}, {"max_length": 100},
         {"history": -1}, {"max_age": timedelta(0)}, {"min_zxcvbn_score": 5}],
    )
    def test_bad_policy_refused_at_start_R_PW_1(self, kwargs: dict[str, object]) -> None:
        """A policy that cannot work is refused when it is built."""
        with pytest.raises(ValueError, match="password"):
            PasswordPolicy(**kwargs)  # type: ignore[arg-type]


class TestExpiry:
    """Passwords expire 90 days after they are set (R-PW-2, §2.2(4))."""

    @pytest.mark.parametrize(
        ("now", "expired"),
        [
            (SET_AT + NINETY_DAYS - SECOND, False),
            (SET_AT + NINETY_DAYS, True),
            (SET_AT + NINETY_DAYS + SECOND, True),
        ],
    )
    def test_expiry_edge_R_PW_2(self, now: datetime, expired: bool) -> None:
        """Valid until one second before set_at + 90 days, expired at it and after."""
        assert password_expired(SET_AT, now, POLICY) is expired

    def test_expiry_can_be_switched_off_R_PW_2(self) -> None:
        """max_age=None (what NIST SP 800-63B recommends) never expires a password."""
        policy = PasswordPolicy(max_age=None)
        assert not password_expired(SET_AT, SET_AT + timedelta(days=3650), policy)
        assert rules.expires_at(SET_AT, policy) is None

    @pytest.mark.parametrize(
        ("must_change", "now", "outcome"),
        [
            (False, SET_AT + NINETY_DAYS - SECOND, LoginOutcome.OK),
            (False, SET_AT + NINETY_DAYS, LoginOutcome.MUST_CHANGE_EXPIRED),
            (False, SET_AT + NINETY_DAYS + SECOND, LoginOutcome.MUST_CHANGE_EXPIRED),
            (True, SET_AT, LoginOutcome.MUST_CHANGE_TEMPORARY),
            (True, SET_AT + NINETY_DAYS - SECOND, LoginOutcome.MUST_CHANGE_TEMPORARY),
            (True, SET_AT + NINETY_DAYS, LoginOutcome.MUST_CHANGE_TEMPORARY),
            (True, SET_AT + NINETY_DAYS + SECOND, LoginOutcome.MUST_CHANGE_TEMPORARY),
        ],
    )
    def test_login_outcome_R_PW_2(
        self, must_change: bool, now: datetime, outcome: LoginOutcome
    ) -> None:
        """Temporary or expired passwords lead only to the change page; temporary wins."""
        assert login_outcome(must_change, SET_AT, now, POLICY) is outcome
        assert login_outcome(must_change, SET_AT, now, POLICY) == outcome.value
