"""Revocation at the gateway: the CA's feed, OCSP, CRL, cached answers, fail closed (R-GW-2)."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from gateway.revocation_client import Status, _BadAnswer, verify_ocsp_response
from gateway.state import REVOCATION, SESSIONS
from tests.gateway.conftest import GatewayHarness, wait_closed_by_server


async def _wait_for(predicate, seconds: float) -> float:  # type: ignore[no-untyped-def]
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        if await predicate():
            return time.monotonic() - start
        await asyncio.sleep(0.05)
    raise AssertionError(f"not within {seconds} s")


class TestRevocationPropagation:
    """A revocation bites within 2 s, for live sessions and new connections."""

    async def test_revoke_by_officer_cli_ends_live_session_within_2s_R_GW_2(
            self, gw: GatewayHarness) -> None:
        """`sekisho-ca revoke` (another store connection, like another process) -> 403 < 2 s."""
        user = gw.enroll("400001")
        async with gw.browser(user) as browser:
            await browser.login()
            assert (await browser.get("/trade/forward")).status == 200
            code = await asyncio.to_thread(gw.ca.cli, "revoke", "--serial", user.serial,
                                           "--reason", "keyCompromise")
            assert code == 0

            async def refused() -> bool:
                page = await browser.get("/trade/forward")
                return page.status == 403 and page.error == "cert_revoked"

            elapsed = await _wait_for(refused, 5)
            assert elapsed < 2.0
        assert gw.run(gw.app[SESSIONS].active_for_user("400001")) is None
        async with gw.browser(user) as fresh:
            page = await fresh.get("/auth/login")
            assert page.status == 403 and page.error == "cert_revoked"

    async def test_revoked_before_gateway_saw_it_refused_by_ocsp_R_GW_2(
            self, gw: GatewayHarness) -> None:
        """A certificate revoked while the feed was not listening is refused through OCSP."""
        user = gw.enroll("400002")
        status, _ = gw.ca.api("POST", "/v1/revoke", json={"serial": user.serial,
                                                            "reason": "superseded"})
        assert status == 200
        gw.app[REVOCATION]._revoked_live.clear()  # as if the event had been missed
        gw.app[REVOCATION]._answers.clear()
        async with gw.browser(user) as browser:
            page = await browser.get("/auth/login")
            assert page.status == 403 and page.error == "cert_revoked"

    async def test_websocket_closed_on_revocation_R_GW_2(self, gw: GatewayHarness) -> None:
        """A live WebSocket relay of a revoked certificate's session is closed (1008)."""
        user = gw.enroll("400003")
        async with gw.browser(user) as browser:
            await browser.login()
            assert browser.session is not None
            async with browser.session.ws_connect(gw.url + "/ws/quotes") as ws:
                assert (await ws.receive_json(timeout=5))
                gw.ca.api("POST", "/v1/revoke", json={"serial": user.serial,
                                                       "reason": "keyCompromise"})
                start = time.monotonic()
                await wait_closed_by_server(ws)
                assert time.monotonic() - start < 2.0
                assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION


class TestCaDown:
    """R-GW-2: answers within their nextUpdate are used while the CA is down, then fail closed."""

    async def test_cached_answers_then_fail_closed_R_GW_2(self, gw: GatewayHarness) -> None:
        """Past the 5-minute TTL the cached OCSP answer (nextUpdate 1 h) still serves; after
        nextUpdate every request gets the 503 page, for new connections too."""
        user = gw.enroll("400010")
        revocation = gw.app[REVOCATION]
        async with gw.browser(user) as browser:
            await browser.login()
            gw.stop_ca()

            async def lost() -> bool:
                return not revocation.following

            await _wait_for(lost, 5)
            gw.clock.advance(timedelta(minutes=10))
            page = await browser.get("/trade/forward")
            assert page.status == 200
            gw.clock.advance(timedelta(minutes=51))
            page = await browser.get("/trade/forward")
            assert page.status == 503 and page.error == "revocation_unavailable"
        async with gw.browser(user) as fresh:
            assert (await fresh.get("/auth/login")).status == 503

    async def test_crl_fallback_when_ocsp_fails_R_GW_2(self, gw: GatewayHarness,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
        """With OCSP broken the CRL answers (good, then revoked)."""
        user = gw.enroll("400011")
        revocation = gw.app[REVOCATION]

        async def broken(*_args: object) -> None:
            raise _BadAnswer("OCSP broken for this test")

        monkeypatch.setattr(revocation, "_ask_ocsp", broken)
        async with gw.browser(user) as browser:
            assert (await browser.login()).status == 200
            answer = revocation._answers[user.fingerprint]
            assert answer.source == "crl" and answer.status is Status.GOOD
            gw.ca.api("POST", "/v1/revoke", json={"serial": user.serial,
                                                   "reason": "keyCompromise"})
            await asyncio.sleep(0.1)
            revocation._revoked_live.clear()
            revocation._answers.clear()
            revocation._crls.clear()
            page = await browser.get("/trade/forward")
            assert page.status == 403 and page.error == "cert_revoked"
            assert revocation._answers[user.fingerprint].source == "crl"


class TestOcspResponseChecks:
    """The gateway checks the OCSP response it gets (RFC 6960 §3.2)."""

    async def test_tampered_response_rejected_R_GW_2(self, gw: GatewayHarness) -> None:
        """A real answer verifies; with one flipped signature bit, or for another cert, not."""
        user = gw.enroll("400020")
        other = gw.enroll("400021")
        cert = x509.load_pem_x509_certificate(user.cert_file.read_bytes())
        issuer = x509.load_pem_x509_certificate(gw.ca.issuer_files()["g1"].read_bytes())
        request = (ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
                   .build().public_bytes(serialization.Encoding.DER))
        async with aiohttp.ClientSession() as session, session.post(
                gw.ca.public_url + "/ocsp", data=request,
                headers={"Content-Type": "application/ocsp-request"}) as response:
            der = await response.read()
        now = gw.clock.now()
        assert verify_ocsp_response(der, cert, issuer, now).status is Status.GOOD
        tampered = bytearray(der)
        tampered[-5] ^= 0x01
        with pytest.raises(_BadAnswer):
            verify_ocsp_response(bytes(tampered), cert, issuer, now)
        other_cert = x509.load_pem_x509_certificate(other.cert_file.read_bytes())
        with pytest.raises(_BadAnswer):
            verify_ocsp_response(der, other_cert, issuer, now)
        with pytest.raises(_BadAnswer):
            verify_ocsp_response(der, cert, issuer, now + timedelta(hours=2))
        with pytest.raises(_BadAnswer):
            verify_ocsp_response(b"junk", cert, issuer, now)
