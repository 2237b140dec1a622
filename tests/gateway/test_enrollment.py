"""Certificate acquisition and renewal through the gateway's forms (§2.1, §2.10.1, R-CERT-4..6).

The manual's flow: the form's POST leads to the download page; its [ダウンロード] button
(a POST) hands the PKCS#12 over once."""

from __future__ import annotations

from datetime import timedelta

from cryptography.hazmat.primitives.serialization import pkcs12

from gateway.pages import JST
from tests.gateway.conftest import GatewayHarness, csrf_of


class TestAcquisition:
    """§2.1: user ID + login password + acquisition password -> PKCS#12 download."""

    async def test_acquire_without_certificate_then_log_in_R_CERT_4(
            self, gw: GatewayHarness) -> None:
        """The form needs no certificate; the download logs in afterwards."""
        temporary = gw.add_user("600001", password=None)
        acquisition = gw.acquisition_password("600001")
        async with gw.browser() as browser:
            ready = await browser.submit("/auth/acquire", "/auth/acquire", {
                "user_id": "600001", "password": temporary,
                "acquisition_password": acquisition})
            assert ready.url == gw.url + "/auth/download" and 'id="download"' in ready.text
            page = await browser.submit("/auth/download", "/auth/download", {})
            again = await browser.request("POST", "/auth/download",
                                          data={"csrf": csrf_of(ready.text)})
        assert page.status == 200
        assert page.headers["Content-Type"] == "application/x-pkcs12"
        assert page.headers["Cache-Control"] == "no-store"
        assert 'filename="600001.p12"' in page.headers["Content-Disposition"]
        assert again.status == 404 and again.error == "download_gone"  # once only
        key, cert, _ = pkcs12.load_key_and_certificates(page.body, acquisition.encode())
        assert cert is not None and key is not None
        user = gw.write_pkcs12("600001", temporary, page.body, acquisition=acquisition)
        async with gw.browser(user) as browser:
            assert (await browser.login()).url == gw.url + "/auth/password"

    async def test_wrong_login_password_counts_toward_lock_R_LOCK_1(
            self, gw: GatewayHarness) -> None:
        """Wrong login passwords on the acquisition form count; the third locks."""
        gw.add_user("600002")
        acquisition = gw.acquisition_password("600002")
        async with gw.browser() as browser:
            statuses = []
            for _ in range(3):
                page = await browser.submit("/auth/acquire", "/auth/acquire", {
                    "user_id": "600002", "password": "wrong-pass1",
                    "acquisition_password": acquisition})
                statuses.append(page.status)
        assert statuses == [401, 401, 423]

    async def test_wrong_acquisition_password_and_existing_certificate_R_CERT_5(
            self, gw: GatewayHarness) -> None:
        """The CA's refusals become pages: wrong acquisition password, usable cert exists."""
        password = gw.add_user("600003")
        async with gw.browser() as browser:
            gw.acquisition_password("600003")
            wrong = await browser.submit("/auth/acquire", "/auth/acquire", {
                "user_id": "600003", "password": password, "acquisition_password": "nope1234"})
            assert wrong.status == 401 and wrong.error == "acquisition_bad_credentials"
            gw.issue("600003", password)
            again = await browser.submit("/auth/acquire", "/auth/acquire", {
                "user_id": "600003", "password": password,
                "acquisition_password": gw.acquisition_password("600003")})
            assert again.status == 409 and again.error == "usable_certificate_exists"

    async def test_unknown_user_id_looks_like_wrong_password_R_LOCK_2(
            self, gw: GatewayHarness) -> None:
        """Unknown and malformed IDs get the same 401 page as a wrong password (the one
        answer of the acquisition form, test_acquisition_order)."""
        async with gw.browser() as browser:
            for user_id in ("699999", "../etc"):
                page = await browser.submit("/auth/acquire", "/auth/acquire", {
                    "user_id": user_id, "password": "whatever1",
                    "acquisition_password": "x"})
                assert page.status == 401 and page.error == "acquisition_bad_credentials"


