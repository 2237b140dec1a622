"""The OCSP responder against `openssl ocsp` and hostile input (R-REV-2)."""

from __future__ import annotations

import base64
import os
import socket
import urllib.parse
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from tests.conftest import CaHarness, openssl
from tests.support.servers import http_get

# R-KEY-1: these run with the keys in encrypted files and in a SoftHSM2 token.
pytestmark = [pytest.mark.key_backends, pytest.mark.store_backends]


def _ocsp(ca: CaHarness, *args: str, nonce: bool = True) -> str:
    files = ca.issuer_files()
    result = openssl("ocsp", "-issuer", str(files["g1"]), "-CAfile", str(files["chain"]),
                     "-url", f"{ca.public_url}/ocsp", *args,
                     *([] if nonce else ["-no_nonce"]))
    return result.stdout + result.stderr


def _post(ca: CaHarness, body: bytes, content_type: str = "application/ocsp-request"
          ) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 (loopback test server)
        f"{ca.public_url}/ocsp", data=body, headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _status(der: bytes) -> ocsp.OCSPResponseStatus:
    return ocsp.load_der_ocsp_response(der).response_status


class TestOpensslClient:
    """`openssl ocsp` as the relying party would run it."""

    @pytest.mark.parametrize("nonce", [True, False])
    def test_good_then_revoked_with_reason_R_REV_2(self, ca: CaHarness, tmp_path: Path,
                                                   nonce: bool) -> None:
        """good from the moment of issuance; revoked with time and reason after revocation."""
        serial, leaf = ca.issue_csr("500001", tmp_path)
        out = _ocsp(ca, "-cert", str(leaf), nonce=nonce)
        assert "Response verify OK" in out
        assert f"{leaf}: good" in out
        assert ca.cli("revoke", "--serial", serial, "--reason", "keyCompromise") == 0
        ca.sync()  # what the daemon's 0.25 s poll does
        out = _ocsp(ca, "-cert", str(leaf), nonce=nonce)
        assert "Response verify OK" in out
        assert f"{leaf}: revoked" in out
        assert "Reason: keyCompromise" in out
        assert "Revocation Time" in out

    @pytest.mark.parametrize("nonce", [True, False])
    def test_foreign_serial_unknown_R_REV_2(self, ca: CaHarness, nonce: bool) -> None:
        """A serial we never issued is unknown, never good."""
        out = _ocsp(ca, "-serial", "0x1234567890abcdef", nonce=nonce)
        assert "Response verify OK" in out
        assert ": unknown" in out

    def test_sha256_certid_and_two_certificates_R_REV_2(self, ca: CaHarness,
                                                       tmp_path: Path) -> None:
        """SHA-256 CertIDs and two certificates in one request are answered in order."""
        serial, first = ca.issue_csr("500002", tmp_path)
        _, second = ca.issue_csr("500003", tmp_path)
        ca.cli("revoke", "--serial", serial, "--reason", "superseded")
        ca.sync()
        out = _ocsp(ca, "-sha256", "-cert", str(first), "-cert", str(second))
        assert "Response verify OK" in out
        assert f"{first}: revoked" in out
        assert "Reason: superseded" in out
        assert f"{second}: good" in out

    def test_cached_good_invalidated_by_revocation_R_REV_2(self, ca: CaHarness,
                                                          tmp_path: Path) -> None:
        """A pre-signed 'good' is dropped the moment the certificate is revoked via the API."""
        serial, leaf = ca.issue_csr("500004", tmp_path)
        assert ": good" in _ocsp(ca, "-cert", str(leaf), nonce=False)
        status, _ = ca.api("POST", "/v1/revoke", json={"serial": serial, "reason": "superseded"})
        assert status == 200
        assert ": revoked" in _ocsp(ca, "-cert", str(leaf), nonce=False)

    def test_responder_certificate_renewed_R_REV_2(self, ca: CaHarness, tmp_path: Path) -> None:
        """The 90-day responder certificate is re-issued 30 days before it expires."""
        _, leaf = ca.issue_csr("500005", tmp_path)
        before = ca.runtime.issuers.get("g1").ocsp_certificate
        assert ca.runtime.ocsp.renew_responders() == []
        ca.clock.advance(timedelta(days=61))
        assert ca.runtime.ocsp.renew_responders() == ["g1"]
        after = ca.runtime.issuers.get("g1").ocsp_certificate
        assert after.serial_number != before.serial_number
        assert after.not_valid_after_utc - ca.clock.now() >= timedelta(days=89)
        request = ocsp.OCSPRequestBuilder().add_certificate(
            x509.load_pem_x509_certificate(leaf.read_bytes()),
            ca.runtime.issuers.get("g1").certificate, hashes.SHA1(),  # noqa: S303 (CertID)
        ).build().public_bytes(serialization.Encoding.DER)
        response = ocsp.load_der_ocsp_response(ca.call(ca.runtime.ocsp.respond(request)).der)
        assert response.certificates[0].serial_number == after.serial_number
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD


