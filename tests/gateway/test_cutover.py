"""The gateway's side of a re-issuance campaign (R-CUT-1): before the cutover day both old and
new certificates log in and re-acquisition is refused with its opening date; from the day the
old certificate gets the migration page, and the original acquisition password re-acquires."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from policy.clock import FakeClock
from tests.gateway.conftest import GatewayHarness, start_gateway

# The gateway checks dates against the injected clock only (never at the TLS handshake), so
# the timeline runs forward from the CA's creation (the fake clock starts at the real now):
# the old certificate is issued a day later, the boundary follows 9 days after that, the
# cutover day 9 days later, and "today" is the day after the cutover.
START = datetime.now(UTC).replace(microsecond=0)
ISSUED_OLD = START + timedelta(days=1)
BOUNDARY = START + timedelta(days=10)
CUTOVER_DAY = START + timedelta(days=19)
TODAY = START + timedelta(days=20)


@pytest.fixture
def campaign(tmp_path: Path, clock: FakeClock) -> Iterator[GatewayHarness]:
    """A gateway and CA configured with a dated cutover."""
    harness = start_gateway(tmp_path, clock, tables=f"""
[[cutover]]
name = "migration"
issued_before = {BOUNDARY.isoformat()}
effective_at = {CUTOVER_DAY.isoformat()}
""")
    yield harness
    harness.stop()


class TestCutoverAtTheGateway:
    """Walk the notice's timeline through the gateway."""

    async def test_timeline_R_CUT_1(self, campaign: GatewayHarness) -> None:
        """Old works until the day, then shows the migration page; re-acquisition opens then."""
        gw = campaign
        password = gw.add_user("800001")
        original = gw.acquisition_password("800001")
        gw.clock.set(ISSUED_OLD)
        old = gw.acquire("800001", password, original)

        # The day before the cutover: the old certificate logs in; re-acquiring is refused.
        gw.clock.set(CUTOVER_DAY - timedelta(seconds=1))
        async with gw.browser(old) as browser:
            page = await browser.login()
            assert page.status == 200 and page.url == gw.url + "/"
        async with gw.browser() as browser:
            early = await browser.submit("/auth/acquire", "/auth/acquire", {
                "user_id": "800001", "password": password, "acquisition_password": original})
        assert (early.status, early.error) == (409, "acquisition_not_open")

        # The cutover day: the old certificate is refused with the migration page.
        gw.clock.set(TODAY)
        async with gw.browser(old) as browser:
            page = await browser.get("/auth/login")
        assert (page.status, page.error) == (403, "cert_cut_over")

        # Re-acquisition with the original acquisition password, then a normal login.
        new = gw.acquire("800001", password, original, suffix="-new")
        async with gw.browser(new) as browser:
            page = await browser.login()
        assert page.status == 200 and page.url == gw.url + "/"

    async def test_unaffected_certificate_keeps_working_R_CUT_1(
            self, campaign: GatewayHarness) -> None:
        """A certificate issued after the boundary is not touched by the cutover."""
        gw = campaign
        gw.clock.set(BOUNDARY + timedelta(days=1))
        user = gw.enroll("800002")
        gw.clock.set(TODAY)
        async with gw.browser(user) as browser:
            page = await browser.login()
        assert page.status == 200 and page.url == gw.url + "/"
