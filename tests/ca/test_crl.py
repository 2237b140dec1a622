"""CRL publication with real clients: openssl crl, openssl verify -crl_check, HTTP caching,
the schedule, check-crl and metrics (R-REV-1, R-REV-3)."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from policy.clock import FakeClock
from tests.conftest import CaHarness, init_ca, openssl, start_ca
from tests.support.servers import http_get

# R-KEY-1: these run with the keys in encrypted files and in a SoftHSM2 token.
pytestmark = [pytest.mark.key_backends, pytest.mark.store_backends]


def _crl_pem(ca: CaHarness, tmp_path: Path) -> Path:
    status, headers, der = http_get(f"{ca.public_url}/crl/g1.crl")
    assert status == 200
    assert headers["Content-Type"] == "application/pkix-crl"
    path = tmp_path / "crl.pem"
    path.write_bytes(x509.load_der_x509_crl(der).public_bytes(serialization.Encoding.PEM))
    return path


def _crl_number(ca: CaHarness) -> int:
    crl = x509.load_der_x509_crl(http_get(f"{ca.public_url}/crl/g1.crl")[2])
    return crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number


class TestCrl:
    """The CRL at the distribution point named in every certificate (R-REV-1)."""

    def test_openssl_reads_number_aki_next_update_R_REV_1(self, ca: CaHarness,
                                                          tmp_path: Path) -> None:
        """openssl crl shows the CRL number, the AKI and a nextUpdate 24 h after thisUpdate."""
        der_path = tmp_path / "g1.crl"
        der_path.write_bytes(http_get(f"{ca.public_url}/crl/g1.crl")[2])
        text = openssl("crl", "-inform", "DER", "-in", str(der_path), "-noout", "-text").stdout
        assert "X509v3 CRL Number" in text
        assert "X509v3 Authority Key Identifier" in text
        assert "Next Update" in text
        assert "No Revoked Certificates" in text
        crl = x509.load_der_x509_crl(der_path.read_bytes())
        assert crl.next_update_utc - crl.last_update_utc == timedelta(hours=24)
        assert crl.last_update_utc == ca.clock.now().replace(microsecond=0)

    def test_revoked_leaf_rejected_by_openssl_verify_R_REV_1(self, ca: CaHarness,
                                                            tmp_path: Path) -> None:
        """After `sekisho-ca revoke` the new CRL makes openssl reject the leaf; its twin passes."""
        revoked_serial, revoked_leaf = ca.issue_csr("400001", tmp_path)
        _, good_leaf = ca.issue_csr("400002", tmp_path)
        before = _crl_number(ca)
        assert ca.cli("revoke", "--serial", revoked_serial, "--reason", "keyCompromise") == 0
        ca.sync()  # what the 0.25 s poll does for the CLI's commit
        assert _crl_number(ca) == before + 1
        crl = _crl_pem(ca, tmp_path)
        files = ca.issuer_files()
        at = str(int(ca.clock.now().timestamp()) + 60)
        common = ["verify", "-attime", at, "-crl_check", "-CRLfile", str(crl),
                  "-CAfile", str(files["root"]), "-untrusted", str(files["g1"])]
        refused = openssl(*common, str(revoked_leaf), check=False)
        assert refused.returncode != 0
        assert "certificate revoked" in refused.stdout + refused.stderr
        assert openssl(*common, str(good_leaf)).stdout.strip().endswith("OK")
        text = openssl("crl", "-in", str(crl), "-noout", "-text").stdout
        assert "Key Compromise" in text
        assert revoked_serial.upper() in text.replace(":", "").upper()

    def test_http_caching_R_REV_1(self, ca: CaHarness) -> None:
        """ETag revalidation gives 304; max-age never reaches past nextUpdate."""
        status, headers, _ = http_get(f"{ca.public_url}/crl/g1.crl")
        assert status == 200
        max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
        assert 0 < max_age <= 24 * 3600
        status, _, body = http_get(f"{ca.public_url}/crl/g1.crl",
                                 {"If-None-Match": headers["ETag"]})
        assert (status, body) == (304, b"")
        assert http_get(f"{ca.public_url}/crl/g9.crl")[0] == 404

    def test_schedule_resigns_without_revocations_R_REV_1(self, ca: CaHarness) -> None:
        """Nothing revoked for an hour: the CRL is re-signed anyway, never going stale."""
        before = _crl_number(ca)
        ca.clock.advance(timedelta(minutes=59))
        ca.call(ca.runtime.crls.tick())
        assert _crl_number(ca) == before
        ca.clock.advance(timedelta(minutes=1))
        ca.call(ca.runtime.crls.tick())
        assert _crl_number(ca) == before + 1

    def test_crl_command_writes_file(self, ca: CaHarness, tmp_path: Path) -> None:
        """`sekisho-ca crl --output` writes a DER CRL openssl can read."""
        out = tmp_path / "out.crl"
        assert ca.cli("crl", "--generation", "g1", "--output", str(out)) == 0
        openssl("crl", "-inform", "DER", "-in", str(out), "-noout")
        assert ca.cli("crl", "--generation", "g7", "--output", str(out)) == 1

    def test_crl_number_survives_restart_R_REV_1(self, tmp_path: Path,
                                                 clock: FakeClock) -> None:
        """The CRL number is persisted and only grows, across a restart of the daemon."""
        config_path = init_ca(tmp_path, clock)
        ca = start_ca(config_path, clock)
        first = _crl_number(ca)
        ca.call(ca.runtime.crls.publish("g1"))
        stored = ca.call(ca.runtime.store.load_crl("g1"))
        assert stored[0] == first + 1
        ca.stop()
        restarted = start_ca(config_path, clock)
        try:
            assert _crl_number(restarted) == first + 1  # the stored CRL is served again
            restarted.call(restarted.runtime.crls.publish("g1"))
            assert _crl_number(restarted) == first + 2
        finally:
            restarted.stop()


class TestMonitoring:
    """check-crl and /metrics make CRL freshness visible (R-REV-3)."""

    @pytest.mark.parametrize(
        ("advance", "code", "word"),
        [
            (timedelta(0), 0, "OK"),
            (timedelta(hours=19), 1, "WARNING"),
            (timedelta(hours=23, minutes=30), 2, "CRITICAL"),
            (timedelta(hours=25), 2, "CRITICAL"),
        ],
    )
    def test_check_crl_exit_codes_R_REV_3(self, ca: CaHarness, capsys, advance: timedelta,
                                          code: int, word: str) -> None:
        """Fresh, nearly stale, about to expire and expired CRLs (fake clock)."""
        ca.clock.advance(advance)
        assert ca.cli("check-crl", f"{ca.public_url}/crl/g1.crl", "--warn", "6h",
                      "--crit", "1h") == code
        line = capsys.readouterr().out.strip()
        assert line.startswith(f"CRL {word} - ")
        assert "\n" not in line
        if advance > timedelta(hours=24):
            assert "expired" in line

    def test_check_crl_unknown_and_bad_signature_R_REV_3(self, ca: CaHarness, tmp_path: Path,
                                                         capsys) -> None:
        """An unreachable URL is UNKNOWN (3); a CRL from a foreign issuer is CRITICAL (2)."""
        assert ca.cli("check-crl", f"{ca.public_url}/crl/g9.crl") == 3
        assert "UNKNOWN" in capsys.readouterr().out
        # A CRL signed by another CA, served by a stand-in HTTP server.
        from tests.conftest import init_ca, start_ca

        (tmp_path / "other").mkdir()
        other = start_ca(init_ca(tmp_path / "other", ca.clock), ca.clock)
        try:
            assert ca.cli("check-crl", f"{other.public_url}/crl/g1.crl") == 2
        finally:
            other.stop()
        assert "CRITICAL" in capsys.readouterr().out

    def test_metrics_R_REV_3(self, ca: CaHarness, tmp_path: Path) -> None:
        """Prometheus text shows thisUpdate, nextUpdate, entries, number, counters and build."""
        serial, _ = ca.issue_csr("400003", tmp_path)
        ca.cli("revoke", "--serial", serial, "--reason", "superseded")
        ca.sync()
        status, headers, body = http_get(f"{ca.public_url}/metrics")
        text = body.decode()
        assert status == 200
        assert headers["Content-Type"].startswith("text/plain")
        assert 'sekisho_crl_next_update_timestamp_seconds{generation="g1"}' in text
        assert 'sekisho_crl_this_update_timestamp_seconds{generation="g1"}' in text
        assert 'sekisho_crl_entries{generation="g1"} 1.0' in text
        assert 'sekisho_crl_number{generation="g1"}' in text
        assert "sekisho_certificates_revoked_total 1.0" in text
        assert "sekisho_build_info{" in text
