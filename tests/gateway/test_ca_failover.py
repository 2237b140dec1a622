"""The gateway with several CA nodes (issue 13), unit level: the configuration, the order in
which nodes are asked and their back-off (gateway/ca_nodes.py), and the CA client moving to
the next node, or refusing to, against fake CA nodes (real HTTP and TLS on loopback).

The real thing (two `python -m ca serve` on PostgreSQL, a real gateway, kill -9 of a node) is
tests/gateway/test_ca_cluster_failover.py.
"""

from __future__ import annotations

import base64
import contextlib
import re
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
from aiohttp import web

from common.config import ConfigError, RawConfig
from common.tlsfiles import ensure_server_certificate, tls_client_context, tls_server_context
from gateway import metrics
from gateway.ca_client import CaClient, CaUnavailable
from gateway.ca_nodes import CaNodes
from gateway.config import gateway_config_from
from policy.clock import FakeClock
from tests.support.servers import free_port

TOKEN = "t" * 40


# -- configuration --------------------------------------------------------------------------


def _config(tmp_path: Path, **gateway: Any) -> Any:
    return gateway_config_from(RawConfig(data={"gateway": gateway}, base_dir=tmp_path))


class TestConfiguration:
    """`gateway.ca_internal_url` / `ca_public_url`: a string (one node, as before) or a list."""

    def test_a_string_is_one_node_and_a_list_several(self, tmp_path: Path) -> None:
        """The single-string keys still work; lists keep their order; ca_internal_trust is
        one file for all nodes or one per node."""
        one = _config(tmp_path, ca_internal_url="https://127.0.0.1:8081/",
                      ca_public_url="http://127.0.0.1:8080", ca_internal_trust="a.pem")
        assert one.ca_internal_urls == ("https://127.0.0.1:8081",)
        assert one.ca_internal_url == "https://127.0.0.1:8081"
        assert one.ca_public_url == "http://127.0.0.1:8080"
        assert one.ca_internal_trusts == (tmp_path / "a.pem",)
        several = _config(tmp_path,
                          ca_internal_url=["https://10.0.0.2:8081", "https://10.0.0.1:8081"],
                          ca_public_url=["http://10.0.0.2:8080", "http://10.0.0.1:8080"],
                          ca_internal_trust=["n2.pem", "/etc/n1.pem"])
        assert several.ca_internal_urls == ("https://10.0.0.2:8081", "https://10.0.0.1:8081")
        assert several.ca_public_urls == ("http://10.0.0.2:8080", "http://10.0.0.1:8080")
        assert several.ca_internal_trusts == (tmp_path / "n2.pem", Path("/etc/n1.pem"))
        shared = _config(tmp_path, ca_internal_url=["https://a:1", "https://b:1"],
                         ca_internal_trust="both.pem")
        assert shared.ca_internal_trusts == (tmp_path / "both.pem",) * 2
        assert _config(tmp_path).ca_internal_trusts == (None,)

    @pytest.mark.parametrize(("settings", "message"), [
        ({"ca_internal_url": []}, "gateway.ca_internal_url must be a URL or a non-empty list"),
        ({"ca_public_url": 8080}, "gateway.ca_public_url must be a URL or a non-empty list"),
        ({"ca_internal_url": ["https://a:1", "ftp://b:1"]},
         "gateway.ca_internal_url[1] must start with http:// or https://"),
        ({"ca_public_url": ["http://a:1", 2]}, r"gateway.ca_public_url[1] must be a URL string"),
        ({"ca_public_url": ["http://a:1", "http://a:1/"]}, "names the same node twice"),
        ({"ca_internal_url": ["https://a:1", "https://b:1"], "ca_internal_trust": ["a.pem"]},
         "gateway.ca_internal_trust lists 1 files for 2 gateway.ca_internal_url entries"),
        ({"ca_internal_trust": ["a.pem", 3]}, "gateway.ca_internal_trust must be a file or"),
    ])
    def test_a_wrong_value_names_the_key(self, tmp_path: Path, settings: dict[str, Any],
                                         message: str) -> None:
        """A wrong value stops start-up with the key (and the item) to fix (STYLE 12)."""
        with pytest.raises(ConfigError, match=re.escape(message)):
            _config(tmp_path, **settings)


# -- order and back-off ---------------------------------------------------------------------


