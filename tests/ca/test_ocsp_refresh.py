"""Re-signing the cached OCSP answers (R-REV-2, issue 13): every node keeps its own cache and
re-signs it in the background off the event loop (a worker thread), and an answer re-signed
while the certificate was revoked is never put back (README, "CA cluster")."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca import ocsp_service
from tests.conftest import CaHarness


def _request(ca: CaHarness, leaf_path: Path, *, nonce: bool = False) -> bytes:
    leaf = x509.load_pem_x509_certificate(leaf_path.read_bytes())
    builder = ocsp.OCSPRequestBuilder().add_certificate(
        leaf, ca.runtime.issuers.get("g1").certificate, hashes.SHA1())  # noqa: S303 (CertID)
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(b"n" * 16), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


def _answer(ca: CaHarness, request: bytes) -> ocsp.OCSPResponse:
    return ocsp.load_der_ocsp_response(ca.call(ca.runtime.ocsp.respond(request)).der)


class _HeldSigning:
    """build_response held in worker threads until released; the loop's own signing (no
    running loop in a worker thread) is left alone."""

    def __init__(self) -> None:
        self.entered, self.release = threading.Event(), threading.Event()
        self._real = ocsp_service.build_response

    def __call__(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # a worker thread
            self.entered.set()
            assert self.release.wait(30), "never released"
        return self._real(*args, **kwargs)


class TestRefreshOffTheLoop:
    """The background re-signing of cached answers."""

    def test_refresh_signs_in_a_worker_thread_while_the_loop_answers_R_REV_2(
            self, ca: CaHarness, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        """While the cached answers are re-signed, the loop keeps answering; the re-signed
        answer replaces the cached one (a later thisUpdate)."""
        _, leaf = ca.issue_csr("510001", tmp_path)
        request = _request(ca, leaf)
        first = _answer(ca, request)
        ca.clock.advance(ca.config.ocsp_response_validity / 2)
        held = _HeldSigning()
        monkeypatch.setattr(ocsp_service, "build_response", held)
        refresh = asyncio.run_coroutine_threadsafe(ca.runtime.ocsp.refresh_cache_off_loop(),
                                                   ca.loop.loop)
        assert held.entered.wait(10)
        # The loop is free: a nonce request is signed and answered meanwhile.
        fresh = _answer(ca, _request(ca, leaf, nonce=True))
        assert fresh.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert not refresh.done()
        held.release.set()
        assert refresh.result(10) == 1
        again = _answer(ca, request)
        assert again.certificate_status == ocsp.OCSPCertStatus.GOOD
        assert again.this_update_utc > first.this_update_utc

    def test_revocation_during_refresh_is_never_overwritten_R_REV_2(
            self, ca: CaHarness, tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
        """A revocation while the worker thread re-signs a cached "good": the re-signed
        "good" is discarded, and the next answer from the same request says revoked."""
        serial, leaf = ca.issue_csr("510002", tmp_path)
        request = _request(ca, leaf)
        assert _answer(ca, request).certificate_status == ocsp.OCSPCertStatus.GOOD
        ca.clock.advance(ca.config.ocsp_response_validity / 2)
        held = _HeldSigning()
        monkeypatch.setattr(ocsp_service, "build_response", held)
        refresh = asyncio.run_coroutine_threadsafe(ca.runtime.ocsp.refresh_cache_off_loop(),
                                                   ca.loop.loop)
        assert held.entered.wait(10)
        status, body = ca.api("POST", "/v1/revoke",
                              json={"serial": serial, "reason": "keyCompromise"})
        assert status == 200, body
        held.release.set()
        assert refresh.result(10) == 0
        assert _answer(ca, request).certificate_status == ocsp.OCSPCertStatus.REVOKED
