"""R-CERT-6 under concurrency: ten renewals of one certificate at once give exactly one new
certificate, through the CA's internal API and through the gateway's renewal form (issue 10
item 2). Both drive the real daemons on loopback with real clients."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest

from policy.clock import FakeClock
from tests.conftest import CaHarness
from tests.gateway.conftest import GatewayHarness, start_gateway

CONCURRENT = 10


@pytest.fixture
def gw(tmp_path: Path, clock: FakeClock) -> Iterator[GatewayHarness]:
    """A running CA + demo backend + gateway with real TLS on loopback."""
    harness = start_gateway(tmp_path, clock)
    yield harness
    harness.stop()


def _issued_rows(ca: CaHarness, user_id: str) -> list[str]:
    return [r.serial for r in ca.call(ca.runtime.store.certificates_of(user_id))]


class TestRenewalRace:
    """Concurrent renewals see each other's intents, as concurrent acquisitions do."""

    def test_ten_concurrent_api_renewals_issue_one_certificate_R_CERT_6(
            self, ca: CaHarness) -> None:
        """Ten POST /v1/renew of one serial at once: one 201, nine 409, one new row."""
        status, body = ca.acquire("700001", ca.acquisition_password("700001"))
        assert status == 201, body
        ca.clock.advance(timedelta(days=350))

        async def renew(session: aiohttp.ClientSession) -> tuple[int, dict]:
            async with session.post(
                ca.internal_url + "/v1/renew",
                json={"serial": body["serial"], "password": "Login-pass1"},
                headers={"Authorization": f"Bearer {ca.token}"},
            ) as response:
                return response.status, await response.json()

        async def burst() -> list[tuple[int, dict]]:
            async with aiohttp.ClientSession() as session:
                return await asyncio.gather(*(renew(session) for _ in range(CONCURRENT)))

        answers = ca.call(burst())
        created = [answer for status, answer in answers if status == 201]
        refused = {answer["error"] for status, answer in answers if status != 201}
        assert len(created) == 1, answers
        assert refused <= {"attempt_in_progress", "not_newest_certificate"}, refused
        serials = _issued_rows(ca, "700001")
        assert serials == [body["serial"], created[0]["serial"]]
        assert base64.b64decode(created[0]["pkcs12"])

    def test_ten_concurrent_gateway_renewals_issue_one_certificate_R_CERT_6(
            self, gw: GatewayHarness) -> None:
        """Ten renewal forms sent at once with the certificate and the right password: one
        download page; the others are refused on the form; the store holds one new row."""
        user = gw.enroll("700002")
        gw.clock.set(user.not_after - timedelta(days=10))

        async def renew() -> tuple[int, str | None, str]:
            async with gw.browser(user) as browser:
                page = await browser.submit("/auth/renew", "/auth/renew",
                                            {"password": user.password})
                return page.status, page.error, page.url

        async def burst() -> list[tuple[int, str | None, str]]:
            return await asyncio.gather(*(renew() for _ in range(CONCURRENT)))

        answers = gw.run(burst())
        ready = [a for a in answers if a[2] == gw.url + "/auth/download"]
        assert len(ready) == 1, answers
        assert all(status < 500 for status, _, _ in answers), answers
        assert len(_issued_rows(gw.ca, "700002")) == 2
