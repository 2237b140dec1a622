"""The demo trading backend behind the gateway (R-PX-1, R-PX-2, R-UI-2; manual §1.3.2, §2.2(5))."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from datetime import datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import WSMsgType, web
from aiohttp.test_utils import TestClient, TestServer

from demo.__main__ import parse_listen
from demo.backend import MAX_ECHO_BODY, build_app
from policy.clock import FakeClock
from tests.support.servers import free_port

Client = TestClient[web.Request, web.Application]
REPO = Path(__file__).resolve().parents[2]


def identity(role: str = "admin", **extra: str) -> dict[str, str]:
    """The headers the gateway sets for an authenticated user (Japanese names percent-encoded)."""
    headers = {
        "X-Sekisho-User": "2004000003",
        "X-Sekisho-Role": role,
        "X-Sekisho-Customer": quote("株式会社ABC商事"),
        "X-Sekisho-Name": quote("法人ユーザー1"),
        "X-Sekisho-Last-Login": "2013-08-06T00:01:41+00:00",
        "X-Sekisho-Cert-Serial": "1f2e3d4c5b6a7988",
    }
    headers.update(extra)
    return headers


@pytest.fixture
async def client(clock: FakeClock) -> AsyncIterator[Client]:
    """The backend on a loopback ephemeral port with a test client."""
    async with TestClient(TestServer(build_app(clock=clock))) as test_client:
        yield test_client


async def receive_json(ws: aiohttp.ClientWebSocketResponse) -> dict[str, object]:
    """The next JSON message, failing the test after two seconds."""
    message = await ws.receive(timeout=2)
    assert message.type is WSMsgType.TEXT, message
    return message.json()


class TestFirstScreen:
    """The first screen after login (§2.2(5), R-UI-2)."""

    async def test_shows_decoded_identity_R_UI_2(self, client: Client) -> None:
        """Customer name, user ID, user name and last login (JST) appear, decoded from UTF-8."""
        response = await client.get("/", headers=identity())
        assert response.status == 200
        page = await response.text()
        assert "外為Web 為替予約サービス" in page
        assert '<dd id="customer-name">株式会社ABC商事</dd>' in page
        assert '<dd id="user-id">2004000003</dd>' in page
        assert '<dd id="user-name">法人ユーザー1</dd>' in page
        assert '<dd id="last-login">2013/08/06 09:01:41</dd>' in page

    async def test_identity_is_html_escaped_R_UI_2(self, client: Client) -> None:
        """Markup in a customer or user name is shown as text, never interpreted."""
        headers = identity(**{"X-Sekisho-Customer": quote("<script>alert(1)</script>&商事"),
                              "X-Sekisho-Name": quote('"><img src=x>')})
        page = await (await client.get("/", headers=headers)).text()
        assert "&lt;script&gt;alert(1)&lt;/script&gt;&amp;商事" in page
        assert "<script>alert(1)" not in page
        assert "&#34;&gt;&lt;img src=x&gt;" in page

    async def test_first_login_has_no_last_login_R_UI_2(self, client: Client) -> None:
        """An empty last-login header is shown as a first login."""
        headers = identity(**{"X-Sekisho-Last-Login": ""})
        page = await (await client.get("/", headers=headers)).text()
        assert '<dd id="last-login">なし(初回ログイン)</dd>' in page  # the gateway's brackets

    async def test_language_follows_the_lang_cookie_R_UI_3(self, client: Client) -> None:
        """Japanese pages carry no English (and the manual's リブオーダー); the `lang` cookie
        or `?lang=en` gives English pages; times carry their zone."""
        japanese = await (await client.get("/", headers=identity())).text()
        visible = re.sub(r"<script.*?</script>|<style.*?</style>|<[^>]+>", " ", japanese,
                         flags=re.S)
        # Proper names and the manual's ユーザID only: service, pairs, customer, the switch.
        for name in ("外為Web", "ユーザID", "USD/JPY", "EUR/JPY", "FX", "ABC", "English"):
            visible = visible.replace(name, "")
        assert not re.search(r"[A-Za-z]{2,}", visible), visible
        assert "リブオーダー" in japanese and "リーブ" not in japanese
        assert 'id="quote-zone">(日本時間)' in japanese
        english = await (await client.get("/", headers={**identity(), "Cookie": "lang=en"})
                         ).text()
        assert '<html lang="en">' in english and "Leave order entry" in english
        assert 'id="quote-zone">(Japan time)' in english
        queried = await (await client.get("/trade/forward?lang=en", headers=identity())).text()
        assert "This demo does not implement trading." in queried

    async def test_logout_is_a_form_with_the_gateway_csrf_token_R_SES_3(
            self, client: Client) -> None:
        """§3.1: the header's ログアウト POSTs to the gateway with the session's token."""
        page = await (await client.get("/", headers={**identity(),
                                                      "X-Sekisho-Csrf": "tok-123"})).text()
        assert '<form method="post" action="/auth/logout">' in page
        assert '<input type="hidden" name="csrf" value="tok-123">' in page

    async def test_quote_board_is_self_contained(self, client: Client) -> None:
        """The board has stable ids and an update counter, and loads nothing from elsewhere."""
        response = await client.get("/", headers=identity())
        page = await response.text()
        for element in ("usdjpy-bid", "usdjpy-ask", "eurjpy-bid", "eurjpy-ask"):
            assert f'id="{element}"' in page
        assert 'id="quote-board" data-updates="0"' in page
        assert "/ws/quotes" in page
        assert not re.search(r"(src|href)=\"(https?:)?//", page)
        nonce = re.search(r'<script nonce="([^"]+)">', page)
        assert nonce is not None
        assert f"script-src 'nonce-{nonce.group(1)}'" in response.headers["Content-Security-Policy"]

    @pytest.mark.parametrize(("role", "shown"), [("admin", True), ("contractor", False)])
    async def test_menu_by_role(self, client: Client, role: str, shown: bool) -> None:
        """Both roles see the four trading functions; only admins see ユーザ制限設定 (§1.3.2)."""
        page = await (await client.get("/", headers=identity(role))).text()
        for item, label in [("forward", "為替予約取引入力"), ("leave-order", "リブオーダー入力"),
                            ("confirm", "コンファーム"), ("manage", "取引管理")]:
            assert f'<a href="/trade/{item}">{label}</a>' in page
        assert ('<a href="/admin/restrictions">ユーザ制限設定</a>' in page) is shown

    async def test_trade_placeholder(self, client: Client) -> None:
        """A menu function opens a placeholder saying the demo does not trade; others are 404."""
        response = await client.get("/trade/confirm", headers=identity("contractor"))
        assert response.status == 200
        assert "このデモでは取引機能は実装していません" in await response.text()
        assert (await client.get("/trade/nothing", headers=identity())).status == 404


class TestAuthorization:
    """Defence in depth behind the gateway (R-PX-1, R-PX-2)."""

    @pytest.mark.parametrize("path", ["/", "/trade/forward", "/admin/restrictions", "/ws/quotes",
                                      "/api/echo", "/api/slow", "/bench"])
    async def test_no_identity_is_401_R_PX_1(self, client: Client, path: str) -> None:
        """A request the gateway did not vouch for (no X-Sekisho-User) is refused with 401."""
        assert (await client.get(path)).status == 401
        assert (await client.get(path, headers=identity(**{"X-Sekisho-User": ""}))).status == 401

    async def test_unknown_role_is_403_R_PX_2(self, client: Client) -> None:
        """A role other than admin or contractor is refused."""
        assert (await client.get("/", headers=identity("root"))).status == 403

    async def test_restrictions_contractor_403_R_PX_2(self, client: Client) -> None:
        """ユーザ制限設定 refuses a contractor even if the gateway let one through (§1.3.2)."""
        response = await client.get("/admin/restrictions", headers=identity("contractor"))
        assert response.status == 403

    async def test_restrictions_admin_200_R_PX_2(self, client: Client) -> None:
        """An admin gets the ユーザ制限設定 page (the twin of the 403 test)."""
        response = await client.get("/admin/restrictions", headers=identity("admin"))
        assert response.status == 200
        assert "<h1>ユーザ制限設定</h1>" in await response.text()

    async def test_healthz_needs_no_identity(self, client: Client) -> None:
        """/healthz answers "ok" without identity headers."""
        response = await client.get("/healthz")
        assert response.status == 200
        assert await response.text() == "ok"


class TestQuotes:
    """The live quote WebSocket behind the board."""

    async def test_quotes_for_both_pairs(self, client: Client, clock: FakeClock) -> None:
        """Each update quotes USD/JPY and EUR/JPY, ask above bid, stamped by the clock."""
        async with client.ws_connect("/ws/quotes", headers=identity()) as ws:
            quotes = [await receive_json(ws) for _ in range(4)]
        assert [q["pair"] for q in quotes] == ["USD/JPY", "EUR/JPY"] * 2
        for q in quotes:
            assert isinstance(q["bid"], float) and isinstance(q["ask"], float)
            assert q["ask"] > q["bid"]
            assert datetime.fromisoformat(str(q["at"])) == clock.now()

    async def test_same_seed_same_walk(self, client: Client) -> None:
        """The walk is deterministic for a given seed."""
        batches = []
        for _ in range(2):
            async with client.ws_connect("/ws/quotes?seed=7", headers=identity()) as ws:
                batches.append([await receive_json(ws) for _ in range(4)])
        assert batches[0] == batches[1]

    async def test_ping_gets_pong(self, client: Client) -> None:
        """{"type": "ping"} is answered with {"type": "pong"} between the quotes."""
        async with client.ws_connect("/ws/quotes", headers=identity()) as ws:
            await ws.send_json({"type": "ping"})
            for _ in range(10):
                if await receive_json(ws) == {"type": "pong"}:
                    break
            else:
                pytest.fail("no pong")

    async def test_client_close_is_clean(self, client: Client) -> None:
        """A client that closes gets a normal close and the server keeps serving."""
        ws = await client.ws_connect("/ws/quotes", headers=identity())
        await receive_json(ws)
        await asyncio.wait_for(ws.close(), timeout=2)
        assert ws.close_code == aiohttp.WSCloseCode.OK
        assert (await client.get("/healthz")).status == 200


class TestEcho:
    """/api/echo, which proxy tests use to see what reached the backend (R-PX-1)."""

    async def test_get_reports_request_and_identity_headers_R_PX_1(self, client: Client) -> None:
        """Method, path, query and every X-Sekisho-* header received are reported."""
        response = await client.get("/api/echo?a=1&a=2&b=x", headers=identity())
        body = await response.json()
        assert body["method"] == "GET"
        assert body["path"] == "/api/echo"
        assert body["query"] == {"a": ["1", "2"], "b": ["x"]}
        assert body["headers"]["X-Sekisho-User"] == ["2004000003"]
        assert body["headers"]["X-Sekisho-Customer"] == [quote("株式会社ABC商事")]
        assert body["headers"]["X-Sekisho-Cert-Serial"] == ["1f2e3d4c5b6a7988"]
        assert body["body_length"] == 0
        assert body["body_sha256"] == hashlib.sha256(b"").hexdigest()

    async def test_post_streams_body_hash(self, client: Client) -> None:
        """A chunked 3 MiB body is measured and hashed as it streams in."""
        chunk = bytes(range(256)) * 4096

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(3):
                yield chunk

        response = await client.post("/api/echo", data=chunks(), headers=identity())
        body = await response.json()
        assert body["method"] == "POST"
        assert body["body_length"] == 3 * len(chunk)
        assert body["body_sha256"] == hashlib.sha256(chunk * 3).hexdigest()

    @pytest.mark.parametrize(("size", "status"), [(MAX_ECHO_BODY, 200), (MAX_ECHO_BODY + 1, 413)])
    async def test_body_limit(self, client: Client, size: int, status: int) -> None:
        """Bodies up to 10 MiB are accepted; one byte more is 413."""
        response = await client.post("/api/echo", data=b"x" * size, headers=identity())
        assert response.status == status


class TestSlowAndBench:
    """/api/slow for proxy timeouts and /bench for benchmarks."""

    async def test_slow_sleeps(self, client: Client) -> None:
        """/api/slow answers after the requested time."""
        started = time.monotonic()
        response = await client.get("/api/slow?seconds=0.2", headers=identity())
        assert response.status == 200
        assert (await response.json()) == {"slept": 0.2}
        assert time.monotonic() - started >= 0.2

    @pytest.mark.parametrize("seconds", ["-1", "60.5", "soon", "nan"])
    async def test_slow_refuses_bad_seconds(self, client: Client, seconds: str) -> None:
        """Anything but 0 to 60 seconds is a 400."""
        response = await client.get(f"/api/slow?seconds={seconds}", headers=identity())
        assert response.status == 400

    async def test_bench_is_1kib(self, client: Client) -> None:
        """/bench answers a fixed 1 KiB plain-text body."""
        response = await client.get("/bench", headers=identity())
        assert response.status == 200
        assert response.content_type == "text/plain"
        assert len(await response.read()) == 1024


class TestMain:
    """`python -m demo`."""

    @pytest.mark.parametrize("value", ["0.0.0.0:8090", "192.0.2.1:80", "example.com:80",
                                       "127.0.0.1", "127.0.0.1:http"])
    def test_listen_refuses_non_loopback_or_malformed(self, value: str) -> None:
        """Only loopback host:port is accepted, since the backend trusts identity headers."""
        with pytest.raises(argparse.ArgumentTypeError, match=r"loopback|host:port"):
            parse_listen(value)

    @pytest.mark.parametrize(("value", "parsed"), [("127.0.0.1:8090", ("127.0.0.1", 8090)),
                                                   ("[::1]:9000", ("::1", 9000)),
                                                   ("localhost:1", ("localhost", 1))])
    def test_listen_accepts_loopback(self, value: str, parsed: tuple[str, int]) -> None:
        """Loopback addresses in host:port form are accepted."""
        assert parse_listen(value) == parsed

    @pytest.fixture
    def process(self) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
        """`python -m demo` on a free loopback port, killed if the test leaves it running."""
        port = free_port()
        proc = subprocess.Popen([sys.executable, "-m", "demo", "--listen", f"127.0.0.1:{port}"],
                                cwd=REPO, stderr=subprocess.PIPE)
        yield proc, port
        if proc.poll() is None:
            proc.kill()
            proc.wait()

    async def test_sigterm_closes_websockets_and_exits_0(
        self, process: tuple[subprocess.Popen[bytes], int]
    ) -> None:
        """On SIGTERM open quote sockets get 1001 (going away) and the process exits 0."""
        proc, port = process
        async with aiohttp.ClientSession() as session:
            for _ in range(200):
                with contextlib.suppress(aiohttp.ClientConnectionError):
                    async with session.get(f"http://127.0.0.1:{port}/healthz") as response:
                        assert await response.text() == "ok"
                        break
                await asyncio.sleep(0.05)
            else:
                pytest.fail("backend did not start")
            url = f"http://127.0.0.1:{port}/ws/quotes"
            async with session.ws_connect(url, headers=identity()) as ws:
                await receive_json(ws)
                proc.send_signal(signal.SIGTERM)
                while (await ws.receive(timeout=5)).type is WSMsgType.TEXT:
                    pass
                assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY
        assert await asyncio.to_thread(proc.wait, 10) == 0
