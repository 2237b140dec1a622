"""The proxy's own keep-alive HTTP/1.1 client to the backend (R-PX-1), against small backends.

`Proxy.http` is driven by a plain aiohttp front app here (no TLS, no session), so that every
way a backend can answer is covered: lengths, chunked and streamed bodies, HEAD, 204,
`Connection: close`, hop-by-hop headers, a connection closed while idle, slow answers.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from gateway.errors import GatewayError
from gateway.proxy import SMALL_BODY, Identity, Proxy

IDENTITY = Identity(user_id="500001", role="contractor", customer="株式会社ABC商事",
                    name="山田 花子", last_login=datetime(2026, 1, 5, tzinfo=UTC), serial="1a2b")
BIG = os.urandom(3 * SMALL_BODY + 17)


def _backend(seen: list[tuple[str, int]]) -> web.Application:
    """A backend that records (path, peer port) of every request."""

    @web.middleware
    async def record(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        peer = request.transport.get_extra_info("peername") if request.transport else None
        seen.append((request.path, peer[1] if peer else 0))
        return await handler(request)

    async def small(request: web.Request) -> web.Response:
        return web.Response(body=b"s" * 1000, headers={"X-Backend": "1"})

    async def big(request: web.Request) -> web.Response:
        return web.Response(body=BIG)

    async def chunked(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse()
        response.enable_chunked_encoding()
        await response.prepare(request)
        for index in range(5):
            await response.write(bytes([65 + index]) * 70_000)
        await response.write_eof()
        return response

    async def nothing(request: web.Request) -> web.Response:
        return web.Response(status=204)

    async def close(request: web.Request) -> web.Response:
        return web.Response(text="bye", headers={"Connection": "close"})

    async def hop(request: web.Request) -> web.Response:
        return web.Response(text="hop", headers={
            "Connection": "X-Named", "X-Named": "1", "Keep-Alive": "timeout=5",
            "X-Kept": "1"})

    async def echo(request: web.Request) -> web.Response:
        body = await request.read()
        return web.json_response({
            "method": request.method, "length": len(body),
            "sha256": hashlib.sha256(body).hexdigest(),
            "headers": [[k, v] for k, v in request.headers.items()],
            "chunked": request.headers.get("Transfer-Encoding"),
        })

    async def slow(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query["s"]))
        return web.Response(text="slow")

    app = web.Application(middlewares=[record], client_max_size=10 * 1024 * 1024)
    app.router.add_get("/small", small)
    app.router.add_get("/big", big)
    app.router.add_get("/chunked", chunked)
    app.router.add_get("/nothing", nothing)
    app.router.add_get("/close", close)
    app.router.add_get("/hop", hop)
    app.router.add_route("*", "/echo", echo)
    app.router.add_get("/slow", slow)
    return app


def _front(proxy: Proxy) -> web.Application:
    @web.middleware
    async def errors(request: web.Request,
                     handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                     ) -> web.StreamResponse:
        try:
            return await handler(request)
        except GatewayError as exc:
            return web.Response(status=exc.status, text=exc.code)

    async def relay(request: web.Request) -> web.StreamResponse:
        return await proxy.http(request, IDENTITY)

    app = web.Application(middlewares=[errors], client_max_size=10 * 1024 * 1024)
    app.router.add_route("*", "/{tail:.*}", relay)
    return app


class Rig:
    """A backend, a proxy to it and a client of the front app."""

    def __init__(self, proxy: Proxy, client: TestClient, seen: list[tuple[str, int]]) -> None:
        self.proxy = proxy
        self.client = client
        self.seen = seen

    def connections(self, path: str) -> set[int]:
        """The backend-side peer ports (one per gateway connection) that served `path`."""
        return {port for seen_path, port in self.seen if seen_path == path}


async def _rig(backend_url: str, seen: list[tuple[str, int]], read_timeout: float = 5.0
               ) -> AsyncIterator[Rig]:
    proxy = Proxy(backend_url, connect_timeout=timedelta(seconds=2),
                  read_timeout=timedelta(seconds=read_timeout), admin_path_prefixes=("/admin/",))
    await proxy.start()
    client = TestClient(TestServer(_front(proxy)))
    await client.start_server()
    try:
        yield Rig(proxy, client, seen)
    finally:
        await client.close()
        await proxy.close()


@pytest.fixture
async def rig() -> AsyncIterator[Rig]:
    """A proxy in front of the recording backend."""
    seen: list[tuple[str, int]] = []
    backend = TestServer(_backend(seen))
    await backend.start_server()
    try:
        async for made in _rig(str(backend.make_url("")).rstrip("/"), seen):
            yield made
    finally:
        await backend.close()


class TestKeepAlive:
    """R-PX-1: one backend connection carries request after request."""

    async def test_sequential_requests_share_one_connection_R_PX_1(self, rig: Rig) -> None:
        """Twenty requests in a row: right answers, one backend connection."""
        for _ in range(20):
            async with rig.client.get("/small") as response:
                assert response.status == 200
                assert await response.read() == b"s" * 1000
                assert response.headers["X-Backend"] == "1"
        assert len(rig.connections("/small")) == 1

    async def test_head_get_and_streams_alternate_on_one_connection_R_PX_1(
            self, rig: Rig) -> None:
        """HEAD (no body), a large streamed body, a chunked one, 204, then GET again."""
        async with rig.client.head("/small") as response:
            assert response.status == 200 and await response.read() == b""
            assert response.headers["Content-Length"] == "1000"
        async with rig.client.get("/small") as response:
            assert await response.read() == b"s" * 1000
        async with rig.client.get("/big") as response:
            assert response.headers["Content-Length"] == str(len(BIG))
            assert await response.read() == BIG
        async with rig.client.get("/chunked") as response:
            body = await response.read()
            assert body == b"".join(bytes([65 + i]) * 70_000 for i in range(5))
        async with rig.client.get("/nothing") as response:
            assert response.status == 204 and await response.read() == b""
        async with rig.client.head("/small") as response:
            assert response.status == 200
        async with rig.client.get("/small") as response:
            assert await response.read() == b"s" * 1000
        ports = {port for _, port in rig.seen}
        assert len(ports) == 1, rig.seen

    async def test_connection_close_is_not_reused_R_PX_1(self, rig: Rig) -> None:
        """A backend answer with `Connection: close` retires its connection."""
        for _ in range(2):
            async with rig.client.get("/close") as response:
                assert await response.text() == "bye"
        assert len(rig.connections("/close")) == 2

    async def test_pool_limit_queues_requests_R_PX_1(self, rig: Rig) -> None:
        """With a limit of two, ten concurrent slow requests use two connections."""
        assert rig.proxy._upstream is not None
        rig.proxy._upstream._limit = 2

        async def one() -> int:
            async with rig.client.get("/slow?s=0.05") as response:
                await response.read()
                return response.status

        assert await asyncio.gather(*(one() for _ in range(10))) == [200] * 10
        assert len(rig.connections("/slow")) == 2


class TestHeaders:
    """R-PX-1: hop-by-hop and identity headers, both ways."""

    async def test_request_headers_rewritten_R_PX_1(self, rig: Rig) -> None:
        """Client X-Sekisho-*, hop-by-hop and named headers and our cookies never arrive."""
        async with rig.client.get("/echo", headers={
            "X-Sekisho-User": "admin1", "x-sekisho-role": "admin", "Connection": "X-Drop",
            "X-Drop": "1", "Forwarded": "for=6.6.6.6", "X-Forwarded-For": "6.6.6.6",
            "Cookie": "__Host-sekisho-session=secret; lang=en; __Host-sekisho-form=f",
            "X-Other": "kept"}) as response:
            echoed = json.loads(await response.text())
        headers: dict[str, list[str]] = {}
        for name, value in echoed["headers"]:
            headers.setdefault(name.lower(), []).append(value)
        assert headers["x-sekisho-user"] == ["500001"]
        assert headers["x-sekisho-role"] == ["contractor"]
        assert headers["x-sekisho-customer"] == [
            "%E6%A0%AA%E5%BC%8F%E4%BC%9A%E7%A4%BEABC%E5%95%86%E4%BA%8B"]
        assert headers["x-sekisho-last-login"] == ["2026-01-05T00:00:00+00:00"]
        assert headers["x-sekisho-cert-serial"] == ["1a2b"]
        assert headers["x-forwarded-for"] == ["127.0.0.1"]
        assert headers["x-forwarded-proto"] == ["https"]
        assert headers["cookie"] == ["lang=en"]
        assert headers["x-other"] == ["kept"]
        assert "x-drop" not in headers and "forwarded" not in headers
        assert len(headers["host"]) == 1

    async def test_response_hop_by_hop_removed_R_PX_1(self, rig: Rig) -> None:
        """Keep-Alive and the headers named in the backend's Connection are dropped."""
        async with rig.client.get("/hop") as response:
            assert await response.text() == "hop"
            assert "X-Named" not in response.headers
            assert "Keep-Alive" not in response.headers
            assert response.headers["X-Kept"] == "1"

    async def test_absolute_form_target_refused_R_PX_1(self, rig: Rig) -> None:
        """A request target that is not a path is not relayed."""
        reader, writer = await asyncio.open_connection(rig.client.host, rig.client.port)
        writer.write(b"GET http://evil.example/small HTTP/1.1\r\nHost: x\r\n"
                     b"Connection: close\r\n\r\n")
        answer = await reader.read()
        writer.close()
        assert answer.startswith(b"HTTP/1.1 400"), answer[:60]
        assert rig.seen == []


