"""What the security officer tripped over with `sekisho-ca` (issue 15 items 14-16, 18)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ca import cli as ca_cli
from ca.store import Store
from tests.conftest import CaHarness


def _audit(ca: CaHarness) -> list:  # type: ignore[type-arg]
    async def read() -> list:  # type: ignore[type-arg]
        store = await Store.open(ca.config.database)
        try:
            return await store.audit_entries()
        finally:
            await store.close()

    return ca.call(read())


class TestAcquisitionPasswordForUnknownUsers:
    """Issue 15 item 15 (the gateway side is in tests/gateway/test_cli.py)."""

    def test_without_a_readable_gateway_database_it_warns(
            self, ca: CaHarness, capsys: pytest.CaptureFixture[str]) -> None:
        """The gateway on another host: the check is skipped with a warning, not silently."""
        assert ca.cli("acquisition-password", "810003") == 0
        captured = capsys.readouterr()
        assert "warning: cannot read the gateway's users" in captured.err
        assert "acquisition password for 810003:" in captured.out


class TestOperatorAndConfig:
    """Issue 15 items 14 and 18 for the officer's command line."""

    def test_operator_recorded_and_config_after_the_command(
            self, ca: CaHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """`revoke ... --config X --operator N` works and the audit row says officer:N; the
        OS user is the default; SEKISHO_CONFIG names the file when no option does."""
        serial, _ = ca.issue_csr("810010", tmp_path)
        assert ca_cli.main(["revoke", "--serial", serial, "--reason", "superseded",
                            "--config", str(ca.config_path), "--operator", "kato"],
                           clock=ca.clock) == 0
        assert _audit(ca)[-1].actor == "officer:kato"
        monkeypatch.setenv("USER", "ito")
        monkeypatch.setenv("LOGNAME", "ito")
        elsewhere = tmp_path / "elsewhere"
        elsewhere.mkdir()
        monkeypatch.chdir(elsewhere)
        monkeypatch.setenv("SEKISHO_CONFIG", str(ca.config_path))
        assert ca_cli.main(["acquisition-password", "810011", "--force"], clock=ca.clock) == 0
        assert _audit(ca)[-1].actor == "officer:ito"
        monkeypatch.delenv("SEKISHO_CONFIG")
        assert ca_cli.main(["acquisition-password", "810011", "--force"], clock=ca.clock) == 1
        assert "does not exist" in capsys.readouterr().err


class TestCheckCrlOnAMonitoringHost:
    """Issue 15 item 16: check-crl with the issuer given, no config.toml anywhere."""

    def test_issuer_file_or_url_without_config_R_REV_3(
            self, ca: CaHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
            capsys: pytest.CaptureFixture[str]) -> None:
        """From an empty folder: --issuer FILE (PEM) and --issuer URL (the public bundle)
        both verify the CRL; the root alone (not its issuer) makes it CRITICAL."""
        issuer = tmp_path / "g1.pem"
        issuer.write_bytes(ca.issuer_files()["g1"].read_bytes())
        empty = tmp_path / "monitoring"
        empty.mkdir()
        monkeypatch.chdir(empty)
        monkeypatch.delenv("SEKISHO_CONFIG", raising=False)
        url = f"{ca.public_url}/crl/g1.crl"
        assert ca_cli.main(["check-crl", url], clock=ca.clock) == 3  # no config, no issuer
        assert "UNKNOWN" in capsys.readouterr().out
        assert ca_cli.main(["check-crl", url, "--issuer", str(issuer)], clock=ca.clock) == 0
        assert capsys.readouterr().out.startswith("CRL OK - ")
        assert ca_cli.main(["check-crl", url, "--issuer", f"{ca.public_url}/certs/bundle.pem"],
                           clock=ca.clock) == 0
        assert capsys.readouterr().out.startswith("CRL OK - ")
        root = tmp_path / "root.pem"
        root.write_bytes(ca.issuer_files()["root"].read_bytes())
        assert ca_cli.main(["check-crl", url, "--issuer", str(root)], clock=ca.clock) == 2
        assert "CRITICAL" in capsys.readouterr().out
        assert ca_cli.main(["check-crl", url, "--issuer", str(tmp_path / "none.pem")],
                           clock=ca.clock) == 3
