"""The CA with its keys in a PKCS#11 token (SoftHSM2), checked by independent clients:
openssl for what the token signed, OpenSC's pkcs11-tool for what the token holds (R-KEY-1)."""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from datetime import timedelta
from pathlib import Path

import pkcs11
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca import cli as ca_cli
from policy.clock import FakeClock
from tests.conftest import CaHarness, init_ca, openssl, start_ca, write_config
from tests.support.servers import free_port
from tests.support.softhsm import SoftHsm

# Every test here runs the CA with the pkcs11 backend only.
pytestmark = pytest.mark.parametrize("key_backend", ["pkcs11"])


def _ocsp_request(leaf: Path, issuer: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(leaf.read_bytes())
    issuer_cert = x509.load_pem_x509_certificate(issuer.read_bytes())
    return (ocsp.OCSPRequestBuilder().add_certificate(certificate, issuer_cert, hashes.SHA256())
            .build().public_bytes(serialization.Encoding.DER))


def _post_ocsp(ca: CaHarness, body: bytes) -> bytes:
    request = urllib.request.Request(  # noqa: S310 (loopback test server)
        f"{ca.public_url}/ocsp", data=body,
        headers={"Content-Type": "application/ocsp-request"})
    with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
        return bytes(response.read())


def _prefix(ca: CaHarness) -> str:
    return ca.config.keys.key_label_prefix


class TestIndependentClients:
    """openssl accepts what the token signed; pkcs11-tool sees what the token holds."""

    def test_openssl_verify_crl_and_ocsp_accept_token_signatures(
            self, ca: CaHarness, tmp_path: Path) -> None:
        """R-KEY-1: certificate chain (root P-384 and g1 in the token), CRL signature and a
        nonce OCSP response (responder key in the token) all verify with openssl."""
        serial, leaf = ca.issue_csr("700001", tmp_path)
        files = ca.issuer_files()
        verified = openssl("verify", "-CAfile", str(files["root"]), "-untrusted",
                           str(files["g1"]), str(leaf))
        assert f"{leaf}: OK" in verified.stdout
        assert ca.cli("revoke", "--serial", serial, "--reason", "keyCompromise") == 0
        ca.sync()
        crl = tmp_path / "g1.crl"
        assert ca.cli("crl", "--generation", "g1", "--output", str(crl)) == 0
        checked = openssl("crl", "-inform", "DER", "-in", str(crl), "-noout", "-verify",
                          "-CAfile", str(files["chain"]))
        assert "verify OK" in checked.stdout + checked.stderr
        answered = openssl("ocsp", "-issuer", str(files["g1"]), "-CAfile", str(files["chain"]),
                           "-url", f"{ca.public_url}/ocsp", "-cert", str(leaf))
        out = answered.stdout + answered.stderr
        assert "Response verify OK" in out
        assert f"{leaf}: revoked" in out
        assert "nonce" not in out.lower()  # no "WARNING: no nonce in response"

    def test_pkcs11_tool_lists_the_keys_as_never_extractable(
            self, ca: CaHarness, softhsm: SoftHsm) -> None:
        """R-KEY-1: a second, independent PKCS#11 client sees root, g1 and g1-ocsp as private
        key objects that are sensitive and never extractable."""
        listed = softhsm.pkcs11_tool("--login", "--pin", softhsm.pin, "--list-objects",
                                     "--type", "privkey")
        assert listed.returncode == 0, listed.stderr
        blocks = listed.stdout.split("Private Key Object")
        ours = {label: block for block in blocks for label in ("root", "g1", "g1-ocsp")
                if f"label:      {_prefix(ca)}{label}\n" in block}
        assert set(ours) == {"root", "g1", "g1-ocsp"}
        for block in ours.values():
            assert "sensitive" in block and "never extractable" in block


class TestUnderLoad:
    """Nonce OCSP and CRL signing through the token at the same time (bounded load)."""

    def test_nonce_ocsp_and_crl_signing_concurrently(self, ca: CaHarness,
                                                     tmp_path: Path) -> None:
        """R-KEY-1: 200 nonce requests from 8 threads while CRLs are re-signed: every answer
        is successful, echoes its own nonce and verifies with the responder's key; every
        CRL verifies with g1's key."""
        from concurrent.futures import ThreadPoolExecutor

        from cryptography.hazmat.primitives.asymmetric import ec

        _, leaf_path = ca.issue_csr("700040", tmp_path)
        files = ca.issuer_files()
        leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
        g1 = x509.load_pem_x509_certificate(files["g1"].read_bytes())
        responder_key = x509.load_pem_x509_certificate(
            files["g1-ocsp"].read_bytes()).public_key()

        def ask(_: int) -> tuple[bytes, ocsp.OCSPResponse]:
            nonce = os.urandom(16)
            request = ocsp.OCSPRequestBuilder().add_certificate(
                leaf, g1, hashes.SHA256()).add_extension(
                x509.OCSPNonce(nonce), critical=False).build()
            return nonce, ocsp.load_der_ocsp_response(
                _post_ocsp(ca, request.public_bytes(serialization.Encoding.DER)))

        with ThreadPoolExecutor(8) as pool:
            asked = pool.map(ask, range(200), timeout=120)
            crls = [ca.call(ca.runtime.crls.publish("g1")) for _ in range(5)]
            answers = list(asked)
        for nonce, answer in answers:
            assert answer.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
            assert answer.certificate_status == ocsp.OCSPCertStatus.GOOD
            echoed = answer.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
            assert echoed == nonce
            responder_key.verify(answer.signature, answer.tbs_response_bytes,  # type: ignore[call-arg, union-attr]
                                 ec.ECDSA(hashes.SHA256()))
        for published in crls:
            assert x509.load_der_x509_crl(published.der).is_signature_valid(g1.public_key())  # type: ignore[arg-type]


class TestKeyCommands:
    """`keys list` and `keys check`, the ceremony and monitoring commands."""

    def test_keys_list_shows_labels_algorithms_and_custody(
            self, ca: CaHarness, capsys: pytest.CaptureFixture[str]) -> None:
        """R-KEY-1: each key's label, algorithm and CKA_EXTRACTABLE=false."""
        assert ca.cli("keys", "list") == 0
        out = capsys.readouterr().out
        rows = {line.split()[0]: line for line in out.splitlines()[2:] if line.strip()}
        assert set(rows) >= {"root", "g1", "g1-ocsp"}
        assert " p384 " in rows["root"] and " p256 " in rows["g1"]
        for row in rows.values():
            assert "CKA_EXTRACTABLE=false" in row and "CKA_SENSITIVE=true" in row
            assert "CKA_NEVER_EXTRACTABLE=true" in row and "generated in token" in row

    def test_keys_check_ok_then_critical_when_a_key_is_gone(
            self, ca: CaHarness, softhsm: SoftHsm, capsys: pytest.CaptureFixture[str]) -> None:
        """R-KEY-1: 0 (OK) when every key signs and matches its certificate; 2 (CRITICAL)
        naming the key when one is missing from the token."""
        assert ca.cli("keys", "check") == 0
        out = capsys.readouterr().out
        assert out.startswith("KEYS OK - 3 keys sign and verify: root (token), g1 (token), "
                              "g1-ocsp (token)")
        deleted = softhsm.pkcs11_tool("--login", "--pin", softhsm.pin, "--delete-object",
                                      "--type", "privkey", "--label", f"{_prefix(ca)}g1-ocsp")
        assert deleted.returncode == 0, deleted.stderr
        assert ca.cli("keys", "check") == 2
        out = capsys.readouterr().out
        assert out.startswith("KEYS CRITICAL - g1-ocsp: key ")
        assert "not found in token" in out


class TestStartUpFailures:
    """A wrong PIN, a missing module, a missing key: one clear line, non-zero exit."""

    def _serve(self, ca: CaHarness, config: Path, env: dict[str, str] | None = None,
               ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "ca", "--config", str(config), "serve"],
            capture_output=True, text=True, timeout=60, check=False,
            env={**os.environ, **(env or {})}, cwd=ca.directory,
        )

    def _config_with(self, ca: CaHarness, old: str, new: str) -> Path:
        text = ca.config_path.read_text()
        assert old in text
        path = ca.directory / "broken.toml"
        path.write_text(text.replace(old, new))
        return path

    def test_wrong_pin(self, ca: CaHarness, softhsm: SoftHsm) -> None:
        """R-KEY-1: the token refuses the PIN (given by the variable, which wins over the
        file); the PIN itself is not printed."""
        result = self._serve(ca, ca.config_path, {"SEKISHO_TEST_UNSET_PIN": "99999999wrong"})
        assert result.returncode == 1
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert "refused the PIN" in lines[0]
        assert "99999999wrong" not in result.stderr + result.stdout

    def test_missing_module(self, ca: CaHarness, softhsm: SoftHsm) -> None:
        """R-KEY-1: the module path does not exist."""
        config = self._config_with(ca, softhsm.module, "/usr/lib/nothing/libmissing.so")
        result = self._serve(ca, config)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert "cannot load the PKCS#11 module /usr/lib/nothing/libmissing.so" in line

    def test_missing_key_label(self, ca: CaHarness) -> None:
        """R-KEY-1: the token has no key under the configured label."""
        config = self._config_with(ca, f'key_label_prefix = "{_prefix(ca)}"',
                                   'key_label_prefix = "absent-"')
        result = self._serve(ca, config)
        assert result.returncode == 1
        (line,) = result.stderr.strip().splitlines()
        assert "key 'absent-g1' not found in token 'sekisho-test'" in line


