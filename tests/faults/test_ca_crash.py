"""kill -9 of the real CA daemon at chosen moments (R-FAULT-1..3): after a restart every
guarantee holds again, without an engineer. Each case ends with `check_invariants`."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from policy.clock import FakeClock
from tests.support.faults import (
    Answer,
    CaProcess,
    certificate_of,
    check_invariants,
    http,
    ocsp_status,
)


def _in_background(call: Callable[[], Answer],
                   ) -> tuple[threading.Thread, list[Answer | BaseException]]:
    """Run a request that the daemon will never answer (it is paused, then killed)."""
    outcome: list[Answer | BaseException] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def _issuer(ca: CaProcess) -> x509.Certificate:
    return x509.load_pem_x509_certificate(
        (ca.directory / "var" / "keys" / "g1.crt.pem").read_bytes())


class TestCrlAfterRestart:
    """R-FAULT-1: the CRL is never older than the store, across restarts."""

    def test_revocations_committed_while_the_ca_was_down_are_on_the_crl_at_start(
            self, ca_process: CaProcess) -> None:
        """Officer revocations made with the daemon down (kill -9) are listed by the very
        first CRL the restarted daemon serves, under a new CRL number."""
        ca = ca_process.start()
        delivered: dict[str, bytes] = {}
        passwords = {}
        for index in range(6):
            user = f"81000{index}"
            passwords[user] = ca.acquisition_password(user)
            answer = ca.acquire(user, passwords[user])
            assert answer.status == 201, answer
            delivered[answer.body["serial"]] = _der(certificate_of(answer, passwords[user]))
        number_before = ca.rows("SELECT crl_number FROM crl_state")[0][0]
        ca.kill9()
        serials = list(delivered)[:4]
        for serial in serials:
            result = ca.cli("revoke", "--serial", serial, "--reason", "keyCompromise")
            assert result.returncode == 0, result.stderr
        ca.start()
        crl = x509.load_der_x509_crl(http("GET", ca.public_url + "/crl/g1.crl").body)
        assert {format(e.serial_number, "x") for e in crl} == set(serials)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number \
            > number_before
        (covered,) = ca.rows("SELECT revocation_seq FROM crl_state WHERE generation = 'g1'")[0]
        assert covered == ca.rows("SELECT MAX(revocation_seq) FROM certificates")[0][0]
        check_invariants(ca, {s: d for s, d in delivered.items() if s not in serials})

    def test_revocation_just_before_a_crash_reaches_the_crl(
            self, ca_process: CaProcess) -> None:
        """A revocation committed by the officer CLI and a kill -9 right after it: the
        restarted daemon's CRL lists it (the stored CRL says which sequence it covers)."""
        ca = ca_process.start()
        password = ca.acquisition_password("810100")
        answer = ca.acquire("810100", password)
        assert answer.status == 201
        result = ca.cli("revoke", "--serial", answer.body["serial"], "--reason", "superseded")
        assert result.returncode == 0, result.stderr
        ca.kill9()
        ca.start()
        check_invariants(ca, {})


@pytest.mark.parametrize("moment", ["ca.after_intent", "ca.after_sign"])
class TestKillBetweenIntentAndIssued:
    """R-FAULT-2: an intent whose request died never blocks the user."""

    def test_user_can_acquire_after_restart_and_officer_sees_the_row(
            self, ca_process: CaProcess, moment: str) -> None:
        """kill -9 while an acquisition is at `moment`; after the restart the same user
        acquires at once (no usable_certificate_exists), the officer sees the abandoned
        row, OCSP never calls its serial good, and every invariant holds."""
        ca = ca_process.start(fault=moment)
        password = ca.acquisition_password("820001")
        thread, outcome = _in_background(lambda: ca.acquire("820001", password))
        ca.wait_fault()
        ca.kill9()
        thread.join(30)
        assert outcome and not isinstance(outcome[0], Answer), "nothing may be delivered"
        (serial,) = [row[0] for row in ca.rows("SELECT serial FROM certificates")]
        ca.start()
        assert ca.rows("SELECT state FROM certificates WHERE serial = ?", (serial,)) == [
            ("abandoned",)]
        assert ocsp_status(ca, _issuer(ca), serial) == "unknown"
        listing = ca.cli("list", "--all", "--user", "820001")
        assert serial in listing.stdout and "abandoned" in listing.stdout, listing
        show = ca.cli("show", serial)
        assert show.returncode == 0 and "abandoned" in show.stdout, show
        revoke = ca.cli("revoke", "--serial", serial, "--reason", "cessationOfOperation")
        assert revoke.returncode == 0, revoke.stderr
        answer = ca.acquire("820001", password)
        assert answer.status == 201, answer
        check_invariants(ca, {answer.body["serial"]: _der(certificate_of(answer, password))},
                         {"820001": password})
        assert ocsp_status(ca, _issuer(ca), serial) == "revoked"


