"""The customer's pages without a browser: catalogue, language, static files, header, dates
(R-UI-1..3, R-GW-3, R-GW-4). The flows themselves run in Chromium (tests/browser)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from gateway import messages, pages
from gateway.enrollment import PICKUP_COOKIE
from tests.gateway.conftest import GatewayHarness, csrf_of

TEMPLATES = Path(pages.__file__).parent / "templates"
SESSION = "__Host-sekisho-session"


class TestCatalogue:
    """One catalogue per language, every key used by a page present in both."""

    def test_languages_have_the_same_keys_R_UI_3(self) -> None:
        """Japanese and English define exactly the same keys."""
        ja, en = set(messages.CATALOGUE["ja"]), set(messages.CATALOGUE["en"])
        assert ja - en == set() and en - ja == set()

    def test_every_key_a_page_uses_exists_R_UI_3(self) -> None:
        """Literal t("...") keys of the templates and the error page table are defined."""
        used = set()
        for template in TEMPLATES.glob("*.html"):
            used |= set(re.findall(r"""\bt\(\s*["']([a-z0-9_]+)["']\s*\)""",
                                   template.read_text()))
        for page in pages.ERROR_PAGES.values():
            used |= {page.title, *page.next, *(label for _, label, _ in page.actions)}
        assert used, "no keys found"
        missing = sorted(k for k in used if k not in messages.CATALOGUE["ja"])
        assert missing == []

    def test_fallbacks(self) -> None:
        """Unknown language -> Japanese; unknown key -> the key; unknown error -> default."""
        assert messages.text("login", "fr") == "ログイン"
        assert messages.text("no_such_key") == "no_such_key"
        assert messages.error_text("no_such_code", "en") == messages.text("error_default", "en")


class TestDates:
    """Times are shown in Japan time, as the manual shows them (§2.2(5))."""

    @pytest.mark.parametrize(("lang", "expected"), [
        ("ja", "2021年2月24日(水)"), ("en", "Wed 24 Feb 2021")])
    def test_cutover_day_R_CUT_1(self, lang: str, expected: str) -> None:
        """Midnight in Japan is shown as the day alone, in the page's language."""
        token = messages.use_language(lang)
        try:
            midnight_jst = datetime(2021, 2, 23, 15, 0, tzinfo=UTC)
            assert pages.jst_moment(midnight_jst) == expected
            assert pages.jst_moment("2021-02-23T15:00:00+00:00") == expected
            assert pages.jst_moment(midnight_jst + timedelta(hours=10)).endswith(" 10:00")
        finally:
            messages.reset_language(token)

    def test_last_login_format_R_UI_2(self) -> None:
        """`2013/08/06 09:01:41` for 00:01:41 UTC; nothing for nothing."""
        assert pages.jst_datetime(datetime(2013, 8, 6, 0, 1, 41, tzinfo=UTC)) == \
            "2013/08/06 09:01:41"
        assert pages.jst_datetime(None) == "" and pages.jst_datetime("garbage") == ""


class TestLanguage:
    """R-UI-3: Japanese by default; ?lang=en switches and the `lang` cookie remembers."""

    async def test_switch_is_remembered_R_UI_3(self, gw: GatewayHarness) -> None:
        """?lang=en sets a Secure SameSite=Strict cookie; later pages stay English."""
        async with gw.browser() as browser:
            page = await browser.get("/auth/")
            assert '<html lang="ja">' in page.text and "電子証明書取得" in page.text
            english = await browser.get("/auth/?lang=en", allow_redirects=False)
            header = english.headers["Set-Cookie"].lower()
            assert "lang=en" in header and "secure" in header and "samesite=strict" in header
            assert '<html lang="en">' in english.text and "Get certificate" in english.text
            later = await browser.get("/auth/acquire")
            assert '<html lang="en">' in later.text and "Certificate password" in later.text
            error = await browser.get("/auth/login")  # no certificate: an English error
            assert error.error == "cert_required" and "No electronic certificate" in error.text
            ignored = await browser.get("/auth/?lang=xx")
            assert '<html lang="en">' in ignored.text
            back = await browser.get("/auth/acquire?lang=ja")
            assert '<html lang="ja">' in back.text and "証明書パスワード" in back.text