class TestResponderKeysInFiles:
    """`ocsp_keys = "file"`: CA keys in the token, responder keys as encrypted files."""

    def test_responder_key_is_a_file_and_renews(self, tmp_path: Path, softhsm: SoftHsm,
                                                key_backend: str, clock: FakeClock) -> None:
        """R-KEY-1: only g1-ocsp.key.pem is on disk; the token holds root and g1; OCSP
        answers verify with openssl and a renewed responder gets a fresh file key."""
        prefix = f"ocspfile{os.getpid()}-"
        config_path = init_ca(tmp_path, clock, keys_extra=softhsm.keys_config(
            tmp_path, prefix, ocsp_keys="file"))
        keys_dir = tmp_path / "var" / "keys"
        assert sorted(p.name for p in keys_dir.glob("*.key.pem")) == ["g1-ocsp.key.pem"]
        listed = softhsm.pkcs11_tool("--login", "--pin", softhsm.pin, "--list-objects",
                                     "--type", "privkey")
        labels = {line.split(":", 1)[1].strip() for line in listed.stdout.splitlines()
                  if line.strip().startswith("label:") and prefix in line}
        assert labels == {f"{prefix}root", f"{prefix}g1"}
        ca = start_ca(config_path, clock)
        try:
            _, leaf = ca.issue_csr("700030", tmp_path)
            files = ca.issuer_files()
            answered = openssl("ocsp", "-issuer", str(files["g1"]), "-CAfile",
                               str(files["chain"]), "-url", f"{ca.public_url}/ocsp",
                               "-cert", str(leaf))
            assert "Response verify OK" in answered.stdout + answered.stderr
            assert ca.cli("keys", "import", "g1-ocsp") == 1  # it is meant to stay a file
            assert (keys_dir / "g1-ocsp.key.pem").exists()
            before = (keys_dir / "g1-ocsp.key.pem").read_bytes()
            ca.clock.advance(timedelta(days=61))
            ca.time_passed()
            assert (keys_dir / "g1-ocsp.key.pem").read_bytes() != before
            assert ca.cli("keys", "check") == 0
        finally:
            ca.stop()


