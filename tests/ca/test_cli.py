"""The officer's command line: real commands, one-line errors, audit verification (R-CERT-7,
R-OPS-2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CaHarness, openssl

# R-KEY-1: these run with the keys in encrypted files and in a SoftHSM2 token.
pytestmark = [pytest.mark.key_backends, pytest.mark.store_backends]


def _issue_from_csr(ca: CaHarness, tmp_path: Path, user_id: str, cn: str | None = None) -> str:
    key = tmp_path / f"{user_id}.key"
    csr = tmp_path / f"{user_id}.csr"
    openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-keyout", str(key), "-subj", f"/CN={cn or user_id}", "-out", str(csr))
    out = tmp_path / f"{user_id}.pem"
    assert ca.cli("issue", user_id, "--csr", str(csr), "--output", str(out)) == 0
    return openssl("x509", "-in", str(out), "-noout", "-serial").stdout.split("=")[1].strip()


class TestOfficerCommands:
    """Issue, list, show and revoke from the command line."""

    def test_issue_list_show_revoke_R_CERT_7(self, ca: CaHarness, tmp_path: Path, capsys) -> None:
        """An officer issues from a CSR, lists it, shows it and revokes it by serial."""
        serial = _issue_from_csr(ca, tmp_path, "200001")
        capsys.readouterr()
        assert ca.cli("list") == 0
        table = capsys.readouterr().out
        assert "SERIAL" in table and "200001" in table and "valid" in table
        assert ca.cli("show", serial) == 0
        assert "BEGIN CERTIFICATE" in capsys.readouterr().out
        assert ca.cli("revoke", "--serial", serial, "--reason", "keyCompromise") == 0
        assert "revoked" in capsys.readouterr().out
        assert ca.cli("list", "--status", "revoked", "--json") == 0
        rows = json.loads(capsys.readouterr().out)
        assert [(r["user_id"], r["revocation_reason"]) for r in rows] == [
            ("200001", "keyCompromise")]

    def test_revoke_by_user_R_CERT_7(self, ca: CaHarness, tmp_path: Path, capsys) -> None:
        """Revoking by user revokes the user's usable certificate (a replaced PC)."""
        _issue_from_csr(ca, tmp_path, "200002")
        assert ca.cli("revoke", "--user", "200002", "--reason", "superseded") == 0
        assert "superseded" in capsys.readouterr().out
        assert ca.cli("revoke", "--user", "200002", "--reason", "superseded") == 1
        assert "holds no unrevoked" in capsys.readouterr().err

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["revoke", "--serial", "xyz", "--reason", "superseded"], "not a certificate serial"),
            (["revoke", "--serial", "abcdef", "--reason", "superseded"], "no certificate with"),
            (["revoke", "--user", "nobody", "--reason", "superseded"], "holds no unrevoked"),
            (["revoke", "--user", "nobody", "--reason", "because"], "unknown revocation reason"),
            (["show", "abc"], "no certificate with serial"),
            (["issue", "300001", "--csr", "/nonexistent.csr"], "cannot read CSR"),
        ],
    )
    def test_errors_are_one_line(self, ca: CaHarness, capsys, args: list[str],
                                 message: str) -> None:
        """Bad serials, unknown users, wrong reasons: one line on stderr, exit 1."""
        assert ca.cli(*args) == 1
        err = capsys.readouterr().err
        assert message in err
        assert err.count("\n") == 1 and "Traceback" not in err

    def test_bad_csr_and_cn_mismatch_R_CERT_8(self, ca: CaHarness, tmp_path: Path,
                                              capsys) -> None:
        """A garbage CSR and a CSR for someone else are refused."""
        garbage = tmp_path / "garbage.csr"
        garbage.write_bytes(b"-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n")
        assert ca.cli("issue", "300001", "--csr", str(garbage)) == 1
        assert "not a valid PEM or DER" in capsys.readouterr().err
        key = tmp_path / "k"
        csr = tmp_path / "other.csr"
        openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                "-keyout", str(key), "-subj", "/CN=someone-else", "-out", str(csr))
        assert ca.cli("issue", "300001", "--csr", str(csr)) == 1
        assert "does not match user ID" in capsys.readouterr().err

    def test_console_script_runs(self, ca: CaHarness) -> None:
        """`python -m ca` works as a separate process with --config."""
        result = subprocess.run(
            [sys.executable, "-m", "ca", "--config", str(ca.config_path), "list", "--json"],
            capture_output=True, text=True, timeout=60, check=False,
        )
        assert result.returncode == 0, result.stderr
        assert json.loads(result.stdout) == []


class TestAudit:
    """The audit log cannot be silently edited (R-OPS-2)."""

    def test_intact_chain_verifies_R_OPS_2(self, ca: CaHarness, tmp_path: Path, capsys) -> None:
        """After issuance and revocation the chain verifies."""
        serial = _issue_from_csr(ca, tmp_path, "200003")
        ca.cli("revoke", "--serial", serial, "--reason", "superseded")
        capsys.readouterr()
        assert ca.cli("audit", "verify") == 0
        assert "intact" in capsys.readouterr().out

    @pytest.mark.parametrize(
        ("tamper", "message"),
        [
            ("UPDATE audit_log SET subject = 'someone' WHERE id = 2", "row 2 was edited"),
            ("DELETE FROM audit_log WHERE id = 2", "missing"),
            ("DELETE FROM audit_log WHERE id = (SELECT MAX(id) FROM audit_log)", "at the end"),
        ],
    )
    def test_tampering_detected_R_OPS_2(self, ca: CaHarness, tmp_path: Path, capsys,
                                        tamper: str, message: str) -> None:
        """An edited, a deleted and a truncated row are each reported; exit 1."""
        serial = _issue_from_csr(ca, tmp_path, "200004")
        ca.cli("revoke", "--serial", serial, "--reason", "superseded")
        ca.sql(tamper)
        capsys.readouterr()
        assert ca.cli("audit", "verify") == 1
        assert message in capsys.readouterr().out


class TestKeyCustodyCommands:
    """`keys check` and `keys list` with either key backend (R-KEY-1)."""

    def test_keys_check_and_list(self, ca: CaHarness, capsys) -> None:
        """Every key signs and matches its certificate (exit 0); the list names all three."""
        assert ca.cli("keys", "check") == 0
        where = "token" if ca.config.keys.backend == "pkcs11" else "file"
        assert capsys.readouterr().out.startswith(
            f"KEYS OK - 3 keys sign and verify: root ({where}), g1 ({where}), g1-ocsp ({where})")
        assert ca.cli("keys", "list") == 0
        out = capsys.readouterr().out
        for label in ("root", "g1", "g1-ocsp"):
            assert f"\n{label} " in out

    def test_keys_check_critical_when_a_key_does_not_match(self, ca: CaHarness, capsys) -> None:
        """A certificate replaced by one for another key is CRITICAL (exit 2)."""
        files = ca.issuer_files()
        files["g1-ocsp"].write_bytes(files["g1"].read_bytes())
        assert ca.cli("keys", "check") == 2
        assert capsys.readouterr().out.startswith(
            "KEYS CRITICAL - g1-ocsp: the key does not match its certificate")

