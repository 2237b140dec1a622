"""Login, lockout, password change, sessions through a real gateway (R-PW, R-LOCK, R-SES)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from pathlib import Path

import pytest

from tests.gateway.conftest import BOTH_STORES, GOOD_PASSWORD, GatewayHarness, csrf_of

SESSION = "__Host-sekisho-session"
MINUTE = timedelta(minutes=1)
SECOND = timedelta(seconds=1)


pytestmark = BOTH_STORES  # issue 12: storage-relevant, run on both backends

class TestLogin:
    """§2.2: certificate + password -> the backend's first screen."""

    async def test_full_login_reaches_backend_R_GW_1(self, gw: GatewayHarness) -> None:
        """The first screen shows the identity the backend got from the gateway (R-UI-2)."""
        user = gw.enroll("300001", name="Tanaka Taro", customer="ABC Trading")
        async with gw.browser(user) as browser:
            page = await browser.login()
            assert page.status == 200
            assert page.url == gw.url + "/"
            assert "ABC Trading" in page.text and "300001" in page.text
            assert browser.cookie(SESSION)

    def test_full_login_with_curl_R_GW_1(self, gw: GatewayHarness) -> None:
        """curl with --cert/--key logs in with a cookie file and reaches the backend."""
        user = gw.enroll("300002")
        jar, login = gw.curl_login(user, "-L")
        assert login.stdout.endswith("\n200"), login.stdout[-300:]
        assert "300002" in login.stdout
        again = gw.curl("/trade/forward", user, "-b", jar)
        assert again.stdout.endswith("\n200")

    async def test_cookie_attributes_and_rotation_R_SES_3(self, gw: GatewayHarness) -> None:
        """Secure, HttpOnly, SameSite=Strict, __Host- prefix; a new value at each login."""
        user = gw.enroll("300003")
        async with gw.browser(user) as browser:
            page = await browser.get("/auth/login")
            response = await browser.request(
                "POST", "/auth/login", allow_redirects=False,
                data={"csrf": csrf_of(page.text), "password": user.password})
            assert response.status == 303
            header = next(v for v in response.headers.getall("Set-Cookie")
                          if v.startswith(SESSION))
            lowered = header.lower()
            assert "secure" in lowered and "httponly" in lowered
            assert "samesite=strict" in lowered and "path=/" in lowered
            assert "domain" not in lowered
            first = browser.cookie(SESSION)
            await browser.login()
            assert browser.cookie(SESSION) not in (None, first)

    async def test_wrong_and_unknown_look_the_same_R_LOCK_2(self, gw: GatewayHarness) -> None:
        """A wrong password answers 401 with the same page as an empty one."""
        user = gw.enroll("300004")
        async with gw.browser(user) as browser:
            wrong = await browser.login("wrong-pass1")
            empty = await browser.login("")
            assert wrong.status == empty.status == 401
            assert wrong.error == empty.error == "bad_credentials"

    async def test_certificate_of_another_user_refused_R_GW_1(self, gw: GatewayHarness) -> None:
        """The form's user ID must be the certificate's CN."""
        user = gw.enroll("300005")
        gw.add_user("300006")
        async with gw.browser(user) as browser:
            page = await browser.login(user_id="300006")
            assert page.status == 403 and page.error == "cert_user_mismatch"


class TestLockout:
    """R-LOCK-1: three wrong passwords lock, exactly, whatever the concurrency."""

    async def test_three_failures_lock_then_right_password_refused_R_LOCK_1(
            self, gw: GatewayHarness) -> None:
        """Tries 1-2 answer 401, the third 423; then the right password gets 423 too."""
        user = gw.enroll("300010")
        async with gw.browser(user) as browser:
            token = csrf_of((await browser.get("/auth/login")).text)
            statuses = [(await browser.login("wrong-pass1")).status for _ in range(3)]
            assert statuses == [401, 401, 423]
            locked = await browser.request("POST", "/auth/login",
                                           data={"csrf": token, "password": user.password})
            assert locked.status == 423 and locked.error == "locked"
        stored = gw.run(gw.users.get("300010"))
        assert stored.locked and stored.failed_attempts == 3

    async def test_hundred_concurrent_wrong_attempts_count_three_R_LOCK_1(
            self, gw: GatewayHarness) -> None:
        """100 simultaneous wrong logins over HTTPS: exactly 3 evaluated, the rest locked."""
        user = gw.enroll("300011")
        async with gw.browser(user) as browser:
            token = csrf_of((await browser.get("/auth/login")).text)
            pages = await asyncio.gather(*(
                browser.request("POST", "/auth/login",
                                data={"csrf": token, "password": f"wrong-{i}x"})
                for i in range(100)))
            statuses = [p.status for p in pages]
            assert set(statuses) <= {401, 423, 429}  # 429: retry, tries being checked
            assert statuses.count(401) <= 2
            right = await browser.request("POST", "/auth/login",
                                          data={"csrf": token, "password": user.password})
            assert right.status == 423
        stored = gw.run(gw.users.get("300011"))
        assert stored.locked and stored.failed_attempts == 3
        failures = [e for e in gw.run(gw.users.audit_entries())
                    if e.subject == "300011" and e.action in ("login.failed", "login.locked")]
        assert len(failures) == 3

    async def test_helpdesk_unlock_lets_the_user_in_R_LOCK_1(self, gw: GatewayHarness) -> None:
        """After `unlock` the right password works again."""
        user = gw.enroll("300012")
        async with gw.browser(user) as browser:
            for _ in range(3):
                await browser.login("wrong-pass1")
            gw.run(gw.users.unlock("300012", actor="helpdesk:test"))
            assert (await browser.login()).status == 200