class TestGet:
    """RFC 5019 GET with HTTP caching headers."""

    def test_get_good_with_cache_headers_R_REV_2(self, ca: CaHarness, tmp_path: Path) -> None:
        """A nonce-less GET is answered with max-age no later than nextUpdate."""
        _, leaf = ca.issue_csr("500006", tmp_path)
        files = ca.issuer_files()
        request = tmp_path / "req.der"
        openssl("ocsp", "-issuer", str(files["g1"]), "-cert", str(leaf), "-no_nonce",
                "-reqout", str(request))
        encoded = urllib.parse.quote(base64.b64encode(request.read_bytes()).decode(), safe="")
        status, headers, der = http_get(f"{ca.public_url}/ocsp/{encoded}")
        assert status == 200
        assert headers["Content-Type"] == "application/ocsp-response"
        response = ocsp.load_der_ocsp_response(der)
        assert response.certificate_status == ocsp.OCSPCertStatus.GOOD
        max_age = int(headers["Cache-Control"].split("max-age=")[1].split(",")[0])
        assert max_age <= (response.next_update_utc - ca.clock.now()).total_seconds()
        assert "Last-Modified" in headers and "ETag" in headers


class TestHostileInput:
    """Bad input never gets a 5xx and never stops the responder (R-REV-2)."""

    @pytest.mark.parametrize(
        "body",
        [b"", os.urandom(200), b"\x30\x82\x01\x00\x30", b"\x30\x03\x02\x01\x01" + b"x" * 10],
    )
    def test_malformed_bodies_R_REV_2(self, ca: CaHarness, body: bytes) -> None:
        """Empty, random, truncated and trailing-garbage bodies get malformedRequest."""
        status, der = _post(ca, body)
        assert status == 200
        assert _status(der) == ocsp.OCSPResponseStatus.MALFORMED_REQUEST

    def test_http_level_faults_R_REV_2(self, ca: CaHarness) -> None:
        """Wrong content type 415, a 10 MB body 413, bad base64 malformed, 100 KB path 4xx."""
        assert _post(ca, b"\x30\x00", "text/plain")[0] == 415
        assert _post(ca, b"\x30" * (10 * 1024 * 1024))[0] == 413
        status, _, der = http_get(f"{ca.public_url}/ocsp/%%%not-base64!!")
        assert (status, _status(der)) == (200, ocsp.OCSPResponseStatus.MALFORMED_REQUEST)
        status, _, _ = http_get(f"{ca.public_url}/ocsp/" + "A" * 100_000)
        assert 400 <= status < 500

    def test_silent_clients_do_not_stop_answers_R_REV_2(self, ca: CaHarness,
                                                       tmp_path: Path) -> None:
        """Clients that connect and close, or send half a request, leave others answered."""
        _, leaf = ca.issue_csr("500007", tmp_path)
        port = ca.config.public_listen.port
        lingering = []
        for index in range(20):
            sock = socket.create_connection(("127.0.0.1", port))
            if index % 2:
                sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n\x30")
                lingering.append(sock)
            else:
                sock.close()
        assert ": good" in _ocsp(ca, "-cert", str(leaf))
        for sock in lingering:
            sock.close()
        assert ": good" in _ocsp(ca, "-cert", str(leaf), nonce=False)
