"""R-CERT-4: a delivered PKCS#12's MAC, which is what rejects a wrong password, costs a guesser
as many iterations as its key bag's PBKDF2 (issue 10 item 6), and the file still opens in
OpenSSL 3 (no -legacy), NSS (Firefox's library, through pk12util) and Python's cryptography."""

from __future__ import annotations

import base64
import hmac
import re
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from asn1crypto import pkcs12 as asn1_pkcs12
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

from ca.pkcs12 import (
    _native_mac_kdf,
    build_pkcs12,
    generate_private_key_der,
    mac_iterations,
    pkcs12_mac_key,
)
from policy.clock import FakeClock
from tests.conftest import CaHarness, init_ca, openssl, start_ca

ROUNDS = 50_000  # well above cryptography's fixed 2,048 MAC iterations, still quick to test


@pytest.fixture
def costly_ca(tmp_path: Path, clock: FakeClock) -> Iterator[CaHarness]:
    """A CA whose PKCS#12 key bags use 50,000 PBKDF2 rounds."""
    harness = start_ca(init_ca(tmp_path, clock, kdf_rounds=ROUNDS), clock)
    yield harness
    harness.stop()


def _delivered(ca: CaHarness, directory: Path) -> tuple[str, Path]:
    password = ca.acquisition_password("400001")
    status, body = ca.acquire("400001", password)
    assert status == 201, body
    path = directory / "400001.p12"
    path.write_bytes(base64.b64decode(body["pkcs12"]))
    return password, path


def _nss_import(directory: Path, p12: Path, password: str) -> subprocess.CompletedProcess[str]:
    """pk12util -i into a throwaway NSS database (empty database password)."""
    database = directory / "nssdb"
    if not database.exists():
        database.mkdir()
        subprocess.run(["certutil", "-N", "-d", f"sql:{database}", "--empty-password"],
                       check=True, capture_output=True, timeout=30)
    return subprocess.run(["pk12util", "-i", str(p12), "-d", f"sql:{database}",
                           "-W", password, "-K", ""],
                          capture_output=True, text=True, timeout=120, check=False)


class TestPkcs12Mac:
    """The MAC iteration count is at least the key bag's, and every client still opens it."""

    def test_openssl_reports_mac_iterations_equal_to_the_bags(
        self, costly_ca: CaHarness, tmp_path: Path
    ) -> None:
        """OpenSSL 3 (default provider, no -legacy) verifies the MAC, which is SHA-256 at
        50,000 iterations like both PBKDF2 bags; a wrong password fails the MAC check."""
        password, path = _delivered(costly_ca, tmp_path)
        info = openssl("pkcs12", "-info", "-in", str(path), "-passin", f"pass:{password}",
                       "-noout")
        text = info.stdout + info.stderr
        assert f"MAC: sha256, Iteration {ROUNDS}" in text, text
        bags = [int(n) for n in re.findall(r"PBKDF2, AES-256-CBC, Iteration (\d+)", text)]
        assert bags and all(n == ROUNDS for n in bags), text
        assert mac_iterations(path.read_bytes()) >= max(bags)
        wrong = openssl("pkcs12", "-info", "-in", str(path), "-passin", "pass:wrong",
                        "-noout", check=False)
        assert wrong.returncode != 0
        assert "mac verify" in wrong.stderr.lower()

    def test_nss_pk12util_imports_it(self, costly_ca: CaHarness, tmp_path: Path) -> None:
        """NSS (Firefox) imports the file with the acquisition password into a fresh database
        and refuses a wrong password."""
        password, path = _delivered(costly_ca, tmp_path)
        assert _nss_import(tmp_path, path, "wrong-password").returncode != 0
        result = _nss_import(tmp_path, path, password)
        assert result.returncode == 0, result.stdout + result.stderr
        listing = subprocess.run(["certutil", "-L", "-d", f"sql:{tmp_path / 'nssdb'}"],
                                 capture_output=True, text=True, timeout=30, check=True)
        assert "400001" in listing.stdout

    def test_cryptography_loads_it(self, costly_ca: CaHarness, tmp_path: Path) -> None:
        """Python's cryptography opens it with the password and refuses another."""
        password, path = _delivered(costly_ca, tmp_path)
        key, leaf, chain = pkcs12.load_key_and_certificates(path.read_bytes(),
                                                            password.encode())
        assert key is not None and leaf is not None and len(chain) == 2
        with pytest.raises(ValueError, match="Invalid password"):
            pkcs12.load_key_and_certificates(path.read_bytes(), b"wrong")

    def test_non_ascii_password(self, tmp_path: Path) -> None:
        """A renewed file is protected by the human-chosen login password, which may hold
        Japanese: the MAC's BMPString encoding matches what OpenSSL and NSS derive."""
        password = "関所パスワード2026"
        key_der = generate_private_key_der("p256")
        key = serialization.load_der_private_key(key_der, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "400002")])
        now = datetime.now(UTC)
        leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(minutes=1))
                .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
        p12 = tmp_path / "kanji.p12"
        p12.write_bytes(build_pkcs12(key_der, leaf.public_bytes(serialization.Encoding.DER),
                                     [], password, ROUNDS, "kanji"))
        info = openssl("pkcs12", "-info", "-in", str(p12), "-passin", f"pass:{password}",
                       "-noout")
        assert f"MAC: sha256, Iteration {ROUNDS}" in info.stdout + info.stderr
        result = _nss_import(tmp_path, p12, password)
        assert result.returncode == 0, result.stdout + result.stderr
        assert pkcs12.load_key_and_certificates(p12.read_bytes(), password.encode())[0]


class TestMacKdf:
    """The PKCS#12 KDF of RFC 7292 Appendix B, as OpenSSL derives it."""

    @pytest.mark.parametrize("password", ["a", "Acquire-2026-x", "関所パスワード2026", "😀x1"])
    @pytest.mark.parametrize("native", [True, False])
    def test_matches_the_mac_cryptography_writes(self, password: str, native: bool) -> None:
        """Recomputing the MAC of a file cryptography wrote (its salt, its 2,048 iterations)
        gives its digest, with OpenSSL's C function and with the pure-Python fallback."""
        if native and _native_mac_kdf() is None:
            pytest.skip("no system libcrypto")
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "k")])
        now = datetime.now(UTC)
        leaf = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
                .public_key(key.public_key()).serial_number(1).not_valid_before(now)
                .not_valid_after(now + timedelta(days=1)).sign(key, hashes.SHA256()))
        encryption = (serialization.PrivateFormat.PKCS12.encryption_builder().kdf_rounds(2048)
                      .key_cert_algorithm(pkcs12.PBES.PBESv2SHA256AndAES256CBC)
                      .hmac_hash(hashes.SHA256()).build(password.encode()))
        pfx = asn1_pkcs12.Pfx.load(
            pkcs12.serialize_key_and_certificates(b"k", key, leaf, None, encryption))
        mac_data = pfx["mac_data"]
        mac_key = pkcs12_mac_key(password, mac_data["mac_salt"].native,
                                 mac_data["iterations"].native, native=native)
        digest = hmac.new(mac_key, pfx["auth_safe"]["content"].contents, "sha256").digest()
        assert digest == mac_data["mac"]["digest"].native
