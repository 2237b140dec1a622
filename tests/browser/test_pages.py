"""The manual's flows in a real browser (§2, §3; R-UI-*, R-SES-*, R-PW-*, R-CERT-4/6).

Headless Debian Chromium drives the real CA, gateway and demo backend. Every visited page is
saved as a screenshot under test-artifacts/browser/<test>/.
"""

from __future__ import annotations

import contextlib
import io
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.serialization import pkcs12

from gateway import cli as gateway_cli
from tests.browser.conftest import (
    PHONE,
    TIMEOUT_MS,
    Shots,
    off_thread,
    open_context,
    start_site,
)
from tests.gateway.conftest import GatewayHarness

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is needed")
pytestmark = pytest.mark.browser
expect = sync_api.expect
expect.set_options(timeout=TIMEOUT_MS)

NEW_PASSWORD = "Hq7vT2mXk9"
# The campaign's timeline runs forward from the CA's creation (the gateway checks dates
# against the injected clock only): the old certificate is issued a day later, the boundary
# follows, then the cutover day, and "today" is the day after it.
START = datetime.now(UTC).replace(microsecond=0)
ISSUED_OLD = START + timedelta(days=1)
BOUNDARY = START + timedelta(days=10)
CUTOVER_DAY = START + timedelta(days=19)
TODAY = START + timedelta(days=20)


@pytest.fixture(scope="module")
def campaign_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayHarness]:
    """A site whose CA and gateway carry a dated cutover."""
    yield from start_site(tmp_path_factory.mktemp("browser-campaign"), START, tables=f"""
[[cutover]]
name = "migration"
issued_before = {BOUNDARY.isoformat()}
effective_at = {CUTOVER_DAY.isoformat()}
""")


@dataclass
class Acquired:
    """A user who got their certificate in the browser."""

    user_id: str
    temporary: str
    acquisition: str
    pfx: Path


_acquired: dict[str, Acquired] = {}


def show_issuing_screen(page: Any, snap: Any) -> None:
    """§2.1(3): the issuing screen appears on submit; then the form is really sent.

    The first submit event is cancelled by the test (after pages.js has shown the screen), so
    the screen can be looked at without a navigation in flight; then the form is sent.
    """
    page.evaluate("""() => document.querySelector("form[data-issuing]")
        .addEventListener("submit", (event) => event.preventDefault(), {once: true})""")
    page.locator("form[data-issuing] button[type=submit]").click()
    expect(page.locator("#issuing")).to_be_visible()
    expect(page.locator("#issuing")).to_contain_text("しばらくお待ちください")
    expect(page.locator("#issuing-heading")).to_be_focused()
    snap(page, "issuing")
    page.evaluate("""() => {
        const form = document.querySelector("form[data-issuing]");
        form.removeAttribute("data-sent");
        form.requestSubmit();
    }""")


