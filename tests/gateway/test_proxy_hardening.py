"""The proxy against a hostile client (issue 10 items 8, 11, 12, 13, 14; R-PX-1, R-PX-2):
spoofed identity headers, absolute-form and ambiguous targets, foreign WebSocket origins,
security headers, parser errors. Raw bytes over real TLS, the real demo backend behind."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.gateway.conftest import (
    SESSION_COOKIE,
    Enrolled,
    GatewayHarness,
    raw_exchange,
)
from tests.support.servers import free_port


async def _logged_in(gw: GatewayHarness, user_id: str, role: str = "contractor",
                     ) -> tuple[Enrolled, str]:
    """A user with a live session; returns the certificate and the session cookie."""
    user = gw.enroll(user_id, role=role)
    async with gw.browser(user) as browser:
        page = await browser.login()
        assert page.status == 200, page.text[:300]
        cookie = browser.cookie(SESSION_COOKIE)
    assert cookie
    return user, cookie


def _get(gw: GatewayHarness, who: Enrolled, cookie: str, target: str,
         extra: str = "") -> tuple[int, str, bytes]:
    port = gw.url.rsplit(":", 1)[1]
    request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
               f"Cookie: {SESSION_COOKIE}={cookie}\r\n{extra}Connection: close\r\n\r\n")
    answer = raw_exchange(gw, request.encode("latin-1"), who)
    head, _, body = answer.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode()
    assert status_line.startswith("HTTP/1.1 "), answer[:200]
    return int(status_line.split()[1]), head.decode("latin-1"), body


def _echo(body: bytes) -> dict:
    return dict(json.loads(body))


class TestIdentityHeaders:
    """Item 8: the backend sees only the gateway's identity and addresses."""

    async def test_underscore_and_case_spellings_never_reach_backend_R_PX_1(
            self, gw: GatewayHarness) -> None:
        """X_Sekisho_Role, X-Sekisho_User, x_SEKISHO_customer, X_Real_IP, X-Forwarded_For and
        X-Original-URL sent by the client: none arrives; ours do, once each; Host is the
        backend's and X-Forwarded-Host the configured public host."""
        user, cookie = await _logged_in(gw, "520001")
        spoofed = ("X_Sekisho_Role: admin\r\nX-Sekisho_User: 999999\r\n"
                   "x_SEKISHO_customer: Evil\r\nX-SEKISHO-NAME: Evil\r\n"
                   "X-Real-IP: 203.0.113.9\r\nX_Real_IP: 203.0.113.9\r\n"
                   "X-Forwarded_For: 203.0.113.9\r\nX-Original-URL: /admin/restrictions\r\n"
                   "Connection: X_Custom_Hop\r\nX-Custom-Hop: 1\r\n")
        status, _, body = await asyncio.to_thread(_get, gw, user, cookie, "/api/echo", spoofed)
        assert status == 200
        received = _echo(body)["received_headers"]
        names = [name.lower().replace("_", "-") for name, _ in received]
        values = {n.lower(): v for n, v in received}
        assert names.count("x-sekisho-role") == 1 and values["x-sekisho-role"] == "contractor"
        assert names.count("x-sekisho-user") == 1 and values["x-sekisho-user"] == "520001"
        assert names.count("x-sekisho-customer") == 1
        assert "evil" not in json.dumps(received).lower()
        assert "203.0.113.9" not in json.dumps(received)
        assert "x-original-url" not in names and "x-custom-hop" not in names
        assert values["x-real-ip"] == "127.0.0.1" and values["x-forwarded-for"] == "127.0.0.1"
        backend_port = gw.config.backend_url.rsplit(":", 1)[1]
        assert values["host"] == f"127.0.0.1:{backend_port}"
        assert values["x-forwarded-host"] == gw.url.removeprefix("https://")

    async def test_client_host_header_not_forwarded_R_PX_1(self, gw: GatewayHarness) -> None:
        """A client Host of evil.example goes nowhere: neither Host nor X-Forwarded-Host."""
        user, cookie = await _logged_in(gw, "520002")

        def send() -> bytes:
            request = (f"GET /api/echo HTTP/1.1\r\nHost: evil.example\r\n"
                       f"Cookie: {SESSION_COOKIE}={cookie}\r\nConnection: close\r\n\r\n")
            return raw_exchange(gw, request.encode(), user)

        answer = await asyncio.to_thread(send)
        assert answer.startswith(b"HTTP/1.1 200"), answer[:200]
        assert b"evil.example" not in answer.partition(b"\r\n\r\n")[2]


