"""The anonymous acquisition form: who may test or lock which password (issue 10 item 3,
issue 15 item 7; R-CERT-5, R-LOCK-1, R-LOCK-2).

Order of checks: per-address throttle -> acquisition password at the CA (counted, locked
there; a single-use ticket) -> login password at the gateway (counted) -> issuance with the
ticket. A client without the acquisition password reaches neither the login password's
check nor its lock, and the form's answer is the same whichever secret was wrong.
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

import pytest

from gateway.store import UserBackend
from gateway.throttle import AddressThrottle, address_key
from policy.clock import FakeClock
from tests.gateway.conftest import (
    BOTH_STORES,
    GOOD_PASSWORD,
    GatewayHarness,
    Page,
    start_gateway,
)


def _comparable(page: Page) -> tuple[int, str | None, str]:
    """Status, error code and the page without its per-request tokens and the user ID the
    form gives back."""
    text = re.sub(r'name="csrf" value="[^"]+"', "", page.text)
    text = re.sub(r'name="user_id" value="[^"]*"', "", text)
    text = re.sub(r'nonce="[^"]+"', "", text)
    return page.status, page.error, text


async def _submit(browser: Any, user_id: str, password: str, acquisition: str) -> Page:
    page: Page = await browser.submit("/auth/acquire", "/auth/acquire", {
        "user_id": user_id, "password": password, "acquisition_password": acquisition})
    return page


class TestOrderOfChecks:
    """The acquisition password first, at the CA; the login password only after it."""

    async def test_anonymous_client_cannot_lock_login_password(self, gw: GatewayHarness,
                                                               ) -> None:
        """Ten tries with a wrong acquisition password and wrong login passwords leave the
        login password unlocked and uncounted; the user still logs in with the certificate."""
        user = gw.enroll("530001")
        async with gw.browser() as browser:
            for index in range(10):
                page = await _submit(browser, "530001", f"wrong-pass{index}", "guess123456")
                assert page.status == 401 and page.error == "acquisition_bad_credentials"
        stored = gw.run(gw.users.get("530001"))
        assert stored is not None and stored.failed_attempts == 0 and not stored.locked
        secret = gw.ca.call(gw.ca.runtime.store.get_acquisition_secret("530001"))
        assert secret is not None and secret.locked  # counted and locked at the CA instead
        async with gw.browser(user) as browser:
            assert (await browser.login()).status == 200

    async def test_no_login_password_oracle_without_acquisition_password(
            self, gw: GatewayHarness) -> None:
        """Right and wrong login passwords with a wrong acquisition password; an unknown ID;
        a locked acquisition password with the right one: the same page every time."""
        gw.enroll("530002")
        gw.add_user("530003")
        right_acquisition = gw.acquisition_password("530003")
        async with gw.browser() as browser:
            answers = [
                await _submit(browser, "530002", GOOD_PASSWORD, "wrong-acq-1"),
                await _submit(browser, "530002", "wrong-pass1", "wrong-acq-1"),
                await _submit(browser, "539999", GOOD_PASSWORD, "wrong-acq-1"),
            ]
            for _ in range(3):
                await _submit(browser, "530003", GOOD_PASSWORD, "wrong-acq-2")
            answers.append(await _submit(browser, "530003", GOOD_PASSWORD, right_acquisition))
            # the acquisition password was right, the login password wrong
            fresh = gw.acquisition_password("530002")
            answers.append(await _submit(browser, "530002", "wrong-pass1", fresh))
        first = _comparable(answers[0])
        assert first[0] == 401 and first[1] == "acquisition_bad_credentials"
        for answer in answers[1:]:
            assert _comparable(answer) == first

    async def test_right_acquisition_password_then_login_password_counted_R_LOCK_1(
            self, gw: GatewayHarness) -> None:
        """With the acquisition password, wrong login passwords count; the third shows the
        login lock page (the client proved the officer-issued secret)."""
        gw.add_user("530004")
        acquisition = gw.acquisition_password("530004")
        async with gw.browser() as browser:
            pages = [await _submit(browser, "530004", "wrong-pass1", acquisition)
                     for _ in range(3)]
        assert [(p.status, p.error) for p in pages] == [
            (401, "acquisition_bad_credentials"), (401, "acquisition_bad_credentials"),
            (423, "locked")]
        stored = gw.run(gw.users.get("530004"))
        assert stored is not None and stored.locked

    async def test_acquisition_password_evaluated_once_per_acquisition_R_CERT_5(
            self, gw: GatewayHarness) -> None:
        """A successful acquisition costs the CA one argon2 evaluation (the ticket carries
        the proof to the issuance), and the file opens with the acquisition password."""
        temporary = gw.add_user("530005", password=None)
        acquisition = gw.acquisition_password("530005")
        hasher = gw.ca.runtime.authority._hasher
        original = hasher.verify
        evaluated: list[object] = []

        async def counting(stored: Any, password: str) -> bool:
            evaluated.append(stored)
            return bool(await original(stored, password))

        hasher.verify = counting  # type: ignore[method-assign]
        try:
            async with gw.browser() as browser:
                ready = await _submit(browser, "530005", temporary, acquisition)
        finally:
            hasher.verify = original  # type: ignore[method-assign]
        assert ready.url == gw.url + "/auth/download", ready.text[:300]
        assert len(evaluated) == 1


class TestTickets:
    """The CA's tickets: single use, one user, one password, two minutes."""

    def test_ticket_is_single_use_bound_and_short_lived_R_CERT_5(self, gw: GatewayHarness,
                                                               ) -> None:
        """Another user, another password, a second use, an expired ticket: 401 each."""
        for user_id in ("530010", "530011"):
            gw.add_user(user_id)
        acquisition = gw.acquisition_password("530010")

        def ticket() -> str:
            status, body = gw.ca.api("POST", "/v1/acquisition-tickets", json={
                "user_id": "530010", "acquisition_password": acquisition})
            assert status == 201, body
            return str(body["ticket"])

        def acquire(user_id: str, password: str, value: str) -> int:
            status, _ = gw.ca.api("POST", "/v1/acquire", json={
                "user_id": user_id, "acquisition_password": password, "ticket": value})
            return status

        first = ticket()
        assert acquire("530011", acquisition, first) == 401
        assert acquire("530010", acquisition, first) == 401  # spent by the wrong try
        second = ticket()
        assert acquire("530010", "other-password", second) == 401
        third = ticket()
        gw.clock.advance(timedelta(minutes=2, seconds=1))
        assert acquire("530010", acquisition, third) == 401
        gw.clock.advance(-timedelta(minutes=2, seconds=1))
        fourth = ticket()
        assert acquire("530010", acquisition, fourth) == 201
        assert acquire("530010", acquisition, fourth) == 401
        status, body = gw.ca.api("POST", "/v1/acquire", json={
            "user_id": "530010", "acquisition_password": acquisition, "ticket": 7})
        assert status == 400, body


