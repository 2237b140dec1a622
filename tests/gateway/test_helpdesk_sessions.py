"""A helpdesk command that removes a right to log in ends the user's live sessions at once,
in every gateway process (issue 10 item 9, R-SES-2, §2.6).

`sekisho-gateway users disable` and `users reset-password` run as their own process and write
the gateway's store; the gateways follow the store's session-event sequence. Here a real
`sekisho-gateway serve` process and the in-process test gateway share one database (SQLite
and PostgreSQL), the CLI runs as a third process, and curl / aiohttp are the clients. The
session itself is shared (issue 12): one login serves both gateways.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.gateway.conftest import (
    BOTH_STORES,
    Enrolled,
    GatewayHarness,
    csrf_of,
    wait_closed_by_server,
)
from tests.support.servers import free_port

PROJECT = Path(__file__).resolve().parents[2]
pytestmark = BOTH_STORES


def _cli(gw: GatewayHarness, *args: str) -> subprocess.CompletedProcess[str]:
    """The helpdesk CLI as its own process (what the helpdesk runs)."""
    return subprocess.run([sys.executable, "-m", "gateway", "--config", str(gw.ca.config_path),
                           *args], capture_output=True, text=True, timeout=60, check=False,
                          cwd=PROJECT)


@pytest.fixture
def second_gateway(gw: GatewayHarness) -> Iterator[GatewayHarness]:
    """A real `sekisho-gateway serve` process on its own port, same database and CA."""
    port = free_port()
    text = gw.ca.config_path.read_text()
    old_port = gw.url.rsplit(":", 1)[1]
    config = gw.ca.config_path.with_name("config-second.toml")
    config.write_text(text.replace(f"127.0.0.1:{old_port}", f"127.0.0.1:{port}"))
    log = config.with_name("gateway-second.log")
    with log.open("wb") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "gateway", "--config", str(config), "serve"],
            stdout=subprocess.DEVNULL, stderr=stderr, cwd=PROJECT)
    try:
        deadline = time.monotonic() + 60
        while "gateway listening" not in log.read_text() and time.monotonic() < deadline:
            assert process.poll() is None, log.read_text()
            time.sleep(0.1)
        assert "gateway listening" in log.read_text(), log.read_text()
        yield dataclasses.replace(gw, url=f"https://127.0.0.1:{port}")
    finally:
        process.terminate()
        process.wait(timeout=15)


def _ended_within(gw: GatewayHarness, who: Enrolled, jar: str, code: str | None,
                  seconds: float = 10.0) -> float:
    """Seconds until the session's next request gets the session-ended page `code` (the
    first request after the end, on whichever gateway, is told why), or, with None, the way
    to the login page (the reason was told already)."""
    start = time.monotonic()
    while time.monotonic() - start < seconds:
        page = gw.curl("/trade/forward", who, "-b", jar)
        if code is not None and f'data-code="{code}"' in page.stdout:
            assert page.stdout.endswith("\n401")
            return time.monotonic() - start
        if code is None and page.stdout.endswith("\n303"):
            return time.monotonic() - start
        assert page.stdout.endswith("\n200"), page.stdout[-300:]
        time.sleep(0.05)
    raise AssertionError(f"the session did not end within {seconds} s")


@pytest.mark.parametrize(("command", "code"), [
    ("disable", "session_ended_disabled"),
    ("reset-password", "session_ended_password_reset"),
])
def test_helpdesk_cli_ends_live_sessions_in_every_gateway_process_R_SES_2(
        gw: GatewayHarness, second_gateway: GatewayHarness, command: str, code: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """curl logs in on a real gateway process; the same cookie is served by the in-process
    gateway too (one shared session). After the CLI (a third process) returns, the next
    request through the real process gets the page saying why, and the in-process gateway
    refuses the cookie, each within about a second (the session-event poll is 0.25 s)."""
    user = gw.enroll("720001")
    jar, login = second_gateway.curl_login(user, "-L")
    assert login.stdout.endswith("\n200"), login.stdout[-300:]
    assert gw.curl("/trade/forward", user, "-b", jar).stdout.endswith("\n200")
    result = _cli(gw, "users", command, "720001")
    assert result.returncode == 0, result.stderr
    elapsed = [_ended_within(second_gateway, user, jar, code),
               _ended_within(gw, user, jar, None)]
    with capsys.disabled():
        print(f"\n{command}: CLI returned -> session-ended page after "
              f"{elapsed[0] * 1000:.0f} ms (process) / {elapsed[1] * 1000:.0f} ms (in-process)")


async def test_helpdesk_reset_closes_the_websocket_relay_R_SES_2(gw: GatewayHarness) -> None:
    """The session's WebSocket relay is cancelled too (close from the gateway)."""
    user = gw.enroll("720003")
    async with gw.browser(user) as browser:
        await browser.login()
        assert browser.session is not None
        async with browser.session.ws_connect(gw.url + "/ws/quotes") as ws:
            await ws.receive_json(timeout=5)
            result = _cli(gw, "users", "reset-password", "720003")
            assert result.returncode == 0, result.stderr
            await wait_closed_by_server(ws)
        page = await browser.get("/trade/forward")
        assert page.status == 401 and page.error == "session_ended_password_reset"


def test_a_lock_in_one_gateway_process_ends_the_session_in_another_R_LOCK_1(
        gw: GatewayHarness, second_gateway: GatewayHarness) -> None:
    """Three wrong passwords on one gateway (here the in-process one, over HTTPS) lock the
    user; the session the user holds on the other gateway process ends, saying why."""
    user = gw.enroll("720005")
    jar, login = second_gateway.curl_login(user, "-L")
    assert login.stdout.endswith("\n200"), login.stdout[-300:]
    wrong_jar = str(gw.directory / "curl-wrong.txt")
    page = gw.curl("/auth/login", user, "-c", wrong_jar, "-b", wrong_jar)
    for _ in range(3):
        gw.curl("/auth/login", user, "-c", wrong_jar, "-b", wrong_jar,
                "--data-urlencode", f"csrf={csrf_of(page.stdout)}",
                "--data-urlencode", "password=wrong-pass1")
    _ended_within(second_gateway, user, jar, "session_ended_locked")
