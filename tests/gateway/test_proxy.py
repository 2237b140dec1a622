"""The proxy to the demo trading backend (R-PX-1, R-PX-2)."""

from __future__ import annotations

import hashlib
import os
from typing import Any

import aiohttp
import pytest

from gateway.state import PROXY
from tests.gateway.conftest import GatewayHarness, wait_closed_by_server
from tests.support.servers import free_port


class TestIdentityHeaders:
    """R-PX-1: the backend gets our identity headers and never the client's."""

    async def test_spoofed_identity_headers_stripped_R_PX_1(self, gw: GatewayHarness) -> None:
        """X-Sekisho-* from the client (any case) are dropped; ours arrive, once each."""
        user = gw.enroll("500001", name="山田 花子", customer="株式会社ABC商事")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.get("/api/echo", headers={
                "X-Sekisho-User": "admin1", "x-sekisho-role": "admin",
                "X-SEKISHO-CUSTOMER": "Evil", "X-Sekisho-Extra": "1"})
            headers = (await _json(page))["headers"]
        assert headers["X-Sekisho-User"] == ["500001"]
        assert headers["X-Sekisho-Role"] == ["contractor"]
        assert headers["X-Sekisho-Cert-Serial"] == [user.serial]
        assert "X-Sekisho-Extra" not in headers
        assert "%E5%B1%B1%E7%94%B0" in headers["X-Sekisho-Name"][0]  # 山田, percent-encoded

    def test_spoofed_headers_with_curl_R_PX_1(self, gw: GatewayHarness) -> None:
        """The same through curl, which sends the header verbatim."""
        user = gw.enroll("500002")
        jar, _ = gw.curl_login(user)
        echo = gw.curl("/api/echo", user, "-b", jar, "-H", "X-Sekisho-Role: admin")
        assert echo.stdout.endswith("\n200")
        assert '"X-Sekisho-Role": ["contractor"]' in echo.stdout


class TestBodiesAndMethods:
    """R-PX-1: all methods, streamed bodies."""

    @pytest.mark.parametrize("size", [0, 1000, 3 * 1024 * 1024])
    async def test_post_body_relayed_R_PX_1(self, gw: GatewayHarness, size: int) -> None:
        """Small and multi-MiB bodies arrive whole (length and SHA-256 checked)."""
        user = gw.enroll("500010")
        body = os.urandom(size)
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.request("POST", "/api/echo?a=1&a=2", data=body,
                                         headers={"Content-Type": "application/octet-stream"})
            echoed = await _json(page)
        assert echoed["body_length"] == size
        assert echoed["query"] == {"a": ["1", "2"]}
        assert echoed["body_sha256"] == hashlib.sha256(body).hexdigest()

    async def test_chunked_upload_relayed_R_PX_1(self, gw: GatewayHarness) -> None:
        """A body without Content-Length (chunked) is streamed through."""
        user = gw.enroll("500011")

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(20):
                yield b"x" * 65536

        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.request("POST", "/api/echo", data=chunks())
            assert (await _json(page))["body_length"] == 20 * 65536

    async def test_backend_timeout_gives_504_R_PX_1(self, gw: GatewayHarness) -> None:
        """A backend slower than backend_read_timeout (3 s in tests) gets the 504 page."""
        user = gw.enroll("500012")
        async with gw.browser(user) as browser:
            await browser.login()
            assert (await browser.get("/api/slow?seconds=0.1")).status == 200
            page = await browser.get("/api/slow?seconds=5")
            assert page.status == 504 and page.error == "backend_timeout"

    async def test_backend_down_gives_502_page_R_PX_1(self, gw: GatewayHarness) -> None:
        """With the backend stopped, a clear 502 page."""
        user = gw.enroll("500013")
        async with gw.browser(user) as browser:
            await browser.login()
            # Nothing listens on the backend's address any more (connection refused).
            gw.app[PROXY].backend_url = f"http://127.0.0.1:{free_port()}"
            page = await browser.get("/trade/forward")
            assert page.status == 502 and page.error == "backend_unavailable"
            assert "現在サービスをご利用いただけません" in page.text


