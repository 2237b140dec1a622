"""R-CERT-8: CSR issuance accepts EC keys on exactly P-256 and P-384, by curve OID
(issue 10 item 10), through the internal API and the officer CLI alike."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import CaHarness, openssl

ACCEPTED = ("P-256", "P-384")
# Same sizes as the accepted curves: a size-only check lets them through.
REFUSED = ("secp256k1", "brainpoolP256r1", "brainpoolP384r1", "secp224r1", "secp521r1",
           "prime256v1:explicit")


def _openssl_csr(directory: Path, user_id: str, curve: str) -> Path:
    """A CSR for CN=user_id on `curve`, key and request made by the openssl CLI; the
    `:explicit` variant spells P-256 out as explicit parameters instead of its OID."""
    name, _, encoding = curve.partition(":")
    key, csr = (directory / f"{user_id}-{name}-{encoding}.{ext}" for ext in ("key", "csr"))
    openssl("genpkey", "-algorithm", "EC", "-pkeyopt", f"ec_paramgen_curve:{name}",
            "-pkeyopt", f"ec_param_enc:{encoding or 'named_curve'}", "-out", str(key))
    openssl("req", "-new", "-key", str(key), "-subj", f"/CN={user_id}", "-out", str(csr))
    return csr


class TestCsrCurves:
    """Only P-256 and P-384 keys are certified from a CSR."""

    @pytest.mark.parametrize("curve", ACCEPTED + REFUSED)
    def test_internal_api_R_CERT_8(self, ca: CaHarness, tmp_path: Path, curve: str) -> None:
        """POST /v1/certificates certifies P-256/P-384 keys and answers 400 unsupported_key
        (nothing issued) for any other curve, whatever its size."""
        csr = _openssl_csr(tmp_path, "300001", curve)
        password = ca.acquisition_password("300001")
        status, body = ca.api("POST", "/v1/certificates", json={
            "user_id": "300001", "acquisition_password": password, "csr": csr.read_text()})
        if curve in ACCEPTED:
            assert status == 201, body
        else:
            assert (status, body["error"]) == (400, "unsupported_key"), body
            assert ca.api("GET", "/v1/users/300001/certificates")[1]["certificates"] == []

    @pytest.mark.parametrize("curve", ACCEPTED + REFUSED)
    def test_officer_cli_R_CERT_8(self, ca: CaHarness, tmp_path: Path, curve: str,
                                  capsys: pytest.CaptureFixture[str]) -> None:
        """`sekisho-ca issue --csr` applies the same rule: exit 0 for P-256/P-384, exit 1
        naming the refused curve otherwise."""
        csr, out = _openssl_csr(tmp_path, "300002", curve), tmp_path / "out.pem"
        status = ca.cli("issue", "300002", "--csr", str(csr), "--output", str(out))
        if curve in ACCEPTED:
            assert status == 0
            assert "BEGIN CERTIFICATE" in out.read_text()
        else:
            assert status == 1
            assert "not accepted" in capsys.readouterr().err
            assert not out.exists()