class TestPasswordChange:
    """R-PW-1, R-PW-2: temporary and expired passwords lead only to the change page."""

    async def test_temporary_password_only_reaches_change_page_R_PW_2(
            self, gw: GatewayHarness) -> None:
        """First login with the temporary password: every page leads to /auth/password."""
        temporary = gw.add_user("300020", password=None)
        user = gw.issue("300020", temporary)
        async with gw.browser(user) as browser:
            page = await browser.login()
            assert page.url == gw.url + "/auth/password"
            assert 'id="must-change"' in page.text
            elsewhere = await browser.get("/trade/forward")
            assert elsewhere.url == gw.url + "/auth/password"
            changed = await browser.submit("/auth/password", "/auth/password", {
                "current_password": temporary, "new_password": "Hq7vT2mXk9",
                "confirm_password": "Hq7vT2mXk9"})
            # §2.2(5): straight to the 初期画面, no intermediate page (issue 15 item 4).
            assert changed.status == 200 and changed.url == gw.url + "/"
            assert 'id="changed"' not in changed.text
            assert (await browser.get("/trade/forward")).status == 200

    async def test_manual_change_says_changed_at_the_top_R_PW_1(
            self, gw: GatewayHarness) -> None:
        """§2.5(3): after a manual change, 「パスワードを変更しました。」 at the top."""
        user = gw.enroll("300022")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.submit("/auth/password", "/auth/password", {
                "current_password": user.password, "new_password": "Hq7vT2mXk9",
                "confirm_password": "Hq7vT2mXk9"})
            assert page.status == 200 and page.url == gw.url + "/auth/password"
            assert 'id="changed">パスワードを変更しました。' in page.text
            assert page.text.index('id="changed"') < page.text.index('id="change"')

    @pytest.mark.parametrize("case", ["first", "reset", "expired"])
    async def test_each_must_change_case_has_its_sentence_R_PW_2(
            self, gw: GatewayHarness, case: str) -> None:
        """§2.2(4): first login, a helpdesk reset after earlier logins and an expired password
        each get their own sentence on the change page (issue 15 item 2)."""
        user_id = {"first": "300023", "reset": "300024", "expired": "300025"}[case]
        password = gw.add_user(user_id, password=None if case == "first" else GOOD_PASSWORD)
        user = gw.issue(user_id, password)
        if case == "reset":
            async with gw.browser(user) as browser:
                await browser.login()
                await browser.submit("/auth/password", "/auth/logout", {})
            user.password = gw.run(gw.auth.reset_password(user_id, actor="helpdesk:test"))
        if case == "expired":
            gw.clock.advance(timedelta(days=91))
        async with gw.browser(user) as browser:
            page = await browser.login()
            assert page.url == gw.url + "/auth/password"
            assert f'id="must-change" data-case="{case}"' in page.text
            expected = {"first": "初回ログインのため",
                        "reset": "ヘルプデスクにてパスワードの再設定",
                        "expired": "パスワードの有効期限が切れています"}[case]
            assert expected in page.text
            if case == "reset":
                assert "初回ログイン" not in page.text

    async def test_every_violated_rule_is_named_R_PW_1(self, gw: GatewayHarness) -> None:
        """A short, digit-less password equal to the user name is refused with each rule."""
        user = gw.enroll("300021", name="Suzuki")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.submit("/auth/password", "/auth/password", {
                "current_password": user.password, "new_password": "suzuki",
                "confirm_password": "suzuki"})
            assert page.status == 400
            for code in ("password_too_short", "password_needs_letters_and_digits",
                         "password_same_as_user_name", "password_too_common"):
                assert f'data-code="{code}"' in page.text, code
            reused = await browser.submit("/auth/password", "/auth/password", {
                "current_password": user.password, "new_password": user.password,
                "confirm_password": user.password})
            assert 'data-code="password_reused"' in reused.text
            mismatch = await browser.submit("/auth/password", "/auth/password", {
                "current_password": user.password, "new_password": "Hq7vT2mXk9",
                "confirm_password": "Hq7vT2mXk8"})
            assert mismatch.status == 400 and 'data-code="password_mismatch"' in mismatch.text

    async def test_expired_after_90_days_R_PW_2(self, gw: GatewayHarness) -> None:
        """One second before 90 days the login is normal; at 90 days only the change page."""
        user = gw.enroll("300022")
        async with gw.browser(user) as browser:
            gw.clock.advance(timedelta(days=90) - SECOND)
            assert (await browser.login()).url == gw.url + "/"
            gw.clock.advance(SECOND)
            page = await browser.login()
            assert page.url == gw.url + "/auth/password"
            assert "must_change_expired" not in page.text  # the message, not the key
            assert "有効期限が切れています" in page.text