def acquire_in_browser(chromium: Any, site: GatewayHarness, shots: Shots | None,
                       user_id: str) -> Acquired:
    """§2.1: a new user gets the PKCS#12 from the login page, without any certificate."""
    temporary = site.add_user(user_id, password=None, name="佐藤 花子",
                              customer="株式会社ABC商事")
    acquisition = site.acquisition_password(user_id)
    snap = shots or (lambda page, label: None)
    context = open_context(chromium, site)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.locator("#cert-login")).to_have_text("電子証明書ログイン")
    expect(page.locator("#cert-acquire")).to_have_text("電子証明書取得")
    snap(page, "login-page")

    # Without a certificate, 電子証明書ログイン explains what to do (not yet acquired).
    page.click("#cert-login")
    expect(page.locator("#error")).to_have_attribute("data-code", "cert_required")
    snap(page, "no-certificate")
    page.click("#error-action")  # 電子証明書取得
    expect(page).to_have_url(site.url + "/auth/acquire")
    expect(page.get_by_role("heading", level=1)).to_have_text("電子証明書発行申請")
    page.get_by_label("ユーザID").fill(user_id)
    page.get_by_label("パスワード", exact=True).fill(temporary)
    page.get_by_label("証明書パスワード").fill(acquisition)
    snap(page, "acquisition-form")

    show_issuing_screen(page, snap)
    expect(page).to_have_url(site.url + "/auth/download")
    expect(page.locator("#file-password")).to_contain_text("証明書パスワード")
    expect(page.locator("#cert-user-id")).to_have_text(user_id)
    snap(page, "download-page")
    with page.expect_download() as info:
        page.click("#download")
    download = info.value
    assert download.suggested_filename == f"{user_id}.p12"
    pfx = site.directory / download.suggested_filename  # key material: not an artifact
    download.save_as(pfx)
    expect(page.locator("#download-started")).to_be_visible()
    # One use only (issue 15 item 8): the button is disabled and says so.
    expect(page.locator("#download")).to_be_disabled()
    expect(page.locator("#download")).to_have_text("ダウンロード済み")
    expect(page.locator("#download-started")).to_contain_text("ダウンロードしました")
    snap(page, "downloaded")
    # Once only: the page now says there is nothing left to download.
    page.reload()
    expect(page.locator("#error")).to_have_attribute("data-code", "download_gone")
    snap(page, "download-gone")
    context.close()
    return Acquired(user_id, temporary, acquisition, pfx)


def test_1_new_user_downloads_certificate_R_UI_1_R_CERT_4(chromium: Any, site: GatewayHarness,
                                                          shots: Shots) -> None:
    """Login page -> 電子証明書取得 -> form -> issuing -> download page -> the PKCS#12, once."""
    acquired = acquire_in_browser(chromium, site, shots, "910001")
    key, cert, _ = pkcs12.load_key_and_certificates(acquired.pfx.read_bytes(),
                                                    acquired.acquisition.encode())
    assert key is not None and cert is not None
    assert cert.subject.rfc4514_string() == "CN=910001"
    _acquired["first"] = acquired


def first_certificate(chromium: Any, site: GatewayHarness) -> Acquired:
    """The file test 1 downloaded (acquired here when test 2 runs alone)."""
    if "first" not in _acquired:
        _acquired["first"] = acquire_in_browser(chromium, site, None, "910001")
    return _acquired["first"]


def log_in(page: Any, site: GatewayHarness, password: str, *, button: str = "#login") -> None:
    """§2.2(1)-(3): 電子証明書ログイン, then the password page."""
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page).to_have_url(site.url + "/auth/login")
    page.get_by_label("パスワード", exact=True).fill(password)
    page.click(button)


def change_password(page: Any, current: str, new: str, confirm: str | None = None) -> None:
    """Fill the three fields of the change page (§2.5(2)) and press パスワード変更."""
    page.get_by_label("現在のパスワード").fill(current)
    page.get_by_label("新しいパスワード", exact=True).fill(new)
    page.get_by_label("新しいパスワード(再入力)").fill(new if confirm is None else confirm)
    page.click("#change")


def expect_first_screen(page: Any, site: GatewayHarness, user_id: str) -> None:
    """The backend's first screen (§2.2(5)) with the identity header and live quotes."""
    expect(page).to_have_url(site.url + "/")
    expect(page.locator("#user-id")).to_have_text(user_id)
    expect(page.locator("#customer-name")).to_have_text("株式会社ABC商事")
    expect(page.locator("#last-login")).not_to_be_empty()
    expect(page.locator("#password-change")).to_have_text("パスワード変更")
    expect(page.locator("#logout")).to_have_text("ログアウト")
    # The quote board updates over the WebSocket (relayed by the gateway). The backend's
    # strict CSP allows no eval: the predicate is a function, not a string expression.
    page.wait_for_function(
        "() => Number(document.getElementById('quote-board').dataset.updates) >= 3")
    expect(page.locator("#quote-status")).to_have_text("配信中")