class TestTargets:
    """Items 11 and 13: the backend routes exactly the path the admin rule checked."""

    @pytest.mark.parametrize("target", [
        "http://127.0.0.1/api/echo", "https://evil.example/ws/quotes", "*",
    ])
    async def test_absolute_form_websocket_upgrade_is_4xx_R_PX_1(
            self, gw: GatewayHarness, target: str) -> None:
        """A WebSocket upgrade with an absolute-form (or asterisk) target: a 4xx, not a 5xx."""
        user, cookie = await _logged_in(gw, "520010")
        key = base64.b64encode(os.urandom(16)).decode()
        upgrade = (f"Upgrade: websocket\r\nSec-WebSocket-Key: {key}\r\n"
                   "Sec-WebSocket-Version: 13\r\nConnection: Upgrade\r\n")

        def send() -> bytes:
            port = gw.url.rsplit(":", 1)[1]
            request = (f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                       f"Cookie: {SESSION_COOKIE}={cookie}\r\n{upgrade}\r\n")
            return raw_exchange(gw, request.encode(), user)

        answer = await asyncio.to_thread(send)
        status = int(answer.split(b" ", 2)[1])
        assert 400 <= status < 500, answer[:300]

    @pytest.mark.parametrize("target", [
        "/admin;x=1/restrictions", "/admin/restrictions;.css", "/trade/..;/admin/restrictions",
        "/admin\\restrictions", "/trade/%2e%2e/admin/restrictions", "/trade%2f..%2fadmin",
        "/%2561dmin/restrictions", "/admin%00/restrictions", "/admin%2Frestrictions",
        "/trade/../admin/restrictions", "/./admin/restrictions", "//admin/restrictions",
        "/admin//restrictions", "/admin./restrictions", "/admin%20/restrictions", "/admin%zz",
        "/admin%5crestrictions", "/admin%3b/restrictions", "/admin%09/restrictions",
        "/trade%EF%BC%8F..%EF%BC%8Fadmin/restrictions",  # fullwidth solidus: NFKC "/"
        "/trade/%EF%BC%8E%EF%BC%8E/admin/restrictions",  # fullwidth full stops: NFKC ".."
        "/admin%EF%BC%853b/restrictions",  # fullwidth percent: NFKC "%3b"
    ])
    async def test_ambiguous_targets_refused_R_PX_2(self, gw: GatewayHarness,
                                                    target: str) -> None:
        """A contractor's ambiguous spelling of an admin path gets 400 bad_target; the
        backend is never asked."""
        user, cookie = await _logged_in(gw, "520011")
        status, _, body = await asyncio.to_thread(_get, gw, user, cookie, target)
        assert status == 400, (target, body[:300])
        assert b'data-code="bad_target"' in body

    @pytest.mark.parametrize("target", [
        "/ADMIN/restrictions", "/Admin/restrictions", "/%41dmin/restrictions",
        "/%EF%BC%A1dmin/restrictions",  # fullwidth A: NFKC folds it to "A"
    ])
    async def test_case_and_unicode_variants_of_admin_prefix_are_admin_R_PX_2(
            self, gw: GatewayHarness, target: str) -> None:
        """Case and compatibility variants of the admin prefix need the admin role."""
        user, cookie = await _logged_in(gw, "520012")
        status, _, body = await asyncio.to_thread(_get, gw, user, cookie, target)
        assert status == 403 and b'data-code="role_forbidden"' in body, (target, body[:200])

    @pytest.mark.parametrize(("target", "raw_path"), [
        ("/api/echo?x=/admin/../;%2f", "/api/echo?x=/admin/../;%2f"),
        ("/api/%65cho", "/api/%65cho"),
        ("/api/echo", "/api/echo"),
    ])
    async def test_backend_receives_exactly_the_checked_target_R_PX_2(
            self, gw: GatewayHarness, target: str, raw_path: str) -> None:
        """What the demo backend received (its raw_path) is the target the gateway checked,
        byte for byte; the query is not the path and is relayed as it is."""
        user, cookie = await _logged_in(gw, "520013")
        status, _, body = await asyncio.to_thread(_get, gw, user, cookie, target)
        assert status == 200, body[:300]
        echo = _echo(body)
        assert echo["raw_path"] == raw_path
        print(f"sent {target!r} -> backend raw_path {echo['raw_path']!r} path {echo['path']!r}")