class TestConfiguration:
    """The PIN never goes in the config file."""

    def test_pin_in_config_refused(self, ca: CaHarness, capsys: pytest.CaptureFixture[str],
                                   ) -> None:
        """R-KEY-1: a `pin` key in [keys] stops the CA with one line naming the fix."""
        text = ca.config_path.read_text().replace('backend = "pkcs11"',
                                                  'backend = "pkcs11"\npin = "123456"')
        ca.config_path.write_text(text)
        assert ca.cli("keys", "list") == 1
        err = capsys.readouterr().err
        assert "never goes in the config file" in err and "123456" not in err


class TestTokenUnavailable:
    """The token stops signing: issuance fails closed, OCSP answers from what it pre-signed."""

    def test_issuance_fails_closed_and_ocsp_serves_presigned_until_next_update(
            self, ca: CaHarness, softhsm: SoftHsm, tmp_path: Path) -> None:
        """R-KEY-1: with the PIN changed under the running CA and its sessions lost, a new
        certificate gets 503 signing_unavailable and nothing is issued; a nonce-less request
        seen before gets the same pre-signed response, past its half-life, until nextUpdate;
        a new or nonce request gets tryLater. With the PIN back, issuance works again."""
        _, leaf = ca.issue_csr("700010", tmp_path)
        files = ca.issuer_files()
        request = _ocsp_request(leaf, files["g1"])
        presigned = _post_ocsp(ca, request)
        assert ocsp.load_der_ocsp_response(presigned).certificate_status == (
            ocsp.OCSPCertStatus.GOOD)
        password = ca.acquisition_password("700011")
        new_pin = "changed-" + softhsm.pin
        assert softhsm.pkcs11_tool("--login", "--pin", softhsm.pin, "--change-pin",
                                   "--new-pin", new_pin).returncode == 0
        try:
            ca.runtime.hierarchy.keystore.token.reset_sessions()  # type: ignore[attr-defined]
            pkcs11.lib(softhsm.module).reinitialize()  # as after the token was pulled
            status, body = ca.acquire("700011", password)
            assert (status, body["error"]) == (503, "signing_unavailable")
            records = ca.call(ca.runtime.store.list_certificates(user_id="700011"))
            assert [r for r in records if r.state == "issued"] == []
            ca.clock.advance(timedelta(minutes=45))  # past half of the 1 h validity
            assert _post_ocsp(ca, request) == presigned
            with_nonce = ocsp.OCSPRequestBuilder().add_certificate(
                x509.load_pem_x509_certificate(leaf.read_bytes()),
                x509.load_pem_x509_certificate(files["g1"].read_bytes()), hashes.SHA256(),
            ).add_extension(x509.OCSPNonce(os.urandom(16)), critical=False).build()
            refused = ocsp.load_der_ocsp_response(_post_ocsp(
                ca, with_nonce.public_bytes(serialization.Encoding.DER)))
            assert refused.response_status == ocsp.OCSPResponseStatus.TRY_LATER
            ca.clock.advance(timedelta(minutes=20))  # past nextUpdate
            expired = ocsp.load_der_ocsp_response(_post_ocsp(ca, request))
            assert expired.response_status == ocsp.OCSPResponseStatus.TRY_LATER
        finally:
            restored = softhsm.pkcs11_tool("--login", "--pin", new_pin, "--change-pin",
                                           "--new-pin", softhsm.pin)
            assert restored.returncode == 0, restored.stderr
        pkcs11.lib(softhsm.module).reinitialize()  # the token is back
        status, body = ca.acquire("700011", password)
        assert status == 201, body
        fresh = ocsp.load_der_ocsp_response(_post_ocsp(ca, request))
        assert fresh.certificate_status == ocsp.OCSPCertStatus.GOOD


