"""The re-issuance notice's timeline on the CA (R-CUT-1): generations, the cutover day,
re-acquisition with the original acquisition password, bulk revocation, campaign status."""

from __future__ import annotations

import base64
import csv
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from policy.clock import FakeClock
from tests.conftest import CaHarness, init_ca, key_backend_config, openssl, start_ca

# R-KEY-1: these run with the keys in encrypted files and in a SoftHSM2 token.
pytestmark = pytest.mark.key_backends

JST = timezone(timedelta(hours=9))
SECOND = timedelta(seconds=1)
CUTOVER_DAY = datetime(2021, 2, 24, tzinfo=JST)
CUTOVER_CONFIG = """
[generations.g1]
retire_at = 2021-02-24T00:00:00+09:00
[generations.g2]
issues_from = 2020-11-12T00:00:00+09:00

[[cutover]]
name = "notice-2021"
issued_before = 2020-11-12T00:00:00+09:00
effective_at = 2021-02-24T00:00:00+09:00
"""


@pytest.fixture
def notice(tmp_path: Path, key_backend: str, request: pytest.FixtureRequest) -> CaHarness:
    """A CA created in 2020 that gained generation g2 and the notice's cutover."""
    clock = FakeClock(datetime(2020, 6, 1, 9, 0, tzinfo=JST))
    config_path = init_ca(tmp_path, clock,
                          keys_extra=key_backend_config(key_backend, tmp_path, request))
    first = start_ca(config_path, clock)
    first.stop()
    assert first.cli("issuer", "new") == 0
    with config_path.open("a") as handle:
        handle.write(CUTOVER_CONFIG)
    harness = start_ca(config_path, clock)
    yield harness
    harness.stop()


def _leaf(body: dict, password: str, path: Path) -> Path:
    _, leaf, _ = pkcs12.load_key_and_certificates(base64.b64decode(body["pkcs12"]),
                                                  password.encode())
    path.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    return path


class TestNoticeTimeline:
    """Walk the notice: before the boundary, after it, the day before and the cutover day."""

    def test_timeline_R_CUT_1(self, notice: CaHarness, tmp_path: Path, capsys) -> None:
        """Old certificates stop on the cutover day; re-acquisition opens then, not before."""
        ca = notice
        # 2020-06: the old customer acquires from g1 (g2 does not issue before 2020-11-12).
        old_password = ca.acquisition_password("700001")
        status, old = ca.acquire("700001", old_password)
        assert (status, old["generation"]) == (201, "g1")
        # 2020-12: a new customer is issued by g2 and is not affected.
        ca.clock.set(datetime(2020, 12, 1, 10, 0, tzinfo=JST))
        new_password = ca.acquisition_password("700002")
        status, new = ca.acquire("700002", new_password)
        assert (status, new["generation"]) == (201, "g2")

        # The day before the cutover: both certificates work, re-acquisition is refused.
        ca.clock.set(CUTOVER_DAY - SECOND)
        assert ca.api("GET", f"/v1/certificates/{old['serial']}")[1]["state"] == "valid"
        status, refused = ca.acquire("700001", old_password)
        assert (status, refused["error"]) == (409, "acquisition_not_open")
        assert refused["opens_at"].startswith("2021-02-23T15:00:00")  # 2021-02-24 00:00 JST

        # The cutover day: the old certificate is cut over, the new one still works.
        ca.clock.set(CUTOVER_DAY)
        assert ca.api("GET", f"/v1/certificates/{old['serial']}")[1]["state"] == "cut_over"
        assert ca.api("GET", f"/v1/certificates/{new['serial']}")[1]["state"] == "valid"
        status, renewed = ca.acquire("700001", old_password)  # the original password
        assert (status, renewed["generation"]) == (201, "g2")
        status, refused = ca.acquire("700002", new_password)
        assert (status, refused["error"]) == (409, "usable_certificate_exists")

        # Campaign status: one affected user, re-acquired on the cutover day.
        capsys.readouterr()
        report = tmp_path / "campaign.csv"
        assert ca.cli("campaign", "status", "--csv", str(report)) == 0
        out = capsys.readouterr().out
        assert "cutover g1-retired" in out and "cutover notice-2021" in out
        assert "affected users: 1  re-acquired: 1  not yet: 0" in out
        rows = list(csv.DictReader(report.open()))
        assert {(r["cutover"], r["user_id"], r["reacquired"]) for r in rows} == {
            ("g1-retired", "700001", "yes"), ("notice-2021", "700001", "yes")}
        audit = [e.action for e in ca.call(ca.runtime.store.audit_entries())]
        assert "cutover.reacquisition_refused" in audit
        assert "cutover.reacquired" in audit
        assert "campaign.status_viewed" in audit

    def test_both_generations_verify_with_openssl_R_CUT_1(self, notice: CaHarness,
                                                         tmp_path: Path) -> None:
        """openssl ocsp and verify -crl_check work for certificates of g1 and of g2."""
        ca = notice
        leaves = {}
        for user_id, when in (("700011", datetime(2020, 7, 1, tzinfo=JST)),
                              ("700012", datetime(2020, 12, 1, tzinfo=JST))):
            ca.clock.set(when)
            password = ca.acquisition_password(user_id)
            status, body = ca.acquire(user_id, password)
            assert status == 201
            leaves[body["generation"]] = (body["serial"],
                                          _leaf(body, password, tmp_path / f"{user_id}.pem"))
        ca.clock.set(datetime(2020, 12, 2, tzinfo=JST))
        # months passed on the fake clock: what the daemon's minute tick would have done
        assert ca.runtime.ocsp.renew_responders() == ["g1", "g2"]
        ca.call(ca.runtime.crls.tick())  # and its CRL schedule
        ca.call(ca.runtime.authority.revoke_serial(leaves["g1"][0], "superseded", actor="t"))
        ca.sync()
        keys = ca.config.keys.directory
        chain = tmp_path / "all.pem"
        chain.write_bytes(b"".join((keys / f"{n}.crt.pem").read_bytes()
                                   for n in ("g1", "g2", "root")))
        at = str(int(ca.clock.now().timestamp()) + 60)
        for generation, expected in (("g1", "revoked"), ("g2", "good")):
            serial, leaf = leaves[generation]
            result = openssl(
                "ocsp", "-issuer", str(keys / f"{generation}.crt.pem"), "-cert", str(leaf),
                "-CAfile", str(chain), "-url", f"{ca.public_url}/ocsp", "-attime", at,
                "-validity_period", str(10 * 365 * 86400))
            out = result.stdout + result.stderr
            assert "Response verify OK" in out
            assert f"{leaf}: {expected}" in out
            crl_der = tmp_path / f"{generation}.crl"
            assert ca.cli("crl", "--generation", generation, "--output", str(crl_der)) == 0
            crl_pem = tmp_path / f"{generation}.crl.pem"
            crl_pem.write_bytes(x509.load_der_x509_crl(crl_der.read_bytes()).public_bytes(
                serialization.Encoding.PEM))
            verify = openssl("verify", "-attime", at, "-crl_check", "-CRLfile", str(crl_pem),
                             "-CAfile", str(keys / "root.crt.pem"), "-untrusted",
                             str(keys / f"{generation}.crt.pem"), str(leaf), check=False)
            if expected == "revoked":
                assert "certificate revoked" in verify.stdout + verify.stderr
            else:
                assert verify.stdout.strip().endswith("OK"), verify.stderr