@dataclass
class Ticker:
    """A monotonic clock the test moves (back-off is a duration, not a date)."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


class TestOrderAndBackoff:
    """gateway/ca_nodes.py: the node in use first, failed nodes skipped for a back-off."""

    def test_failed_node_skipped_then_tried_again_and_used_when_it_is_back(self) -> None:
        """A fails -> B in use, A last until its back-off (1 s, then 2 s, ...) is over; then
        A is a candidate again after B, and is used when B fails."""
        ticker = Ticker()
        nodes = CaNodes("internal", ["http://a", "http://b", "http://c"], monotonic=ticker)
        a, b, c = nodes.nodes
        assert nodes.candidates() == [a, b, c]
        nodes.failed(a, "refused")
        assert nodes.candidates() == [b, c, a]
        nodes.succeeded(b)
        assert nodes.current is b and nodes.candidates() == [b, c, a]
        ticker.now += 1.01
        assert nodes.candidates() == [b, a, c]  # back-off over: A before C (configured order)
        nodes.failed(a, "refused")  # second failure in a row: 2 s
        ticker.now += 1.5
        assert nodes.candidates() == [b, c, a]
        ticker.now += 0.6
        assert nodes.candidates() == [b, a, c]
        nodes.failed(b, "reset")
        assert nodes.candidates() == [a, c, b]
        nodes.succeeded(a)  # A is back: in use again, its failures forgotten
        assert nodes.current is a and a.failures == 0
        assert nodes.candidates() == [a, c, b]

    def test_fail_back_only_to_a_node_configured_before_the_one_in_use(self) -> None:
        """A probe that finds A back (A listed first) makes A the node in use again; C back
        while B is in use changes nothing; a node that failed again is not used."""
        ticker = Ticker()
        nodes = CaNodes("internal", ["http://a", "http://b", "http://c"], monotonic=ticker)
        a, b, c = nodes.nodes
        for node in (a, c):
            nodes.failed(node, "refused")
        nodes.succeeded(b)
        ticker.now += 1.01
        assert nodes.due_for_probe() == [a, c]
        nodes.succeeded(c, use=False)
        nodes.fail_back(c)
        assert nodes.current is b
        nodes.failed(a, "refused again")
        nodes.fail_back(a)
        assert nodes.current is b and nodes.due_for_probe() == []
        nodes.succeeded(a, use=False)
        nodes.fail_back(a)
        assert nodes.current is a

    def test_backoff_doubles_up_to_a_cap_and_all_nodes_down_are_still_tried(self) -> None:
        """1, 2, 4, ... 30 s; with every node in back-off, all are still asked, the one whose
        back-off ends first, first."""
        ticker = Ticker()
        nodes = CaNodes("public", ["http://a", "http://b"], monotonic=ticker)
        a, b = nodes.nodes
        waits = []
        for _ in range(7):
            nodes.failed(a, "timeout")
            waits.append(a.retry_at - ticker.now)
        assert waits == [1, 2, 4, 8, 16, 30, 30]
        nodes.failed(b, "timeout")
        assert nodes.candidates() == [b, a]


# -- the client against fake nodes ----------------------------------------------------------


@dataclass
class FakeNode:
    """A fake CA node (internal API and public listener in one app) on loopback.

    `behaviour` maps a path to "ok", "503", "504" or "drop" (the connection is cut before
    any answer); `seen` records (method, path, JSON body) of each request."""

    name: str
    port: int = field(default_factory=free_port)
    behaviour: dict[str, str] = field(default_factory=dict)
    seen: list[tuple[str, str, Any]] = field(default_factory=list)
    ssl_context: Any = None
    runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"{'https' if self.ssl_context else 'http'}://127.0.0.1:{self.port}"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        body = await request.json() if request.can_read_body and request.method == "POST" \
            and request.content_type == "application/json" else None
        self.seen.append((request.method, request.path, body))
        mode = self.behaviour.get(request.path, "ok")
        if mode == "drop":
            assert request.transport is not None
            request.transport.abort()
            return web.Response()
        if mode in ("503", "504"):
            return web.json_response({"error": "store_unavailable", "message": "x"},
                                     status=int(mode))
        if request.path in ("/ocsp", "/certs/bundle.pem") or request.path.startswith("/crl/"):
            return web.Response(body=f"from {self.name}".encode())
        if request.path == "/health":
            return web.json_response({"status": "ok"})
        if request.path == "/v1/revocations":
            return web.json_response({"last_seq": 7, "revocations": []})
        if request.path == "/v1/acquisition-tickets":
            return web.json_response({"ticket": f"ticket-{self.name}"}, status=201)
        if request.path.endswith("/acquisition-password"):
            return web.json_response({"acquisition_password": f"pw-{self.name}"}, status=201)
        return web.json_response({"serial": self.name, "user_id": "u1", "not_after": "x",
                                  "pkcs12": base64.b64encode(b"p12").decode()}, status=201)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.1)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.port,
                          ssl_context=self.ssl_context).start()

    async def stop(self) -> None:
        """The node dies: its port refuses connections."""
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None

    def paths(self) -> list[str]:
        return [path for _, path, _ in self.seen]


@pytest.fixture
async def fake_nodes() -> AsyncIterator[tuple[FakeNode, FakeNode]]:
    """Two running fake nodes, A and B."""
    a, b = FakeNode("A"), FakeNode("B")
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


def _client(a: FakeNode, b: FakeNode, ticker: Callable[[], float] | None = None) -> CaClient:
    return CaClient([a.url, b.url], [a.url, b.url], TOKEN, timeout=5,
                    monotonic=ticker or Ticker())


def _metric(name: str, **labels: str) -> float:
    text = metrics.exposition().decode()
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    raise AssertionError(f"{name} {labels} not on /metrics")


class TestClientFailover:
    """gateway/ca_client.py: which calls move to the next node, and when."""

    async def test_a_dead_node_is_skipped_and_a_node_that_comes_back_is_used(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """A refuses connections -> the feed is read from B, which stays in use (A is not
        asked during its back-off); /metrics shows A down and B in use. A back and B dead ->
        A answers again."""
        a, b = fake_nodes
        ticker = Ticker()
        client = _client(a, b, ticker)
        try:
            await a.stop()
            assert await client.revocations("latest", 0) == (7, [])
            assert client.internal_url == b.url and b.paths() == ["/v1/revocations"]
            labels = {"worker": "1", "role": "internal"}
            assert _metric("sekisho_gateway_ca_node_up", node=a.url, **labels) == 0
            assert _metric("sekisho_gateway_ca_node_in_use", node=b.url, **labels) == 1
            assert _metric("sekisho_gateway_ca_node_in_use", node=a.url, **labels) == 0
            await client.revocations(7, 0)
            assert b.paths() == ["/v1/revocations"] * 2  # A was not tried in its back-off
            await a.start()
            ticker.now += 1.01
            await b.stop()
            assert await client.revocations(7, 0) == (7, [])
            assert client.internal_url == a.url and a.paths() == ["/v1/revocations"]
            assert _metric("sekisho_gateway_ca_node_up", node=a.url, **labels) == 1
            assert _metric("sekisho_gateway_ca_node_up", node=b.url, **labels) == 0
        finally:
            await client.close()

    async def test_a_failed_node_is_probed_and_used_again_when_it_is_back(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """A dies -> B in use; probes during A's back-off ask nothing, a probe after it that
        fails doubles it; once A answers a probe (feed position, /health) it is up and in
        use again, for the internal API and the public listener alike."""
        a, b = fake_nodes
        ticker = Ticker()
        client = _client(a, b, ticker)
        try:
            await a.stop()
            await client.revocations("latest", 0)
            await client.fetch_public("/ocsp", seconds=3, method="POST", data=b"r")
            assert (client.internal_url, client.public_url) == (b.url, b.url)
            await client.probe_failed_nodes()  # within the back-off: nothing asked
            ticker.now += 1.01
            await client.probe_failed_nodes()  # A still dead: 2 s now
            assert [node.failures for node in (client.internal.nodes[0],
                                               client.public.nodes[0])] == [2, 2]
            await a.start()
            ticker.now += 1.5
            await client.probe_failed_nodes()
            assert a.seen == []
            ticker.now += 0.6
            await client.probe_failed_nodes()
            assert sorted(a.paths()) == ["/health", "/v1/revocations"]
            assert (client.internal_url, client.public_url) == (a.url, a.url)
            for role in ("internal", "public"):
                assert _metric("sekisho_gateway_ca_node_up", worker="1", role=role,
                               node=a.url) == 1
                assert _metric("sekisho_gateway_ca_node_in_use", worker="1", role=role,
                               node=a.url) == 1
            await client.revocations(7, 0)
            assert a.paths().count("/v1/revocations") == 2
        finally:
            await client.close()

    @pytest.mark.parametrize("failure", ["503", "504", "drop"])
    async def test_renewal_and_acquisition_move_on_after_a_failure(
            self, fake_nodes: tuple[FakeNode, FakeNode], failure: str) -> None:
        """A answers 503/504 or cuts the connection: the renewal and the acquisition are sent
        to B (the CA's own rules refuse a second certificate, see CaClient.renew)."""
        a, b = fake_nodes
        a.behaviour = {"/v1/renew": failure, "/v1/acquire": failure}
        client = _client(a, b)
        try:
            assert (await client.renew("01", "pw")).serial == "B"
            assert a.paths() == ["/v1/renew"] and b.paths() == ["/v1/renew"]
            client.internal.succeeded(client.internal.nodes[0])  # A in use again
            assert (await client.acquire("u1", "acq")).serial == "B"
            assert b.paths() == ["/v1/renew", "/v1/acquire"]
        finally:
            await client.close()

    @pytest.mark.parametrize("failure", ["503", "drop"])
    async def test_counted_and_writing_calls_are_not_replayed_once_sent(
            self, fake_nodes: tuple[FakeNode, FakeNode], failure: str) -> None:
        """An acquisition-password check (counted toward its lock) or a new acquisition
        password that reached A is not sent to B when A fails; the caller gets
        CaUnavailable, and the next call goes to B (A is in back-off)."""
        a, b = fake_nodes
        a.behaviour = {"/v1/acquisition-tickets": failure,
                       "/v1/users/u1/acquisition-password": failure}
        client = _client(a, b)
        try:
            with pytest.raises(CaUnavailable):
                await client.open_acquisition("u1", "acq")
            assert b.seen == []
            ticket = await client.open_acquisition("u1", "acq")
            assert ticket.value == "ticket-B" and ticket.node == b.url
            client.internal.succeeded(client.internal.nodes[0])
            with pytest.raises(CaUnavailable):
                await client.issue_acquisition_password("u1", actor="helpdesk:x")
            assert b.paths() == ["/v1/acquisition-tickets"]
        finally:
            await client.close()

    async def test_a_refused_connection_moves_every_call_on(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """Nothing reached a node that refused the connection: even the counted check and
        the new acquisition password go to B."""
        a, b = fake_nodes
        await a.stop()
        client = _client(a, b)
        try:
            assert (await client.open_acquisition("u1", "acq")).node == b.url
            assert await client.issue_acquisition_password("u1", actor="x") == "pw-B"
        finally:
            await client.close()

    async def test_a_node_that_never_accepts_is_failed_over_after_the_connect_limit(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """A host that has vanished drops connection attempts without an answer (here: a
        listening socket whose accept queue is full). After the connect limit the call moves
        to B, even a counted one (nothing was sent), and the silent node is in back-off."""
        _, b = fake_nodes
        with socket.socket() as silent:
            silent.bind(("127.0.0.1", 0))
            silent.listen(0)
            port = silent.getsockname()[1]
            fillers = []
            for _ in range(4):  # fill the accept queue: further SYNs are dropped
                filler = socket.socket()
                filler.setblocking(False)
                with contextlib.suppress(BlockingIOError):
                    filler.connect(("127.0.0.1", port))
                fillers.append(filler)
            client = CaClient([f"http://127.0.0.1:{port}", b.url], [b.url], TOKEN,
                              timeout=2.0, monotonic=Ticker())  # connect limit 1 s
            try:
                assert (await client.open_acquisition("u1", "acq")).node == b.url
                silent_node = client.internal.nodes[0]
                assert silent_node.failures == 1
                assert "ConnectionTimeoutError" in silent_node.last_error
            finally:
                await client.close()
                for filler in fillers:
                    filler.close()

    async def test_a_ticket_goes_to_any_node_and_is_never_replayed_once_sent(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """Tickets are in the CA's shared store: the node in use redeems one another node
        issued, and a refused connection moves it on with the ticket. A node that failed
        after the ticket was sent may have spent it, so the next node is asked without it
        (it checks the acquisition password itself)."""
        a, b = fake_nodes
        client = _client(a, b)
        try:
            ticket = await client.open_acquisition("u1", "acq")
            assert ticket.node == a.url
            client.internal.succeeded(client.internal.nodes[1])  # B in use now
            assert (await client.acquire("u1", "acq", ticket=ticket)).serial == "B"
            assert b.seen[-1][2]["ticket"] == "ticket-A"
            ticket = await client.open_acquisition("u1", "acq")
            assert ticket.node == b.url
            await b.stop()  # refused: nothing sent, the ticket moves on
            assert (await client.acquire("u1", "acq", ticket=ticket)).serial == "A"
            assert a.seen[-1][2]["ticket"] == "ticket-B"
            await b.start()
            a.behaviour = {"/v1/acquire": "503"}  # sent, answered 503: maybe spent
            ticket = await client.open_acquisition("u1", "acq")
            seen_a, seen_b = len(a.seen), len(b.seen)
            assert (await client.acquire("u1", "acq", ticket=ticket)).serial == "B"
            sent = [body for _, path, body in a.seen[seen_a:] + b.seen[seen_b:]
                    if path == "/v1/acquire"]
            assert [body.get("ticket") for body in sent].count(ticket.value) == 1
            assert "ticket" not in b.seen[-1][2]
            assert b.seen[-1][2]["acquisition_password"] == "acq"
        finally:
            await client.close()

    async def test_ocsp_crl_and_bundle_come_from_the_next_public_node(
            self, fake_nodes: tuple[FakeNode, FakeNode]) -> None:
        """A's public listener answers 504 or is gone: OCSP, CRL and bundle come from B."""
        a, b = fake_nodes
        a.behaviour = {"/ocsp": "504"}
        client = _client(a, b)
        try:
            assert await client.fetch_public("/ocsp", seconds=3, method="POST",
                                             data=b"req") == b"from B"
            assert client.public_url == b.url
            await b.stop()
            assert await client.trust_bundle() == b"from A"  # B dead, A's bundle is fine
            assert await client.fetch_public("/crl/g1.crl", seconds=3) == b"from A"
            await a.stop()
            with pytest.raises(CaUnavailable, match="cannot be reached"):
                await client.fetch_public("/crl/g1.crl", seconds=3)
        finally:
            await client.close()


async def test_each_internal_node_is_pinned_to_its_own_certificate(
        tmp_path: Path, clock: FakeClock) -> None:
    """Two TLS nodes with their own self-signed certificates: each is trusted through its own
    `ca_internal_trust` file; with the pins swapped neither is (a TLS failure moves on, as a
    refused connection does, and ends in CaUnavailable)."""
    nodes = []
    for name in ("A", "B"):
        cert, key = tmp_path / f"{name}.crt.pem", tmp_path / f"{name}.key.pem"
        ensure_server_certificate(cert, key, "https://127.0.0.1", clock)
        node = FakeNode(name, ssl_context=tls_server_context(cert, key))
        await node.start()
        nodes.append((node, tls_client_context(cert)))
    (a, pin_a), (b, pin_b) = nodes
    right = CaClient([a.url, b.url], [a.url], TOKEN, internal_ssl=[pin_a, pin_b])
    swapped = CaClient([a.url, b.url], [a.url], TOKEN, internal_ssl=[pin_b, pin_a])
    try:
        assert await right.revocations("latest", 0) == (7, [])
        await a.stop()
        assert await right.revocations("latest", 0) == (7, [])
        assert right.internal_url == b.url
        await a.start()
        with structlog.testing.capture_logs() as logs, \
                pytest.raises(CaUnavailable, match="ClientConnectorCertificateError"):
            await swapped.revocations("latest", 0)
        refused = [e for e in logs if e["event"] == "ca_node_certificate_refused"]
        assert [(e["log_level"], e["port"]) for e in refused] == [("error", a.port),
                                                                   ("error", b.port)]
        assert [path for node in (a, b) for path in node.paths()] == ["/v1/revocations"] * 2
    finally:
        await right.close()
        await swapped.close()
        await a.stop()
        await b.stop()


@pytest.mark.parametrize(("lines", "message"), [
    ('ca_internal_url = ["https://127.0.0.1:9", "ftp://127.0.0.1:10"]',
     "gateway.ca_internal_url[1] must start with http:// or https://"),
    ('ca_public_url = ["http://127.0.0.1:9", "127.0.0.1:10"]',
     "gateway.ca_public_url[1] must start with http:// or https://"),
    ('ca_internal_url = ["https://127.0.0.1:9", "https://127.0.0.1:10"]\n'
     'ca_internal_trust = ["{present}", "{missing}"]',
     "gateway.ca_internal_trust: {missing} does not exist"),
])
def test_serve_refuses_a_wrong_node_naming_the_key(
        tmp_path: Path, clock: FakeClock, capsys: pytest.CaptureFixture[str], lines: str,
        message: str) -> None:
    """`sekisho-gateway serve` stops at start-up (exit 1, one line naming the key and the
    item) before asking any node: a wrong URL in a list, a missing pin of the second node."""
    from gateway import cli as gateway_cli

    present, missing = tmp_path / "node1.crt.pem", tmp_path / "node2.crt.pem"
    ensure_server_certificate(present, tmp_path / "node1.key.pem", "https://127.0.0.1", clock)
    token = tmp_path / "token"
    token.write_text("t" * 40)
    token.chmod(0o600)
    config = tmp_path / "config.toml"
    config.write_text(f"""
[gateway]
database = "{tmp_path / 'gw.sqlite3'}"
ca_api_token_file = "{token}"
ca_root_sha256 = "{'ab' * 32}"
{lines.format(present=present, missing=missing)}
""")
    assert gateway_cli.main(["--config", str(config), "serve"]) == 1
    err = capsys.readouterr().err
    assert message.format(missing=missing) in err and "Traceback" not in err