class TestImport:
    """The migration path of a file-key CA: `keys import` moves each key into the token."""

    def test_file_ca_moves_into_the_token(self, tmp_path: Path, softhsm: SoftHsm,
                                          key_backend: str, clock: FakeClock) -> None:
        """R-KEY-1: after `keys import` of root, g1 and g1-ocsp the key files are gone, the
        CA runs from the token with the same certificates, and openssl verifies a new leaf."""
        config_path = init_ca(tmp_path, clock)  # a file-key CA
        keys_dir = tmp_path / "var" / "keys"
        root_before = (keys_dir / "root.crt.pem").read_bytes()
        prefix = f"imp{os.getpid()}-"
        write_config(tmp_path, public_port=free_port(), internal_port=free_port(),
                     keys_extra=softhsm.keys_config(tmp_path, prefix))
        for label in ("root", "g1", "g1-ocsp"):
            assert ca_cli.main(["--config", str(config_path), "keys", "import", label],
                               clock=clock) == 0
            assert not (keys_dir / f"{label}.key.pem").exists()
        assert ca_cli.main(["--config", str(config_path), "keys", "check"], clock=clock) == 0
        ca = start_ca(config_path, clock)
        try:
            assert (keys_dir / "root.crt.pem").read_bytes() == root_before
            _, leaf = ca.issue_csr("700020", tmp_path)
            files = ca.issuer_files()
            verified = openssl("verify", "-CAfile", str(files["root"]), "-untrusted",
                               str(files["g1"]), str(leaf))
            assert f"{leaf}: OK" in verified.stdout
        finally:
            ca.stop()