def test_2_first_login_with_the_downloaded_file_R_PW_1_R_PW_2_R_UI_2(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """The downloaded PKCS#12 as client certificate: temporary password -> change page, each
    rule broken once, a good password -> the backend's first screen with live quotes."""
    acquired = first_certificate(chromium, site)
    context = open_context(chromium, site, pfx=acquired.pfx, passphrase=acquired.acquisition)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page.locator("#cert-user-id")).to_have_text(acquired.user_id)
    expect(page.locator("#cert-renew")).to_have_count(0)  # a new certificate: no renewal
    shots(page, "password-page")
    page.get_by_label("パスワード", exact=True).fill(acquired.temporary)
    page.click("#login")

    # §2.2(4): the temporary password leads only to the change page, with the header.
    expect(page).to_have_url(site.url + "/auth/password")
    expect(page.locator("#must-change")).to_contain_text("初回ログインのため")
    expect(page.locator("#user-name")).to_have_text("佐藤 花子")
    expect(page.locator("#customer")).to_have_text("株式会社ABC商事")
    expect(page.locator("#header-password")).to_have_text("パスワード変更")
    expect(page.locator("#header-logout")).to_have_text("ログアウト")
    expect(page.locator(".rule-list li")).to_have_count(5)
    shots(page, "change-page")
    page.goto(site.url + "/trade/forward")  # anything else leads back here (R-PW-2)
    expect(page).to_have_url(site.url + "/auth/password")

    # §2.5: each rule broken once; the page names it and marks it in the rule list.
    breaking = [
        ("short", "k9Xq2", None, "password_too_short", "length"),
        ("letters-only", "tqmvzkwprhsb", None, "password_needs_letters_and_digits", "mix"),
        ("user-id", f"{acquired.user_id}Qwxz", None, "password_same_as_user_id", "names"),
        ("reused", acquired.temporary, None, "password_reused", "history"),
        ("common", "password1", None, "password_too_common", "common"),
        ("mismatch", NEW_PASSWORD, NEW_PASSWORD + "x", "password_mismatch", None),
    ]
    for label, new, confirm, code, rule in breaking:
        change_password(page, acquired.temporary, new, confirm)
        errors = page.locator("#errors")
        expect(errors).to_be_visible()
        expect(errors).to_have_attribute("role", "alert")
        expect(errors.locator(f'li[data-code="{code}"]')).to_have_count(1)
        if rule is not None:
            expect(page.locator(f'.rule-list li[data-rule="{rule}"]')).to_have_class("broken")
            expect(page.get_by_label("新しいパスワード", exact=True)).to_have_attribute(
                "aria-invalid", "true")
        shots(page, f"rule-{label}")

    # §2.2(5): after the required change, straight to the 初期画面 (issue 15 item 4).
    change_password(page, acquired.temporary, NEW_PASSWORD)
    expect_first_screen(page, site, acquired.user_id)
    expect(page.locator("#user-name")).to_have_text("佐藤 花子")
    shots(page, "first-screen")
    context.close()