class TestStaticAndMarkup:
    """R-GW-3 and the CSP: static files need no certificate; pages carry no inline code."""

    @pytest.mark.parametrize(("name", "kind"), [
        ("sekisho.css", "text/css"), ("keyboard.js", "javascript"), ("pages.js", "javascript")])
    async def test_static_without_certificate_R_GW_3(self, gw: GatewayHarness, name: str,
                                                     kind: str) -> None:
        """The login page's CSS and scripts load without a client certificate."""
        async with gw.browser() as browser:
            page = await browser.get(f"/auth/static/{name}")
        assert page.status == 200 and kind in page.headers["Content-Type"]

    async def test_no_inline_code_and_labelled_fields_R_UI_3(self, gw: GatewayHarness) -> None:
        """No inline script, style or handler; every input has a label; keyboards present."""
        async with gw.browser() as browser:
            for path in ("/auth/", "/auth/acquire", "/auth/login"):
                page = await browser.get(path)
                assert "default-src 'self'" in page.headers["Content-Security-Policy"]
                assert not re.search(r"<script(?![^>]*\bsrc=)", page.text), path
                assert not re.search(r"\sstyle=|\son[a-z]+=", page.text), path
                for field_id in re.findall(r'<input type="(?:text|password)" id="([^"]+)"',
                                           page.text):
                    assert f'<label for="{field_id}">' in page.text, (path, field_id)
                    if 'type="password" id="' + field_id in page.text:
                        assert f'data-keyboard-for="{field_id}"' in page.text


class TestHeader:
    """R-UI-2 and R-GW-4: the header shows the identity of this certificate's session only."""

    async def test_header_identity_and_links_R_UI_2(self, gw: GatewayHarness) -> None:
        """Customer, user ID, name, last login, パスワード変更 and ログアウト on gateway pages."""
        user = gw.enroll("310001", name="Yamada Hanako", customer="XYZ Trading")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.get("/auth/password")
            for text in ("XYZ Trading", "310001", "Yamada Hanako", 'action="/auth/logout"',
                         'href="/auth/password"', 'id="last-login"'):
                assert text in page.text, text

    async def test_no_identity_for_another_certificate_R_GW_4(self, gw: GatewayHarness) -> None:
        """A stolen cookie on another certificate shows the login page without the victim."""
        victim, thief = gw.enroll("310002", name="Victim Name"), gw.enroll("310003")
        async with gw.browser(victim) as owner, gw.browser(thief) as other:
            await owner.login()
            other.jar.update_cookies({SESSION: owner.cookie(SESSION) or ""})
            page = await other.get("/auth/login")
            assert page.status == 200 and "Victim Name" not in page.text
            assert 'id="customer"' not in page.text


class TestDownload:
    """R-CERT-4/6: an issued file waits for its own browser and certificate only."""

    async def test_renewed_file_only_for_its_certificate_R_CERT_6(
            self, gw: GatewayHarness) -> None:
        """Another certificate holding the pickup cookie gets nothing; the owner gets it."""
        owner, other = gw.enroll("310004"), gw.enroll("310005")
        gw.clock.set(owner.not_after - timedelta(days=10))
        async with gw.browser(owner) as first, gw.browser(other) as second:
            ready = await first.submit("/auth/renew", "/auth/renew", {"password": owner.password})
            assert ready.url == gw.url + "/auth/download"
            second.jar.update_cookies({PICKUP_COOKIE: first.cookie(PICKUP_COOKIE) or "",
                                       "__Host-sekisho-form": first.cookie(
                                           "__Host-sekisho-form") or ""})
            stolen = await second.request("POST", "/auth/download",
                                          data={"csrf": csrf_of(ready.text)})
            assert stolen.status == 404 and stolen.error == "download_gone"
            mine = await first.submit("/auth/download", "/auth/download", {})
            assert mine.headers["Content-Type"] == "application/x-pkcs12"