class TestBulkRevocation:
    """`revoke --issued-before` as the alternative to a dated cutover."""

    def test_dry_run_then_revoke(self, notice: CaHarness, capsys) -> None:
        """The dry run counts and names users without changing anything; then one operation."""
        ca = notice
        for index in range(3):
            ca.clock.set(datetime(2020, 7, 1 + index, tzinfo=JST))
            assert ca.acquire(f"70010{index}", ca.acquisition_password(f"70010{index}"))[0] == 201
        ca.clock.set(datetime(2020, 12, 1, tzinfo=JST))
        assert ca.acquire("700200", ca.acquisition_password("700200"))[0] == 201
        capsys.readouterr()
        args = ["revoke", "--issued-before", "2020-11-12T00:00:00+09:00", "--generation", "g1",
                "--reason", "superseded"]
        assert ca.cli(*args, "--dry-run") == 0
        out = capsys.readouterr().out
        assert "would revoke 3 certificates of 3 users" in out
        assert "700101" in out and "700200" not in out
        assert ca.call(ca.runtime.store.last_revocation_seq()) == 0
        assert ca.cli(*args) == 0
        assert "revoked 3 certificates of 3 users" in capsys.readouterr().out
        assert ca.call(ca.runtime.store.last_revocation_seq()) == 3
        audit = [e.action for e in ca.call(ca.runtime.store.audit_entries())]
        assert audit.count("certificate.revoked") == 3
        assert "certificate.bulk_revoked" in audit

    def test_issuer_list(self, notice: CaHarness, capsys) -> None:
        """`issuer list` shows both generations with their dates and which one issues now."""
        capsys.readouterr()
        notice.clock.set(datetime(2020, 12, 1, tzinfo=JST))
        assert notice.cli("issuer", "list") == 0
        out = capsys.readouterr().out
        assert "g1" in out and "g2 *" in out
        assert "2021-02-23 15:00+0000" in out  # retire_at 2021-02-24 00:00 JST, shown in UTC