class TestIntentDeadline:
    """R-FAULT-2 without a restart: an intent stops counting at its deadline."""

    def test_intent_paused_past_its_deadline_no_longer_blocks(
            self, ca_process_factory: Callable[..., CaProcess]) -> None:
        """A request stuck after signing (the daemon lives on): once its 2 s deadline has
        passed, the user acquires again, `list` shows the stale intent abandoned, and the
        stuck request can never be stored as issued."""
        ca = ca_process_factory('request_deadline = "2s"\n').start(fault="ca.after_sign")
        password = ca.acquisition_password("820101")
        _in_background(lambda: ca.acquire("820101", password))
        ca.wait_fault()
        (serial,) = [row[0] for row in ca.rows("SELECT serial FROM certificates")]
        blocked = ca.acquire("820101", password)
        assert (blocked.status, blocked.error) == (409, "usable_certificate_exists")
        deadline = ca.rows("SELECT deadline FROM certificates WHERE serial = ?", (serial,))[0][0]
        while time.time() <= deadline + 1:
            time.sleep(0.2)
        answer = ca.acquire("820101", password)
        assert answer.status == 201, answer
        ca.kill9()
        ca.start()
        check_invariants(ca, {answer.body["serial"]: _der(certificate_of(answer, password))})


class TestAfterIssued:
    """R-CERT-3: a certificate stored but not answered (kill -9 after the commit)."""

    def test_stored_but_unanswered_certificate_is_visible_and_revocable(
            self, ca_process: CaProcess) -> None:
        """The certificate exists (stored first), the client never got it: the officer sees
        it as valid in `list`, revokes it, and the user acquires again."""
        ca = ca_process.start(fault="ca.after_issued")
        password = ca.acquisition_password("820201")
        thread, outcome = _in_background(lambda: ca.acquire("820201", password))
        ca.wait_fault()
        ca.kill9()
        thread.join(30)
        assert outcome and not isinstance(outcome[0], Answer)
        ca.start()
        (serial,) = [row[0] for row in ca.rows("SELECT serial FROM certificates")]
        assert ca.acquire("820201", password).error == "usable_certificate_exists"
        assert serial in ca.cli("list", "--user", "820201").stdout
        assert ca.cli("revoke", "--user", "820201", "--reason",
                      "cessationOfOperation").returncode == 0
        answer = ca.acquire("820201", password)
        assert answer.status == 201, answer
        check_invariants(ca, {answer.body["serial"]: _der(certificate_of(answer, password))})


class TestKillBetweenCountAndResult:
    """R-FAULT-3 at the CA: a counted acquisition try whose check died."""

    @pytest.mark.parametrize(("earlier_failures", "expected"),
                             [(0, (201, None)), (2, (423, "acquisition_locked"))])
    def test_counted_try_of_a_killed_daemon_counts_as_a_failure(
            self, ca_process: CaProcess, earlier_failures: int,
            expected: tuple[int, str | None]) -> None:
        """kill -9 after the try is counted, before the password is checked. After the
        restart the user is never "busy" (429): the dead try counts as a failure, so with
        two earlier failures the password is locked (no fourth password is ever evaluated)
        and an officer's reissue lets the user in; with none, the right password works."""
        fault = f"ca.after_attempt_counted::{earlier_failures + 1}"
        ca = ca_process.start(fault=fault)
        password = ca.acquisition_password("830001")
        for _ in range(earlier_failures):
            assert ca.acquire("830001", "wrong-password-1").status == 401
        thread, _ = _in_background(lambda: ca.acquire("830001", password))
        ca.wait_fault()
        ca.kill9()
        thread.join(30)
        ca.start()
        answer = ca.acquire("830001", password)
        assert (answer.status, answer.error) == expected, answer
        if answer.status == 423:
            password = ca.acquisition_password("830001")  # the officer reissues
            answer = ca.acquire("830001", password)
            assert answer.status == 201, answer
        check_invariants(ca, {answer.body["serial"]: _der(certificate_of(answer, password))})
        evaluated = ca.rows("SELECT COUNT(*) FROM audit_log WHERE action IN"
                            " ('acquisition_password.failed', 'acquisition_password.locked')")
        assert evaluated[0][0] == earlier_failures


def test_fake_clock_fixture_is_real_time(clock: FakeClock) -> None:
    """The daemons run on the system clock: the initialising clock must match it."""
    from datetime import UTC, datetime

    assert abs(clock.now() - datetime.now(UTC)) < timedelta(minutes=1)
