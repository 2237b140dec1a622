"""`make run` prints the first welcome letter only while it is true (issue 15 item 17)."""

from __future__ import annotations

from datetime import timedelta

from demo.launch import DEMO_USER, welcome_text
from tests.gateway.conftest import GatewayHarness


def test_letter_shown_until_login_then_how_to_get_new_passwords(gw: GatewayHarness) -> None:
    """Fresh: the letter. After the demo user's first login, or a helpdesk reset: no stale
    passwords, but the two commands that issue new ones."""
    user_id = DEMO_USER[0]
    temporary = gw.add_user(user_id, password=None)
    letter = gw.directory / "welcome.txt"
    letter.write_text(f"  temporary login password: {temporary}\n")
    shown = welcome_text(gw.config, user_id, letter)
    assert temporary in shown and "電子証明書取得" in shown
    gw.run(gw.auth.login(user_id, temporary))
    after_login = welcome_text(gw.config, user_id, letter)
    assert temporary not in after_login
    assert f"sekisho-gateway users reset-password {user_id}" in after_login
    assert f"sekisho-ca acquisition-password {user_id}" in after_login


def test_letter_not_shown_after_a_reset(gw: GatewayHarness) -> None:
    """A helpdesk reset after the letter was written makes its password wrong."""
    user_id = DEMO_USER[0]
    temporary = gw.add_user(user_id, password=None)
    letter = gw.directory / "welcome.txt"
    letter.write_text(f"  temporary login password: {temporary}\n")
    gw.clock.advance(timedelta(minutes=5))
    gw.run(gw.auth.reset_password(user_id, actor="helpdesk:test"))
    assert temporary not in welcome_text(gw.config, user_id, letter)
    missing = welcome_text(gw.config, "100999", letter)
    assert "no longer holds" in missing