class TestRenewal:
    """§2.10.1: renewal is offered within 30 days of expiry; the new file uses the password."""

    async def test_renewal_offered_only_in_the_last_30_days_R_CERT_6(
            self, gw: GatewayHarness) -> None:
        """No 証明書更新 button a second before the window; there from its first second."""
        user = gw.enroll("600010")
        async with gw.browser(user) as browser:
            gw.clock.set(user.not_after - timedelta(days=30) - timedelta(seconds=1))
            assert 'id="cert-renew"' not in (await browser.get("/auth/login")).text
            gw.clock.advance(timedelta(seconds=1))
            assert 'id="cert-renew"' in (await browser.get("/auth/login")).text

    async def test_renew_downloads_file_encrypted_with_login_password_R_CERT_6(
            self, gw: GatewayHarness) -> None:
        """The renewed PKCS#12 opens with the login password and holds a newer certificate."""
        user = gw.enroll("600011")
        gw.clock.set(user.not_after - timedelta(days=10))
        async with gw.browser(user) as browser:
            ready = await browser.submit("/auth/renew", "/auth/renew",
                                         {"password": user.password})
            assert ready.url == gw.url + "/auth/download", ready.text[:300]
            page = await browser.submit("/auth/download", "/auth/download", {})
            assert page.status == 200, page.text[:300]
            assert page.headers["Content-Type"] == "application/x-pkcs12"
            _, cert, _ = pkcs12.load_key_and_certificates(page.body, user.password.encode())
            assert cert is not None and cert.not_valid_after_utc > user.not_after
            wrong = await browser.submit("/auth/renew", "/auth/renew", {"password": "nope1234"})
            assert wrong.status == 401

    async def test_renew_too_early_refused_R_CERT_6(self, gw: GatewayHarness) -> None:
        """Outside the window the page says when renewal opens, in Japan time, before asking
        for anything (issue 15 item 6); a POST anyway is refused with the same date."""
        user = gw.enroll("600012")
        opens = (user.not_after - timedelta(days=30)).astimezone(JST)
        async with gw.browser(user) as browser:
            page = await browser.get("/auth/renew")
            assert page.status == 200 and 'id="renewal-not-open"' in page.text
            assert f"{opens:%Y/%m/%d %H:%M:%S} (日本時間)から可能です" in page.text
            assert 'name="password"' not in page.text and 'action="/auth/renew"' not in page.text
            token = csrf_of((await browser.get("/auth/login")).text)
            refused = await browser.request("POST", "/auth/renew",
                                             data={"csrf": token, "password": user.password})
            assert refused.status == 409 and refused.error == "renewal_not_open"
            assert "(日本時間)から可能です" in refused.text

    async def test_days_left_counted_as_the_customer_does_R_CERT_1(
            self, gw: GatewayHarness) -> None:
        """A certificate issued a moment ago for 365 days shows 「残り365日」 (issue 15 item 9);
        one second before expiry, 「残り1日」."""
        user = gw.enroll("600013")
        async with gw.browser(user) as browser:
            gw.clock.advance(timedelta(seconds=5))
            assert "(残り365日)" in (await browser.get("/auth/login")).text
            gw.clock.set(user.not_after - timedelta(seconds=1))
            assert "(残り1日)" in (await browser.get("/auth/login")).text


class TestDownloadWording:
    """Issue 15 item 5: first acquisition, re-acquisition and renewal each say what is next."""

    async def _download_page(self, gw: GatewayHarness, user_id: str, password: str) -> str:
        async with gw.browser() as browser:
            ready = await browser.submit("/auth/acquire", "/auth/acquire", {
                "user_id": user_id, "password": password,
                "acquisition_password": gw.acquisition_password(user_id)})
            assert ready.url == gw.url + "/auth/download", ready.text[:300]
            return ready.text

    async def test_first_acquisition_says_temporary_password(self, gw: GatewayHarness) -> None:
        """A new user: log in with the temporary password next."""
        page = await self._download_page(gw, "600020", gw.add_user("600020", password=None))
        assert "電子証明書の発行が完了しました。" in page and "初回は仮パスワードで" in page

    async def test_reacquisition_says_current_password(self, gw: GatewayHarness) -> None:
        """A user who already chose a password (new PC, expiry, a campaign): log in with the
        current login password, not a temporary one."""
        page = await self._download_page(gw, "600021", gw.add_user("600021"))
        assert "電子証明書の再発行が完了しました。" in page
        assert "現在お使いのログインパスワードでログインしてください" in page
        assert "(仮パスワードではありません)" in page
        assert "初回は仮パスワードで" not in page
        assert "証明書パスワード(電子証明書取得用パスワード)で保護されています" in page