class TestWebSocketOrigin:
    """Item 12: only the gateway's own pages may open a WebSocket through it."""

    @pytest.mark.parametrize("origin", ["https://evil.example", "null",
                                        "https://127.0.0.1.evil.example", "http://127.0.0.1"])
    async def test_foreign_origin_refused_R_PX_1(self, gw: GatewayHarness,
                                                 origin: str) -> None:
        """Another origin (cross-site WebSocket hijacking) gets 403 origin_refused."""
        user = gw.enroll("520020")
        async with gw.browser(user) as browser:
            await browser.login()
            assert browser.session is not None
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await browser.session.ws_connect(gw.url + "/ws/quotes", origin=origin)
            assert caught.value.status == 403

    @pytest.mark.parametrize("spelling", ["{url}", "{url}/", "{upper}"])
    async def test_own_origin_relayed_R_PX_1(self, gw: GatewayHarness, spelling: str) -> None:
        """The twin: the public_url origin (any case, trailing slash) is relayed."""
        user = gw.enroll("520021")
        origin = spelling.format(url=gw.url, upper=gw.url.upper().replace("HTTPS", "https"))
        async with gw.browser(user) as browser:
            await browser.login()
            assert browser.session is not None
            async with browser.session.ws_connect(gw.url + "/ws/quotes",
                                                  origin=origin) as ws:
                assert await ws.receive_json(timeout=5)


class TestResponseHeaders:
    """Item 14: HSTS, nosniff and no Server version on every answer."""

    @pytest.mark.parametrize("target", ["/api/echo", "/trade/forward", "/auth/password",
                                        "/nonexistent-page"])
    async def test_security_headers_on_proxied_and_own_pages_R_PX_1(
            self, gw: GatewayHarness, target: str) -> None:
        """Proxied answers and the gateway's pages: HSTS, nosniff, Server without version."""
        user, cookie = await _logged_in(gw, "520030")
        _, head, _ = await asyncio.to_thread(_get, gw, user, cookie, target)
        lower = head.lower()
        assert "strict-transport-security: max-age=31536000" in lower
        assert "x-content-type-options: nosniff" in lower
        servers = re.findall(r"(?im)^server:[ \t]*([^\r\n]*)", head)
        assert servers == ["Sekisho"], head


class TestParserErrors:
    """Item 14: aiohttp's parser errors quote nothing and log through the JSON logger."""

    def test_malformed_request_echoes_and_logs_no_cookie(self, gw: GatewayHarness,
                                                          tmp_path: Path) -> None:
        """A real `sekisho-gateway serve` process: a request with a cookie and a bad header
        byte gets a fixed 400 page without the cookie, and its stderr holds only JSON lines,
        none with the cookie's value."""
        port = free_port()
        config = gw.ca.config_path.read_text()
        config = re.sub(r'listen = "127\.0\.0\.1:\d+"\npublic_url = "https://127\.0\.0\.1:\d+"',
                        f'listen = "127.0.0.1:{port}"\npublic_url = "https://127.0.0.1:{port}"',
                        config)
        config = config.replace('database = "var/gateway/gateway.sqlite3"',
                                'database = "var/gateway2/gateway.sqlite3"')
        config = config.replace('level = "warning"', 'level = "info"')
        path = gw.ca.config_path.parent / "config-second.toml"
        path.write_text(config)
        log = tmp_path / "gateway.log"
        with log.open("wb") as stderr:
            process = subprocess.Popen([sys.executable, "-m", "gateway", "--config", str(path),
                                        "serve"], stdout=subprocess.DEVNULL, stderr=stderr)
        try:
            deadline = time.monotonic() + 30
            while b"gateway listening" not in log.read_bytes():
                assert process.poll() is None, log.read_text()
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            secret = "SECRETcookieVALUE42"
            answers = []
            cookie = f"Cookie: {SESSION_COOKIE}={secret}; other={secret}".encode()
            for bad in (cookie + b"\r\nX-Bad: a\x01b\r\n", cookie + b"\x01\r\n",
                        cookie + b"\r\nBad Header Name: x\r\n",
                        cookie + b"; " + b"a" * 70000 + b"\r\n"):
                request = b"GET /auth/ HTTP/1.1\r\nHost: 127.0.0.1\r\n" + bad + b"\r\n"
                harness_url = gw.url
                gw.url = f"https://127.0.0.1:{port}"
                try:
                    answers.append(raw_exchange(gw, request))
                finally:
                    gw.url = harness_url
            time.sleep(0.3)
        finally:
            process.terminate()
            process.wait(10)
        for answer in answers:
            assert re.match(rb"HTTP/1\.[01] 4\d\d ", answer), answer[:200]
            assert secret.encode() not in answer
            assert b"Invalid" not in answer and b"aiohttp" not in answer
            assert b"Server: Sekisho" in answer
        captured = log.read_text()
        assert secret not in captured, captured[-2000:]
        lines = [line for line in captured.splitlines() if line.strip()]
        non_json = [line for line in lines if not line.startswith("{")
                    and "gateway listening" not in line and "created a self-signed" not in line]
        assert non_json == [], non_json[:5]
        refused = [json.loads(line) for line in lines if "http_request_refused" in line]
        assert len(refused) >= 4, captured[-2000:]