class TestRoles:
    """R-PX-2: admin-only prefixes are enforced before proxying."""

    @pytest.mark.parametrize("path", ["/admin/restrictions", "/admin", "/%61dmin/restrictions",
                                      "/trade/../admin/restrictions", "//admin/restrictions",
                                      "/admin//restrictions"])
    async def test_contractor_refused_admin_paths_R_PX_2(self, gw: GatewayHarness,
                                                         path: str) -> None:
        """A contractor is refused every spelling of an admin path: 403, or 400 when the
        spelling is ambiguous (test_cve_regressions.TestAmbiguousTargets has the raw ones)."""
        user = gw.enroll("500020", role="contractor")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.get(path)
            assert (page.status, page.error) in {(403, "role_forbidden"), (400, "bad_target")}, \
                path

    async def test_admin_reaches_admin_page_R_PX_2(self, gw: GatewayHarness) -> None:
        """The twin: an admin gets the restrictions page."""
        user = gw.enroll("500021", role="admin")
        async with gw.browser(user) as browser:
            await browser.login()
            assert (await browser.get("/admin/restrictions")).status == 200


class TestWebSocket:
    """R-PX-1: WebSockets are relayed once logged in."""

    async def test_quotes_websocket_relayed_R_PX_1(self, gw: GatewayHarness) -> None:
        """Quotes arrive through the gateway; ping/pong works both ways."""
        user = gw.enroll("500030")
        async with gw.browser(user) as browser:
            await browser.login()
            assert browser.session is not None
            async with browser.session.ws_connect(gw.url + "/ws/quotes?seed=1") as ws:
                first = await ws.receive_json(timeout=5)
                assert first
                await ws.send_json({"type": "ping"})
                for _ in range(10):
                    message = await ws.receive_json(timeout=5)
                    if message.get("type") == "pong":
                        break
                else:
                    raise AssertionError("no pong")

    async def test_websocket_needs_session_R_PX_1(self, gw: GatewayHarness) -> None:
        """Without a session the upgrade is refused."""
        user = gw.enroll("500031")
        async with gw.browser(user) as browser:
            assert browser.session is not None
            with pytest.raises(aiohttp.WSServerHandshakeError) as caught:
                await browser.session.ws_connect(gw.url + "/ws/quotes")
            assert caught.value.status == 401

    async def test_logout_closes_websocket_R_SES_2(self, gw: GatewayHarness) -> None:
        """Logging out in the page closes the relay."""
        user = gw.enroll("500032")
        async with gw.browser(user) as browser:
            await browser.login()
            assert browser.session is not None
            async with browser.session.ws_connect(gw.url + "/ws/quotes") as ws:
                await ws.receive_json(timeout=5)
                await browser.submit("/auth/logout", "/auth/logout", {})
                await wait_closed_by_server(ws)


async def _json(page) -> dict:  # type: ignore[no-untyped-def]
    import json

    assert page.status == 200, (page.status, page.text[:300])
    return dict(json.loads(page.text))


class TestDirectPath:
    """Plain proxied requests skip the router and middleware (gateway.app.serve_proxied_directly)
    and behave exactly as on the full path."""

    async def test_plain_proxied_request_skips_the_router_R_PX_1(
            self, gw: GatewayHarness, monkeypatch: pytest.MonkeyPatch) -> None:
        """/api/echo is relayed without resolving a route; /auth/ pages still resolve."""
        resolved: list[str] = []
        router = gw.app.router
        original = router.resolve

        async def counting(request: Any) -> Any:
            resolved.append(request.path)
            return await original(request)

        monkeypatch.setattr(router, "resolve", counting)
        user = gw.enroll("500040")
        async with gw.browser(user) as browser:
            await browser.login()
            resolved.clear()
            assert (await browser.get("/api/echo")).status == 200
            assert resolved == []
            assert (await browser.get("/auth/password")).status == 200
            assert resolved == ["/auth/password"]

    async def test_refusal_on_direct_path_speaks_the_users_language_R_PX_2(
            self, gw: GatewayHarness) -> None:
        """An error met on the direct path is rendered by the full app: same page, same
        language as chosen on the gateway's pages."""
        user = gw.enroll("500041", role="contractor")
        async with gw.browser(user) as browser:
            await browser.login()
            page = await browser.get("/admin/restrictions")
            assert page.status == 403 and page.error == "role_forbidden"
            assert "管理者権限ユーザのみ" in page.text
            await browser.get("/auth/password?lang=en")
            page = await browser.get("/admin/restrictions")
            assert page.status == 403 and "administrators only" in page.text

    async def test_lang_query_on_a_proxied_path_sets_the_cookie_R_PX_1(
            self, gw: GatewayHarness) -> None:
        """`?lang=` still reaches the language middleware on proxied paths."""
        user = gw.enroll("500042")
        async with gw.browser(user) as browser:
            await browser.login()
            assert (await browser.get("/api/echo?lang=en")).status == 200
            assert browser.cookie("lang") == "en"
