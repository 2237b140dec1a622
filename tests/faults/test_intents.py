"""The intent and reservation rules themselves (R-FAULT-2, R-FAULT-3), on the store the daemon
uses, with the fake clock moved past deadlines (no sleeping)."""

from __future__ import annotations

from datetime import timedelta

import pytest

from ca.store import IntentExpired, Owner
from tests.conftest import CaHarness

# The rules hold on either store (issue 13: "the same rules as within one node").
pytestmark = pytest.mark.store_backends


def _reserve(ca: CaHarness, serial: str, owner: Owner, user_id: str = "880001") -> None:
    now = ca.clock.now()
    ca.call(ca.runtime.store.reserve(
        serial=serial, user_id=user_id, generation="g1", kind="csr", not_before=now,
        not_after=now + timedelta(days=365), now=now, check=lambda _existing: None,
        actor="test", owner=owner.id, deadline=now + timedelta(minutes=10)))


class TestIntentRules:
    """An intent past its deadline stops counting and can never become issued."""

    def test_intent_past_its_deadline_cannot_be_completed_R_FAULT_2(self, ca: CaHarness) -> None:
        """complete() after the deadline raises IntentExpired and stores nothing as issued;
        recover() then abandons the row."""
        owner = ca.runtime.authority.owner
        _reserve(ca, "abc1", owner)
        ca.clock.advance(timedelta(minutes=10, seconds=1))
        with pytest.raises(IntentExpired):
            ca.call(ca.runtime.store.complete("abc1", b"der", "00", ca.clock.now(), "test"))
        intents, _ = ca.call(ca.runtime.authority.recover())
        assert intents == [("abc1", "880001")]
        record = ca.call(ca.runtime.store.get("abc1"))
        assert record is not None and (record.state, record.der) == ("abandoned", None)

    def test_live_intent_blocks_and_stale_one_does_not_R_FAULT_2(self, ca: CaHarness) -> None:
        """A live intent blocks an acquisition (usable_certificate_exists), one second past
        its deadline it does not, even before recover() ran."""
        password = ca.acquisition_password("880002")
        _reserve(ca, "abc2", ca.runtime.authority.owner, "880002")
        status, body = ca.acquire("880002", password)
        assert (status, body["error"]) == (409, "usable_certificate_exists")
        ca.clock.advance(timedelta(minutes=10, seconds=1))
        status, body = ca.acquire("880002", password)
        assert status == 201, body

    def test_restart_settles_the_earlier_runs_intents_only_R_FAULT_2(
            self, ca: CaHarness) -> None:
        """recover() of a new daemon run abandons intents of earlier ca-daemon runs at once,
        leaves a live CLI's intent (owner ca-cli) for its deadline."""
        _reserve(ca, "abc3", Owner(ca.runtime.authority.owner.instance, "earlier"), "880003")
        _reserve(ca, "abc4", Owner("ca-cli", "running"), "880004")
        intents, _ = ca.call(ca.runtime.authority.recover())
        assert intents == [("abc3", "880003")]
        record = ca.call(ca.runtime.store.get("abc4"))
        assert record is not None and record.state == "intended"


class TestAcquisitionTryRules:
    """A counted try that can no longer complete counts as a failure, never a refund."""

    def test_stale_tries_count_as_failures_and_lock_at_the_limit_R_FAULT_3(
            self, ca: CaHarness) -> None:
        """Three tries counted by a run that died: recover() locks (3 of 3 used), and the
        right password is not evaluated any more (423)."""
        password = ca.acquisition_password("880010")
        store, now = ca.runtime.store, ca.clock.now()
        dead = Owner(ca.runtime.authority.owner.instance, "earlier")
        for _ in range(3):
            assert ca.call(store.reserve_acquisition_attempt(
                "880010", 3, now=now, deadline=now + timedelta(minutes=10),
                owner=dead)) == "reserved"
        _, users = ca.call(ca.runtime.authority.recover())
        assert users == ["880010"]
        status, body = ca.acquire("880010", password)
        assert (status, body["error"]) == (423, "acquisition_locked")

    def test_one_stale_try_leaves_the_user_free_R_FAULT_3(self, ca: CaHarness) -> None:
        """One try past its deadline: it counts as one failure; the right password works
        without waiting for recover()."""
        password = ca.acquisition_password("880011")
        store, now = ca.runtime.store, ca.clock.now()
        assert ca.call(store.reserve_acquisition_attempt(
            "880011", 3, now=now, deadline=now + timedelta(minutes=10),
            owner=ca.runtime.authority.owner)) == "reserved"
        ca.clock.advance(timedelta(minutes=10, seconds=1))
        status, body = ca.acquire("880011", password)
        assert status == 201, body