class TestBodies:
    """R-PX-1: request bodies of every framing arrive whole."""

    @pytest.mark.parametrize("size", [0, 1000, SMALL_BODY + 1, 3 * 1024 * 1024])
    async def test_known_length_body_R_PX_1(self, rig: Rig, size: int) -> None:
        """Small bodies in one piece, larger ones streamed with their length."""
        body = os.urandom(size)
        async with rig.client.post("/echo", data=body) as response:
            echoed = json.loads(await response.text())
        assert echoed["length"] == size
        assert echoed["sha256"] == hashlib.sha256(body).hexdigest()
        assert echoed["chunked"] is None

    async def test_chunked_body_R_PX_1(self, rig: Rig) -> None:
        """A body without a length goes on chunked, then the connection is reused."""

        async def chunks() -> AsyncIterator[bytes]:
            for index in range(12):
                yield bytes([index]) * 50_000

        async with rig.client.post("/echo", data=chunks()) as response:
            echoed = json.loads(await response.text())
        expected = b"".join(bytes([i]) * 50_000 for i in range(12))
        assert echoed["length"] == len(expected)
        assert echoed["sha256"] == hashlib.sha256(expected).hexdigest()
        assert echoed["chunked"] == "chunked"
        async with rig.client.get("/echo") as response:
            assert json.loads(await response.text())["method"] == "GET"
        assert len(rig.connections("/echo")) == 1


