"""The acquisition form's answer in a real browser (issue 10 item 3, issue 15 item 7).

A wrong certificate (acquisition) password shows one answer whichever secret was wrong, and
that answer warns about the acquisition password's own lock (an officer reissues it), not
only about the login lock. Screenshots under test-artifacts/browser/<test>/.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import PHONE, Shots, off_thread, open_context
from tests.gateway.conftest import GatewayHarness

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed")
expect = sync_api.expect


def test_wrong_acquisition_password_warns_about_its_own_lock_R_CERT_5(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """Japanese, then English, then 390 px wide: the form's error names the acquisition
    lock and the reissue; the login lock is mentioned only for a right acquisition password."""
    temporary = off_thread(site.add_user, "930001", password=None)
    off_thread(site.acquisition_password, "930001")
    for lang, viewport, expected in (
            ("ja", None, "証明書パスワードがロックされ"),
            ("en", None, "lock the certificate password"),
            ("ja", PHONE, "再発行をご依頼ください")):
        context = open_context(chromium, site, viewport=viewport)
        page = context.new_page()
        page.goto(f"{site.url}/auth/acquire?lang={lang}")
        page.locator("#user_id").fill("930001")
        page.locator("#password").fill(temporary)
        page.locator("#acquisition_password").fill("wrong-acquisition")
        page.click("#acquire")
        error = page.locator("#error")
        expect(error).to_have_attribute("data-code", "acquisition_bad_credentials")
        expect(error).to_contain_text(expected)
        expect(error).not_to_contain_text("ログインに3回連続して失敗されると")
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= (viewport or {"width": 1024})["width"], width
        shots(page, f"wrong-acquisition-{lang}-{(viewport or {'width': 1024})['width']}")
        context.close()