def test_3_three_wrong_passwords_lock_until_helpdesk_unlocks_R_LOCK_1(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """§2.3: two failures show the warning; the third the lock page (§2.7); the helpdesk's
    `sekisho-gateway users unlock` lets the right password in again."""
    user = site.enroll("910003", name="鈴木 一郎", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    for attempt in (1, 2):
        log_in(page, site, "wrong-pass1")
        expect(page.locator("#error")).to_have_attribute("data-code", "bad_credentials")
        expect(page.locator("#lock-warning")).to_contain_text("3回連続")
        shots(page, f"failure-{attempt}")
        page.click("#error-action")  # ログイン画面へ
        expect(page).to_have_url(site.url + "/auth/login")
    log_in(page, site, "wrong-pass1")
    expect(page.locator("#error")).to_have_attribute("data-code", "locked")
    expect(page.locator("h1")).to_have_text("ログインパスワードロック")
    expect(page.locator("main")).to_contain_text("お取引店またはヘルプデスク")
    shots(page, "locked")
    # Issue 15 item 10: from now on the password page itself is the lock page; no password
    # is asked for that could not work.
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page.locator("#error")).to_have_attribute("data-code", "locked")
    expect(page.get_by_label("パスワード", exact=True)).to_have_count(0)
    shots(page, "locked-at-password-page")

    config = str(site.ca.config_path)
    assert off_thread(gateway_cli.main, ["--config", config, "users", "unlock", user.user_id],
                      clock=site.clock) == 0
    log_in(page, site, user.password)
    expect_first_screen(page, site, user.user_id)
    shots(page, "unlocked-first-screen")
    context.close()


def test_4_renewal_offered_20_days_before_expiry_R_CERT_6(
        chromium: Any, site_in_the_past: GatewayHarness, shots: Shots) -> None:
    """§2.10.1: 20 days before expiry 証明書更新 sits beside ログイン; the renewal form's file
    opens with the login password and logs in."""
    site = site_in_the_past
    user = site.enroll("910004", customer="株式会社ABC商事")  # 345 days ago
    site.clock.set(user.not_after - timedelta(days=20))
    # The user changes the password every 90 days, as R-PW-2 makes them.
    result = site.run(site.auth.change_password(user.user_id, user.password, NEW_PASSWORD))
    assert result.status.value == "changed"

    context = open_context(chromium, site, who=user)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    expect(page.locator("#cert-renew")).to_have_text("証明書更新")
    expect(page.locator("#renew-offer")).to_be_visible()
    expect(page.locator("#cert-validity")).to_contain_text("残り20日")
    shots(page, "renewal-offered")
    page.click("#cert-renew")  # no password needed here (§2.10.1(2))
    expect(page).to_have_url(site.url + "/auth/renew")
    shots(page, "renewal-form")
    page.get_by_label("ログインパスワード").fill(NEW_PASSWORD)
    show_issuing_screen(page, shots)
    expect(page).to_have_url(site.url + "/auth/download")
    expect(page.locator("#file-password")).to_contain_text("ログインパスワード")
    shots(page, "renewal-download")
    with page.expect_download() as info:
        page.click("#download")
    renewed = site.directory / "renewed.p12"
    info.value.save_as(renewed)
    _, cert, _ = pkcs12.load_key_and_certificates(renewed.read_bytes(), NEW_PASSWORD.encode())
    assert cert is not None and cert.not_valid_after_utc > user.not_after
    context.close()

    context = open_context(chromium, site, pfx=renewed, passphrase=NEW_PASSWORD)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    expect(page.locator("#cert-renew")).to_have_count(0)
    shots(page, "renewed-password-page")
    log_in(page, site, NEW_PASSWORD)
    expect_first_screen(page, site, user.user_id)
    shots(page, "renewed-first-screen")
    context.close()


def type_on_software_keyboard(page: Any, text: str, *, tap: bool = False) -> None:
    """Enter `text` with the on-screen keys only (Shift for capitals)."""
    dialog = page.get_by_role("dialog")
    shift = dialog.locator('[data-action="shift"]')
    for char in text:
        wants_upper = char.isupper()
        if (shift.get_attribute("aria-pressed") == "true") != wants_upper:
            shift.tap() if tap else shift.click()
        key = dialog.locator(f'.sk-key[data-key="{char.lower()}"]')
        key.tap() if tap else key.click()


def test_5_software_keyboard_by_clicks_and_taps_R_UI_3(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """§2.4: the password entered by clicks alone; cancel discards; Escape and Tab work;
    on a phone the keys are tapped."""
    user = site.enroll("910005", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    field = page.get_by_label("パスワード", exact=True)
    opener = page.get_by_role("button", name="ソフトウェアキーボードを開く")

    # Keyboard only: open with Enter, press the focused key, Escape discards.
    opener.focus()
    page.keyboard.press("Enter")
    dialog = page.get_by_role("dialog", name="ソフトウェアキーボード")
    expect(dialog).to_be_visible()
    expect(dialog.locator(".sk-key").first).to_be_focused()
    page.keyboard.press("Enter")
    expect(dialog.locator(".sk-display")).to_have_text("●")
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0)
    expect(opener).to_be_focused()
    expect(field).to_have_value("")

    # Mouse: キャンセル discards what was typed.
    opener.click()
    type_on_software_keyboard(page, "abc")
    dialog.get_by_role("button", name="キャンセル").click()
    expect(field).to_have_value("")

    # Mouse: the whole password, then 確定.
    opener.click()
    type_on_software_keyboard(page, user.password)
    expect(dialog.locator(".sk-display")).to_have_text("●" * len(user.password))
    shots(page, "keyboard")
    dialog.get_by_role("button", name="確定").click()
    expect(field).to_have_value(user.password)
    shots(page, "confirmed")
    page.click("#login")
    expect_first_screen(page, site, user.user_id)
    context.close()

    # Touch, on a phone.
    context = open_context(chromium, site, who=user, viewport=PHONE, has_touch=True,
                           is_mobile=True)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    shots(page, "phone-password-page")
    page.get_by_role("button", name="ソフトウェアキーボードを開く").tap()
    type_on_software_keyboard(page, user.password, tap=True)
    shots(page, "phone-keyboard")
    page.get_by_role("dialog").get_by_role("button", name="確定").tap()
    expect(page.get_by_label("パスワード", exact=True)).to_have_value(user.password)
    # The desktop window's session is still open: the phone is offered 再ログイン (§3.1 note).
    expect(page.locator("#relogin-offer")).to_be_visible()
    page.get_by_role("button", name="再ログイン").tap()
    expect_first_screen(page, site, user.user_id)
    shots(page, "phone-first-screen")
    context.close()


def test_6_logout_timeout_and_relogin_R_SES_1_R_SES_2(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """§3.1 logout; §2.8 the next click after 31 idle minutes; §3.1 note: 再ログイン after
    closing the window without logging out."""
    user = site.enroll("910006", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    log_in(page, site, user.password)
    expect_first_screen(page, site, user.user_id)
    expect(page.locator("#last-login")).to_contain_text("初回")

    # §3.1: one click on the backend's header button to the completion message.
    page.click("#logout")
    expect(page).to_have_url(site.url + "/auth/logout")
    expect(page.locator("#logged-out")).to_have_text("ログアウトが完了しました。")
    expect(page.locator(".identity")).to_have_count(0)
    shots(page, "logged-out")
    page.goto(site.url + "/trade/forward")  # the old session is gone
    expect(page).to_have_url(site.url + "/auth/")

    # Idle timeout: the next click after 31 minutes shows the timeout page.
    log_in(page, site, user.password)
    expect_first_screen(page, site, user.user_id)
    last_login = re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d$")  # JST, as in §2.2(5)
    expect(page.locator("#last-login")).to_have_text(last_login)
    shots(page, "first-screen-with-last-login")
    site.clock.advance(timedelta(minutes=31))
    page.get_by_role("link", name="為替予約取引入力").click()
    expect(page.locator("#error")).to_have_attribute("data-code", "session_timeout")
    expect(page.locator("h1")).to_have_text("セッションタイムアウト")
    shots(page, "session-timeout")
    page.click("#error-action")
    expect(page).to_have_url(site.url + "/auth/login")

    # Closing the window without logging out; a new window is offered 再ログイン.
    page.get_by_label("パスワード", exact=True).fill(user.password)
    page.click("#login")
    expect_first_screen(page, site, user.user_id)
    context.close()
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page.locator("#relogin-offer")).to_contain_text("再ログイン")
    expect(page.locator("#login")).to_have_text("再ログイン")
    shots(page, "relogin-offer")
    page.get_by_label("パスワード", exact=True).fill(user.password)
    page.click("#login")
    expect_first_screen(page, site, user.user_id)
    context.close()


def test_7_language_switch_and_phone_layout_R_UI_3(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """English on request, remembered in the `lang` cookie; nothing overflows at 390 px."""
    context = open_context(chromium, site, viewport=PHONE, has_touch=True, is_mobile=True)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    shots(page, "phone-ja")
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("#cert-login")).to_have_text("Certificate login")
    cookie = next(c for c in context.cookies() if c["name"] == "lang")
    assert cookie["value"] == "en" and cookie["secure"] and cookie["sameSite"] == "Strict"
    shots(page, "phone-en")
    page.click("#cert-acquire")
    expect(page.get_by_role("heading", level=1)).to_have_text("Certificate application")
    expect(page.get_by_label("Certificate password")).to_be_visible()
    for path in ("/auth/", "/auth/acquire"):
        page.goto(site.url + path)
        width = page.evaluate("() => document.documentElement.scrollWidth")
        assert width <= PHONE["width"], (path, width)
    shots(page, "phone-en-acquire")
    page.get_by_role("link", name="日本語").click()
    expect(page.locator("html")).to_have_attribute("lang", "ja")
    expect(page.get_by_role("heading", level=1)).to_have_text("電子証明書発行申請")
    context.close()


def reacquire_and_log_in(chromium: Any, site: GatewayHarness, page: Any, user_id: str,
                         password: str, acquisition: str, shots: Shots) -> None:
    """From an error page whose button is 電子証明書取得: get a new certificate with the user
    ID, login password and original acquisition password, then log in with the new file."""
    page.click("#error-action")  # 電子証明書取得
    expect(page).to_have_url(site.url + "/auth/acquire")
    page.get_by_label("ユーザID").fill(user_id)
    page.get_by_label("パスワード", exact=True).fill(password)
    page.get_by_label("証明書パスワード").fill(acquisition)
    show_issuing_screen(page, shots)
    expect(page).to_have_url(site.url + "/auth/download")
    # Issue 15 item 5: a re-acquisition is told to log in with the current password.
    expect(page.locator("#issued")).to_have_text("電子証明書の再発行が完了しました。")
    expect(page.locator("main")).to_contain_text("現在お使いのログインパスワードでログイン")
    expect(page.locator("main")).not_to_contain_text("初回は仮パスワード")
    shots(page, "reacquisition-download")
    with page.expect_download() as info:
        page.click("#download")
    fresh = site.directory / f"{user_id}-reacquired.p12"
    info.value.save_as(fresh)
    page.context.close()

    context = open_context(chromium, site, pfx=fresh, passphrase=acquisition)
    page = context.new_page()
    log_in(page, site, password)
    expect_first_screen(page, site, user_id)
    context.close()


def test_8_certificate_cut_over_by_the_migration_R_CUT_1(
        chromium: Any, campaign_site: GatewayHarness, shots: Shots) -> None:
    """The notice's timeline: before the day re-acquisition says when it opens; from the day
    the old certificate shows the migration page, and the original passwords re-acquire."""
    site = campaign_site
    password = site.add_user("910008", customer="株式会社ABC商事")
    original = site.acquisition_password("910008")
    site.clock.set(ISSUED_OLD)
    old = site.acquire("910008", password, original)

    site.clock.set(CUTOVER_DAY - timedelta(seconds=1))
    context = open_context(chromium, site)
    page = context.new_page()
    page.goto(site.url + "/auth/acquire")
    page.get_by_label("ユーザID").fill("910008")
    page.get_by_label("パスワード", exact=True).fill(password)
    page.get_by_label("証明書パスワード").fill(original)
    page.click("#acquire")
    expect(page.locator("#error")).to_have_attribute("data-code", "acquisition_not_open")
    expect(page.locator("#error")).to_contain_text("から可能です。それより前に再取得することはできません。")
    expect(page.get_by_label("ユーザID")).to_have_value("910008")
    shots(page, "acquisition-not-open")
    context.close()

    site.clock.set(TODAY)
    context = open_context(chromium, site, who=old)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page.locator("#error")).to_have_attribute("data-code", "cert_cut_over")
    expect(page.locator("#error")).to_contain_text("移行")
    expect(page.locator("main")).to_contain_text("電子証明書取得用パスワード")
    shots(page, "cut-over")
    reacquire_and_log_in(chromium, site, page, "910008", password, original, shots)


def test_9_expired_certificate_says_get_a_new_one_R_GW_1_R_CERT_6(
        chromium: Any, site_in_the_past: GatewayHarness, shots: Shots) -> None:
    """§2.10.1: an expired certificate cannot be renewed. The browser presents it and gets the
    page that says so (not a TLS error), whose button leads to 電子証明書取得, where the user
    ID, login password and original acquisition password get a new one that logs in."""
    site = site_in_the_past
    password = site.add_user("910009", customer="株式会社ABC商事")
    acquisition = site.acquisition_password("910009")
    old = site.acquire("910009", password, acquisition)
    site.clock.set(old.not_after + timedelta(days=1))
    site.ca.time_passed()  # a year of responder renewals and CRL re-signs
    # The user changes the password every 90 days, as R-PW-2 makes them.
    result = site.run(site.auth.change_password("910009", password, NEW_PASSWORD))
    assert result.status.value == "changed"

    context = open_context(chromium, site, who=old)
    page = context.new_page()
    page.goto(site.url + "/auth/")
    page.click("#cert-login")
    expect(page.locator("#error")).to_have_attribute("data-code", "cert_expired")
    expect(page.locator("main")).to_contain_text("有効期限が切れた電子証明書は更新できません")
    expect(page.locator("#password")).to_have_count(0)
    shots(page, "certificate-expired")
    reacquire_and_log_in(chromium, site, page, "910009", NEW_PASSWORD, acquisition, shots)


def test_10_a_session_ended_elsewhere_says_why_R_SES_2(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """Issue 15 item 1: the window whose session was ended by 再ログイン in another window,
    and later by the helpdesk's reset (the real CLI), is told why and what to do."""
    user = site.enroll("910010", customer="株式会社ABC商事")
    first_context = open_context(chromium, site, who=user)
    first = first_context.new_page()
    log_in(first, site, user.password)
    expect_first_screen(first, site, user.user_id)

    second_context = open_context(chromium, site, who=user)
    second = second_context.new_page()
    second.goto(site.url + "/auth/login")
    expect(second.locator("#relogin-offer")).to_be_visible()
    second.get_by_label("パスワード", exact=True).fill(user.password)
    second.click("#login")  # 再ログイン
    expect_first_screen(second, site, user.user_id)

    first.get_by_role("link", name="為替予約取引入力").click()
    expect(first.locator("#error")).to_have_attribute("data-code", "session_ended_relogin")
    expect(first.locator("h1")).to_have_text("ログインが終了しました")
    expect(first.locator("#error")).to_contain_text("別の画面で再ログインされたため")
    expect(first.locator("main")).to_contain_text("再ログインした画面をご利用ください")
    shots(first, "ended-by-relogin")
    first_context.close()

    config = str(site.ca.config_path)
    assert off_thread(gateway_cli.main, ["users", "reset-password", user.user_id,
                                         "--config", config], clock=site.clock) == 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # the gateway polls the helpdesk's events (0.25 s)
        second.goto(site.url + "/trade/confirm")
        if second.locator("#error").count():
            break
    expect(second.locator("#error")).to_have_attribute("data-code",
                                                       "session_ended_password_reset")
    expect(second.locator("main")).to_contain_text("仮パスワードでログインし")
    shots(second, "ended-by-helpdesk-reset")
    second.click("#error-action")
    expect(second).to_have_url(site.url + "/auth/login")
    second_context.close()


def test_11_manual_change_logout_and_reset_wording_R_PW_2(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """§2.5(3) 「パスワードを変更しました。」 at the top after a manual change; §3.1 the
    gateway header's ログアウト is one click; §2.2(4) after a helpdesk reset the change page
    says so (not 初回ログイン)."""
    user = site.enroll("910011", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    log_in(page, site, user.password)
    expect_first_screen(page, site, user.user_id)
    page.click("#password-change")
    change_password(page, user.password, NEW_PASSWORD)
    expect(page).to_have_url(site.url + "/auth/password")
    expect(page.locator("#changed")).to_have_text("パスワードを変更しました。")
    box = page.locator("#changed").bounding_box()
    assert box is not None and box["y"] < page.locator("#change").bounding_box()["y"]
    shots(page, "manually-changed")
    page.click("#header-logout")
    expect(page.locator("#logged-out")).to_have_text("ログアウトが完了しました。")
    shots(page, "logged-out-from-gateway-header")

    config = str(site.ca.config_path)
    temporary_out = io.StringIO()
    with contextlib.redirect_stdout(temporary_out):
        assert off_thread(gateway_cli.main, ["--config", config, "users", "reset-password",
                                             user.user_id], clock=site.clock) == 0
    temporary = re.search(r"temporary login password: (\S+)", temporary_out.getvalue())
    assert temporary is not None
    log_in(page, site, temporary.group(1))
    expect(page.locator("#must-change")).to_have_attribute("data-case", "reset")
    expect(page.locator("#must-change")).to_contain_text("ヘルプデスクにてパスワードの再設定")
    expect(page.locator("#must-change")).not_to_contain_text("初回ログイン")
    shots(page, "change-after-reset")
    context.close()


def test_12_renewal_not_open_and_days_left_R_CERT_6(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """Issue 15 items 6 and 9: a new certificate shows 「残り365日」; /auth/renew outside the
    window says when renewal opens (日本時間) and asks for nothing."""
    user = site.enroll("910012", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    expect(page.locator("#cert-validity")).to_contain_text("残り365日")
    page.goto(site.url + "/auth/renew")
    expect(page.locator("#renewal-not-open")).to_contain_text("(日本時間)から可能です")
    expect(page.get_by_label("ログインパスワード")).to_have_count(0)
    shots(page, "renewal-not-open")
    context.close()


def test_13_trading_screen_language_width_and_header_R_UI_3(
        chromium: Any, site: GatewayHarness, shots: Shots) -> None:
    """Issue 15 item 11: the demo's screen follows the lang cookie, says リブオーダー, shows
    the quote time with its zone, and fits 390 px; its header is the gateway's."""
    user = site.enroll("910013", name="高橋 美咲", customer="株式会社ABC商事")
    context = open_context(chromium, site, who=user, viewport=PHONE, has_touch=True,
                           is_mobile=True)
    page = context.new_page()
    log_in(page, site, user.password)
    expect_first_screen(page, site, user.user_id)
    expect(page.locator("main")).to_contain_text("リブオーダー入力")
    expect(page.locator("#quote-zone")).to_have_text("(日本時間)")
    expect(page.locator("#quote-at")).to_have_text(
        re.compile(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d$"))
    width = page.evaluate("() => document.documentElement.scrollWidth")
    assert width <= PHONE["width"], width
    shots(page, "phone-trading-ja")
    page.get_by_role("link", name="English").click()
    expect(page.locator("html")).to_have_attribute("lang", "en")
    expect(page.locator("main")).to_contain_text("Leave order entry")
    expect(page.locator("#logout")).to_have_text("Log out")
    page.wait_for_function(
        "() => Number(document.getElementById('quote-board').dataset.updates) >= 1")
    assert page.evaluate("() => document.documentElement.scrollWidth") <= PHONE["width"]
    shots(page, "phone-trading-en")
    page.click("#password-change")
    expect(page.locator("html")).to_have_attribute("lang", "en")  # the gateway follows too
    page.get_by_role("link", name="日本語").click()
    context.close()

    context = open_context(chromium, site, who=user)
    page = context.new_page()
    page.goto(site.url + "/auth/login")
    expect(page.locator("#relogin-offer")).to_be_visible()
    page.get_by_label("パスワード", exact=True).fill(user.password)
    page.click("#login")  # 再ログイン
    expect_first_screen(page, site, user.user_id)
    shots(page, "desktop-trading")
    page.click("#logout")
    expect(page.locator("#logged-out")).to_be_visible()
    context.close()