class TestThrottle:
    """Anonymous attempts are throttled per client address, counted in the shared store."""

    def test_throttle_answers_429_then_lets_through_after_window(
            self, tmp_path: Any, clock: FakeClock) -> None:
        """With 3 attempts per 10 minutes, the fourth POST gets 429 too_many_attempts, even
        with the right passwords; after the window the form answers again."""
        gw = start_gateway(tmp_path, clock, extra='acquire_attempts_per_address = 3')
        try:
            temporary = gw.add_user("530020", password=None)
            acquisition = gw.acquisition_password("530020")

            async def run() -> list[Page]:
                async with gw.browser() as browser:
                    pages = [await _submit(browser, "539998", "wrong1", "wrong1")
                             for _ in range(3)]
                    pages.append(await _submit(browser, "530020", temporary, acquisition))
                    gw.clock.advance(timedelta(minutes=10, seconds=1))
                    pages.append(await _submit(browser, "530020", temporary, acquisition))
                    return pages

            pages = gw.backend_loop.run(run())
        finally:
            gw.stop()
        assert [p.status for p in pages[:3]] == [401, 401, 401]
        assert pages[3].status == 429 and pages[3].error == "too_many_attempts"
        assert "しばらく時間をおいて" in pages[3].text
        assert pages[4].url.endswith("/auth/download"), pages[4].text[:300]

    @BOTH_STORES
    async def test_store_keeps_the_count_bounded_and_ipv6_per_64(
            self, store: UserBackend, clock: FakeClock) -> None:
        """The count lives in the store: a second throttle on the same store (another
        gateway process) shares each address's budget; each address keeps at most `limit`
        rows and the sweep forgets the ones past the window; addresses of one IPv6 /64 share
        a budget; IPv4-mapped IPv6 is the IPv4 address."""
        window = timedelta(minutes=10)
        first = AddressThrottle(clock, store, limit=2, window=window)
        second = AddressThrottle(clock, store, limit=2, window=window)
        assert await first.allow("192.0.2.1") and await second.allow("192.0.2.1")
        assert not await first.allow("192.0.2.1") and not await second.allow("192.0.2.1")
        assert not await second.allow("::ffff:192.0.2.1")
        assert await first.allow("2001:db8::1") and await second.allow("2001:db8::ffff:2")
        assert not await first.allow("2001:db8::abcd")
        assert await first.allow("2001:db8:0:1::1")
        for index in range(200):
            await first.allow(f"10.0.{index >> 8}.{index & 255}")
        clock.advance(window + timedelta(seconds=1))
        assert await first.allow("192.0.2.1")  # a new window
        # 192.0.2.1 dropped its own old tries when it was counted again.
        assert await first.expire() == 2 + 1 + 200
        assert await first.expire() == 0
        assert address_key("::ffff:192.0.2.1") == "192.0.2.1"


class TestWording:
    """Issue 15 item 7: the form warns about the acquisition password's own lock."""

    @pytest.mark.parametrize(("lang", "expected", "absent"), [
        ("ja", "証明書パスワードがロックされ", "ログインに3回連続して失敗されると"),
        ("en", "lock the certificate password", "After three failed logins in a row"),
    ])
    async def test_wrong_acquisition_password_warns_about_its_own_lock(
            self, gw: GatewayHarness, lang: str, expected: str, absent: str) -> None:
        """Japanese first, English too: the acquisition lock and how to lift it (reissue),
        and the login lock only for when the acquisition password was right."""
        gw.add_user("530030")
        gw.acquisition_password("530030")
        async with gw.browser() as browser:
            await browser.get(f"/auth/acquire?lang={lang}")
            page = await _submit(browser, "530030", GOOD_PASSWORD, "wrong-acq")
        assert page.status == 401
        assert expected in page.text and absent not in page.text