class TestFailures:
    """R-PX-1: 502 and 504, and a stale kept-alive connection."""

    async def test_read_timeout_gives_504_R_PX_1(self) -> None:
        """An answer slower than the read timeout: 504 within a watchdog tick of it."""
        seen: list[tuple[str, int]] = []
        backend = TestServer(_backend(seen))
        await backend.start_server()
        try:
            async for rig in _rig(str(backend.make_url("")).rstrip("/"), seen,
                                  read_timeout=0.4):
                started = asyncio.get_running_loop().time()
                async with rig.client.get("/slow?s=3") as response:
                    assert response.status == 504
                    assert await response.text() == "backend_timeout"
                assert asyncio.get_running_loop().time() - started < 1.5
                async with rig.client.get("/small") as response:  # the pool still works
                    assert response.status == 200
        finally:
            await backend.close()

    @pytest.mark.parametrize(("method", "status"), [("GET", 200), ("POST", 502)])
    async def test_stale_connection_retried_if_idempotent_R_PX_1(
            self, method: str, status: int) -> None:
        """A backend that closes a kept-alive connection on the next request: GET is sent
        again on a new connection, POST is not (it may have been acted on)."""
        answered: dict[int, int] = {}

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            port = writer.get_extra_info("peername")[1]
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if answered.get(port):
                    writer.close()  # "closed while idle", seen only now
                    return
                answered[port] = 1
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                await writer.drain()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        try:
            async for rig in _rig(f"http://127.0.0.1:{port}", []):
                async with rig.client.request(method, "/x", data=b"1") as response:
                    assert response.status == 200
                async with rig.client.request(method, "/x", data=b"2") as response:
                    assert response.status == status
                    if status == 502:
                        assert await response.text() == "backend_unavailable"
        finally:
            server.close()
            await server.wait_closed()

    async def test_backend_refusing_connections_gives_502_R_PX_1(self) -> None:
        """Nothing listens: 502, and later requests still get 502 (no stuck pool slot)."""
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        sock.close()
        async for rig in _rig(f"http://127.0.0.1:{port}", []):
            for _ in range(3):
                async with rig.client.get("/small") as response:
                    assert response.status == 502
            assert rig.proxy._upstream is not None and rig.proxy._upstream._open == 0