class TestSessions:
    """R-SES-1..3, R-GW-4."""

    async def test_idle_timeout_after_30_minutes_R_SES_1(self, gw: GatewayHarness) -> None:
        """Used at 29:59 it lives on; 30 minutes after the last operation it has ended."""
        user = gw.enroll("300030")
        async with gw.browser(user) as browser:
            await browser.login()
            gw.clock.advance(timedelta(minutes=30) - SECOND)
            assert (await browser.get("/trade/forward")).status == 200
            gw.clock.advance(timedelta(minutes=30))
            page = await browser.get("/trade/forward")
            assert page.status == 401 and page.error == "session_timeout"
            again = await browser.get("/trade/forward")
            assert again.url == gw.url + "/auth/"  # the next click: the login page

    async def test_logout_ends_session_R_SES_2(self, gw: GatewayHarness) -> None:
        """After logout the old cookie no longer works."""
        user = gw.enroll("300031")
        async with gw.browser(user) as browser:
            await browser.login()
            old = browser.cookie(SESSION)
            page = await browser.submit("/auth/logout", "/auth/logout", {})
            assert page.status == 200 and 'id="logged-out"' in page.text
            browser.jar.update_cookies({SESSION: old or ""})
            assert (await browser.get("/trade/forward")).url == gw.url + "/auth/"

    async def test_logout_is_one_click_from_the_header_R_SES_2(self, gw: GatewayHarness) -> None:
        """§3.1: the header's ログアウト is a form carrying the session's CSRF token; one POST
        from any gateway page gives the completion message (issue 15 item 4)."""
        user = gw.enroll("300036")
        async with gw.browser(user) as browser:
            await browser.login()
            password_page = await browser.get("/auth/password")
            header = password_page.text[password_page.text.index('class="header-logout"'):]
            page = await browser.request("POST", "/auth/logout",
                                         data={"csrf": csrf_of(header)})
            assert page.status == 200 and 'id="logged-out"' in page.text
            assert (await browser.get("/trade/forward")).url == gw.url + "/auth/"

    def test_cookie_alone_cannot_open_or_end_logout_R_GW_4(self, gw: GatewayHarness) -> None:
        """Issue 10 item 7: the cookie without a certificate, or with another user's, neither
        shows the logout form (identity, CSRF token) nor ends the owner's session (curl)."""
        owner, thief = gw.enroll("300037"), gw.enroll("300038")
        jar, _ = gw.curl_login(owner)
        token = next(line.split("\t")[-1] for line in Path(jar).read_text().splitlines()
                     if SESSION in line)
        cookie = f"{SESSION}={token}"
        for who in (None, thief):
            page = gw.curl("/auth/logout", who, "-H", f"Cookie: {cookie}")
            status = page.stdout.rsplit("\n", 1)[1]
            assert status == ("401" if who is None else "403"), page.stdout[-300:]
            assert "300037" not in page.stdout and 'name="csrf"' not in page.stdout
            ended = gw.curl("/auth/logout", who, "-H", f"Cookie: {cookie}",
                            "--data-urlencode", "csrf=x")
            assert ended.stdout.rsplit("\n", 1)[1] in ("401", "403")
        still = gw.curl("/auth/password", owner, "-b", jar)
        assert still.stdout.endswith("\n200") and "300037" in still.stdout
        real = gw.curl("/auth/logout", owner, "-b", jar, "--data-urlencode",
                       f"csrf={csrf_of(still.stdout)}")
        assert real.stdout.endswith("\n200") and 'id="logged-out"' in real.stdout

    async def test_relogin_ends_the_old_session_R_SES_2(self, gw: GatewayHarness) -> None:
        """A second window must press 再ログイン; the first window's session then ends."""
        user = gw.enroll("300032")
        async with gw.browser(user) as first, gw.browser(user) as second:
            await first.login()
            offer = await second.login()
            assert offer.status == 409 and 'id="relogin-offer"' in offer.text
            assert "再ログイン" in offer.text
            assert (await first.get("/trade/forward")).status == 200
            page = await second.login(relogin="1")
            assert page.status == 200 and page.url == gw.url + "/"
            # Issue 15 item 1: the first window is told why, once; then the top page.
            ended = await first.get("/trade/forward")
            assert ended.status == 401 and ended.error == "session_ended_relogin"
            assert "別の画面で再ログインされたため" in ended.text
            assert (await first.get("/trade/forward")).url == gw.url + "/auth/"

    async def test_refused_second_login_is_no_login_R_SES_2(self, gw: GatewayHarness) -> None:
        """The 409 「再ログイン」 answer neither audits login.succeeded nor moves 前回ログイン日時
        (issue 15 item 3); the 再ログイン that follows does both."""
        user = gw.enroll("300035")
        async with gw.browser(user) as first, gw.browser(user) as second:
            await first.login()
            stamped = gw.run(gw.users.get("300035")).last_login_at
            logins = [e for e in gw.run(gw.users.audit_entries()) if e.action == "login.succeeded"]
            gw.clock.advance(timedelta(minutes=5))
            assert (await second.login()).status == 409
            assert gw.run(gw.users.get("300035")).last_login_at == stamped
            after = [e for e in gw.run(gw.users.audit_entries()) if e.action == "login.succeeded"]
            assert len(after) == len(logins)
            assert (await second.login(relogin="1")).status == 200
            assert gw.run(gw.users.get("300035")).last_login_at > stamped

    async def test_stolen_session_with_another_certificate_refused_R_GW_4(
            self, gw: GatewayHarness) -> None:
        """Another user's certificate carrying the victim's cookie gets 403; the owner stays."""
        victim, thief = gw.enroll("300033"), gw.enroll("300034")
        async with gw.browser(victim) as owner, gw.browser(thief) as other:
            await owner.login()
            other.jar.update_cookies({SESSION: owner.cookie(SESSION) or ""})
            page = await other.get("/trade/forward")
            assert page.status == 403 and page.error == "session_cert_mismatch"
            echo = await other.get("/api/echo")
            assert "300033" not in echo.text
            assert (await owner.get("/trade/forward")).status == 200

    async def test_csrf_refused_R_SES_3(self, gw: GatewayHarness) -> None:
        """Forms without or with a wrong token are refused (403), before any password check."""
        user = gw.enroll("300035")
        async with gw.browser(user) as browser:
            await browser.get("/auth/login")
            for data in ({"password": user.password},
                         {"password": user.password, "csrf": "x" * 43}):
                page = await browser.request("POST", "/auth/login", data=data)
                assert page.status == 403 and page.error == "csrf_failed"
            await browser.login()
            change = await browser.request("POST", "/auth/password", data={
                "csrf": "forged", "current_password": user.password,
                "new_password": "Hq7vT2mXk9", "confirm_password": "Hq7vT2mXk9"})
            assert change.status == 403 and change.error == "csrf_failed"
        stored = gw.run(gw.users.get("300035"))
        assert stored.failed_attempts == 0

    async def test_bad_input_never_5xx(self, gw: GatewayHarness) -> None:
        """Junk forms, huge fields and wrong content types answer 4xx."""
        user = gw.enroll("300036")
        async with gw.browser(user) as browser:
            token = csrf_of((await browser.get("/auth/login")).text)
            cases = [
                {"data": {"csrf": token, "password": "x" * 5000}},
                {"data": b"\xff\xfe", "headers": {"Content-Type": "multipart/form-data"}},
                {"json": {"password": "x"}},
                {"data": "a" * 40000, "headers": {
                    "Content-Type": "application/x-www-form-urlencoded"}},
            ]
            for case in cases:
                page = await browser.request("POST", "/auth/login", **case)
                assert 400 <= page.status < 500, (case, page.status)
            assert (await browser.get("/auth/nothing")).status == 404