def test_identity_header_values_cannot_split_the_head_R_PX_1() -> None:
    """A CR or LF in an identity value is refused, not written into the request."""
    from gateway.proxy import identity_block

    with pytest.raises(ValueError, match="break"):
        identity_block(Identity(user_id="a\r\nX-Sekisho-Role: admin", role="contractor",
                                customer="c", name="n", last_login=None, serial="1"))


def test_proxy_rejects_non_http_backend_url() -> None:
    """The backend is plain HTTP on loopback: anything else is a configuration error."""
    with pytest.raises(ValueError, match="http://host:port"):
        Proxy("https://127.0.0.1:1", connect_timeout=timedelta(seconds=1),
              read_timeout=timedelta(seconds=1), admin_path_prefixes=())


@pytest.mark.parametrize(("path", "admin"), [
    ("/admin/x", True), ("/admin", True), ("/ADMIN/x", True), ("/admin/", True),
    ("/administrator", False), ("/trade/admin", False), ("/", False),
])
def test_admin_only_cached_answers_match_R_PX_2(path: str, admin: bool) -> None:
    """The remembered answers are the computed ones, asked twice."""
    proxy = Proxy("http://127.0.0.1:1", connect_timeout=timedelta(seconds=1),
                  read_timeout=timedelta(seconds=1), admin_path_prefixes=("/admin/",))
    assert proxy.admin_only(path) is admin
    assert proxy.admin_only(path) is admin


@pytest.mark.parametrize("path", ["/trade/../admin/x", "//admin/x", "/admin;/x", "/%2e/admin"])
def test_admin_only_refuses_ambiguous_targets_every_time_R_PX_2(path: str) -> None:
    """An ambiguous target is refused (400), also when asked again: never remembered."""
    from gateway.errors import BadRequest

    proxy = Proxy("http://127.0.0.1:1", connect_timeout=timedelta(seconds=1),
                  read_timeout=timedelta(seconds=1), admin_path_prefixes=("/admin/",))
    for _ in range(2):
        with pytest.raises(BadRequest):
            proxy.admin_only(path)



def test_aiohttp_internals_the_pool_relies_on_exist() -> None:
    """The ResponseHandler hooks `_BackendConnection` overrides or calls are still there
    (otherwise an aiohttp upgrade would silently bring back a timer per read)."""
    from aiohttp.client_proto import ResponseHandler

    for name in ("_reschedule_timeout", "_drop_timeout", "_on_read_timeout", "_drain_helper",
                 "resume_reading", "set_response_params", "should_close"):
        assert hasattr(ResponseHandler, name), name
