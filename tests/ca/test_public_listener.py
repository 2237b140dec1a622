"""The public listener's OCSP fast path and its hand-off to aiohttp (ca/public_listener.py).

Raw sockets, because what is under test is HTTP framing: keep-alive, pipelining, requests that
arrive a byte at a time, and connections that change hands mid-way.
"""

from __future__ import annotations

import asyncio
import base64
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509 import ocsp

from ca.api import ocsp as ocsp_routes
from ca.api.internal import RUNTIME
from ca.public_listener import PublicListener, RequestHead, parse_head
from common.listener import ConnectionLimits
from tests.conftest import CaHarness

_POST_HEAD = b"POST /ocsp HTTP/1.1\r\nHost: ca\r\nContent-Type: application/ocsp-request\r\n"


def _request_der(ca: CaHarness, tmp_path: Path, user_id: str) -> tuple[x509.Certificate, bytes]:
    _, out = ca.issue_csr(user_id, tmp_path)
    ca.sync()
    leaf = x509.load_pem_x509_certificate(out.read_bytes())
    issuer = x509.load_pem_x509_certificate(ca.issuer_files()["g1"].read_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate(leaf, issuer, hashes.SHA256()).build()
    return leaf, request.public_bytes(serialization.Encoding.DER)


def _post(der: bytes, *, version: bytes = b"1.1", extra: bytes = b"") -> bytes:
    head = _POST_HEAD.replace(b"HTTP/1.1", b"HTTP/" + version)
    return head + extra + b"Content-Length: %d\r\n\r\n" % len(der) + der


class _Client:
    """A raw HTTP/1.x client on one connection that reads Content-Length framed answers."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self._reader = self.sock.makefile("rb")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def response(self) -> tuple[int, dict[str, str], bytes]:
        """The next response: status, headers (lower-case names), body."""
        status_line = self._reader.readline()
        assert status_line.startswith(b"HTTP/1.1 "), status_line
        headers = {}
        while (line := self._reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode().partition(":")
            headers[name.strip().lower()] = value.strip()
        body = self._reader.read(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body

    def closed_by_server(self) -> bool:
        """True when the server has closed its side."""
        return self._reader.read(1) == b""

    def close(self) -> None:
        self._reader.close()
        self.sock.close()


@pytest.fixture
def client(ca: CaHarness) -> Iterator[_Client]:
    """A raw connection to the CA's public listener."""
    connection = _Client(ca.config.public_listen.port)
    yield connection
    connection.close()


@pytest.fixture
def request_der(ca: CaHarness, tmp_path: Path) -> bytes:
    """A nonce-less OCSP request for a freshly issued certificate."""
    return _request_der(ca, tmp_path, "600001")[1]


def _cert_status(body: bytes) -> ocsp.OCSPCertStatus:
    return ocsp.load_der_ocsp_response(body).certificate_status


class TestParseHead:
    """Which requests the fast path serves itself; everything else goes to aiohttp."""

    @pytest.mark.parametrize(("head", "expected"), [
        (_POST_HEAD + b"Content-Length: 5", RequestHead(b"POST", b"/ocsp", 5, True)),
        (b"POST /ocsp/ HTTP/1.0\r\ncontent-type: Application/OCSP-Request; x=y\r\n"
         b"Connection: Keep-Alive\r\ncontent-length: 0", RequestHead(b"POST", b"/ocsp/", 0, True)),
        (b"POST /ocsp HTTP/1.0\r\nContent-Type: application/ocsp-request\r\nContent-Length: 9",
         RequestHead(b"POST", b"/ocsp", 9, False)),
        (b"GET /ocsp/MEUw+/= HTTP/1.1\r\nHost: x\r\nConnection: close",
         RequestHead(b"GET", b"/ocsp/MEUw+/=", 0, False)),
    ])
    def test_served_shapes(self, head: bytes, expected: RequestHead) -> None:
        """POST with a length and the OCSP type, and GET with plain base64."""
        assert parse_head(head) == expected

    @pytest.mark.parametrize("head", [
        _POST_HEAD + b"Transfer-Encoding: chunked",
        _POST_HEAD + b"Content-Length: 5\r\nExpect: 100-continue",
        _POST_HEAD + b"Content-Length: 5\r\nContent-Length: 5",
        _POST_HEAD + b"Content-Length: 99999",
        _POST_HEAD + b"Content-Length: -1",
        _POST_HEAD[:-2],  # no length
        b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 5",
        _POST_HEAD.replace(b"/ocsp", b"/ocsp/abc") + b"Content-Length: 5",
        _POST_HEAD.replace(b"Host: ca\r\n", b"") + b"Content-Length: 5",  # HTTP/1.1, no Host
        b"POST /crl HTTP/1.1\r\nHost: x\r\nContent-Length: 5",
        b"GET /health HTTP/1.1\r\nHost: x",
        b"GET /ocsp/ HTTP/1.1\r\nHost: x",
        b"GET /ocsp/%2B HTTP/1.1\r\nHost: x",
        b"GET /ocsp/AAAA?x=1 HTTP/1.1\r\nHost: x",
        b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nContent-Length: 3",
        b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket",
        b"GET /ocsp/AAAA HTTP/2.0\r\nHost: x",
        b"get /ocsp/AAAA HTTP/1.1\r\nHost: x",
        b"GET  /ocsp/AAAA HTTP/1.1\r\nHost: x",
        b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\n folded: header",
        b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nBad Name: x",
        b"GET /ocsp/AAAA HTTP/1.1\r\nHost: x\r\nX: a\x00b",
    ])
    def test_deferred_shapes(self, head: bytes) -> None:
        """Chunked, Expect, duplicates, faults and other paths are aiohttp's to answer."""
        assert parse_head(head) is None


class TestFastPath:
    """Framing on the fast path."""

    def test_pipelined_keep_alive(self, client: _Client, request_der: bytes) -> None:
        """Three requests in one write get three answers, in order, on one connection."""
        client.send(_post(request_der) * 3)
        for _ in range(3):
            status, headers, body = client.response()
            assert (status, headers["content-type"]) == (200, "application/ocsp-response")
            assert headers["cache-control"] == "no-store"
            assert _cert_status(body) == ocsp.OCSPCertStatus.GOOD

    def test_http10_closes_unless_keep_alive(self, ca: CaHarness, request_der: bytes) -> None:
        """HTTP/1.0 closes after the answer; with Connection: keep-alive it stays open."""
        plain = _Client(ca.config.public_listen.port)
        plain.send(_post(request_der, version=b"1.0"))
        assert plain.response()[1]["connection"] == "close"
        assert plain.closed_by_server()
        plain.close()
        kept = _Client(ca.config.public_listen.port)
        for _ in range(2):
            kept.send(_post(request_der, version=b"1.0", extra=b"Connection: keep-alive\r\n"))
            assert kept.response()[1]["connection"] == "keep-alive"
        kept.close()

    def test_request_a_byte_at_a_time(self, client: _Client, request_der: bytes) -> None:
        """A request split into single bytes is answered once complete."""
        for byte in _post(request_der):
            client.send(bytes([byte]))
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD

    def test_same_answer_on_both_paths(self, ca: CaHarness, client: _Client,
                                       request_der: bytes) -> None:
        """A GET in plain base64 (fast path) and percent-encoded (aiohttp) answer alike."""
        encoded = base64.b64encode(request_der)
        client.send(b"GET /ocsp/" + encoded + b" HTTP/1.1\r\nHost: ca\r\n\r\n")
        fast = client.response()
        escaped = encoded.replace(b"+", b"%2B").replace(b"/", b"%2F").replace(b"=", b"%3D")
        client.send(b"GET /ocsp/" + escaped + b" HTTP/1.1\r\nHost: ca\r\n\r\n")
        slow = client.response()
        assert fast[2] == slow[2]
        assert fast[0] == slow[0] == 200
        for name in ("content-type", "cache-control", "etag", "last-modified", "expires"):
            assert fast[1][name] == slow[1][name], name

    def test_serial_not_yet_in_index_is_looked_up(self, ca: CaHarness, tmp_path: Path) -> None:
        """A serial the responder has not heard of yet is looked up in the store, not unknown."""
        leaf, der = _request_der(ca, tmp_path, "600002")
        ca.runtime.ocsp._index.pop(leaf.serial_number, None)  # as if issued a moment ago
        client = _Client(ca.config.public_listen.port)
        client.send(_post(der) + _post(der))  # the second waits behind the lookup
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD
        client.close()

    def test_client_done_sending_still_gets_a_looked_up_answer(
            self, ca: CaHarness, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        """A client that half-closes after its request gets the answer even when it needs a
        store lookup; then the connection closes."""
        leaf, der = _request_der(ca, tmp_path, "600003")
        service = ca.runtime.ocsp
        service._index.pop(leaf.serial_number, None)
        lookup = service._load_from_store
        looked_up: list[int] = []

        async def slow_lookup(serial: int) -> None:
            looked_up.append(serial)
            await asyncio.sleep(0.2)  # the client's FIN arrives meanwhile
            await lookup(serial)

        monkeypatch.setattr(service, "_load_from_store", slow_lookup)
        client = _Client(ca.config.public_listen.port)
        client.send(_post(der))
        client.sock.shutdown(socket.SHUT_WR)
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD
        assert looked_up == [leaf.serial_number]
        assert client.closed_by_server()
        client.close()

    def test_fault_of_ours_is_internal_error(self, ca: CaHarness, client: _Client,
                                             request_der: bytes,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
        """An unexpected exception answers OCSP internalError and the connection lives on."""

        def broken(der: bytes) -> None:
            raise RuntimeError("simulated fault")

        monkeypatch.setattr(ca.runtime.ocsp, "try_respond", broken)
        client.send(_post(request_der))
        status, _, body = client.response()
        assert status == 200
        assert (ocsp.load_der_ocsp_response(body).response_status
                == ocsp.OCSPResponseStatus.INTERNAL_ERROR)
        monkeypatch.undo()
        client.send(_post(request_der))
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD


class TestHandOff:
    """Connections the fast path gives to aiohttp keep every byte and every answer."""

    def test_other_route_mid_connection(self, client: _Client, request_der: bytes) -> None:
        """OCSP, then /health, then OCSP again, pipelined on one connection."""
        client.send(_post(request_der) + b"GET /health HTTP/1.1\r\nHost: ca\r\n\r\n"
                    + _post(request_der))
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD
        assert client.response()[0] == 200
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD

    def test_chunked_post(self, client: _Client, request_der: bytes) -> None:
        """A chunked body (no Content-Length) is answered by aiohttp's parser."""
        chunk = b"%x\r\n" % len(request_der) + request_der + b"\r\n0\r\n\r\n"
        client.send(_POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n" + chunk)
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD

    def test_chunked_post_in_pieces(self, client: _Client, request_der: bytes) -> None:
        """A chunked body whose chunks arrive apart is read whole before it is parsed."""
        half = len(request_der) // 2
        client.send(_POST_HEAD + b"Transfer-Encoding: chunked\r\n\r\n"
                    + b"%x\r\n" % half + request_der[:half] + b"\r\n")
        time.sleep(0.2)
        rest = request_der[half:]
        client.send(b"%x\r\n" % len(rest) + rest + b"\r\n0\r\n\r\n")
        assert _cert_status(client.response()[2]) == ocsp.OCSPCertStatus.GOOD

    def test_faults_keep_their_status(self, client: _Client) -> None:
        """Wrong content type is still 415, an oversized length 413 (from aiohttp)."""
        client.send(b"POST /ocsp HTTP/1.1\r\nHost: ca\r\nContent-Type: text/plain\r\n"
                    b"Content-Length: 2\r\n\r\n\x30\x00")
        assert client.response()[0] == 415
        client.send(_POST_HEAD + b"Content-Length: 10485760\r\n\r\n" + b"\x30" * 40_000)
        assert client.response()[0] == 413

    def test_bare_lf_head_is_not_left_waiting(self, client: _Client) -> None:
        """Line ends without CR go to aiohttp at once, which refuses them, instead of the
        connection waiting for a blank line that never comes."""
        client.send(b"GET /health HTTP/1.1\nHost: ca\n\n")
        client.sock.settimeout(5)
        try:
            answer = client.sock.recv(100)
        except TimeoutError:
            pytest.fail("the request was left waiting")
        assert answer.startswith(b"HTTP/1.0 400 ")


def test_idle_connections_are_closed(ca: CaHarness) -> None:
    """A client that connects and sends nothing, or half a head, is closed after the timeout."""
    app = web.Application()
    app[RUNTIME] = ca.runtime
    ocsp_routes.add_routes(app)
    limits = ConnectionLimits(header_timeout=0.2, body_timeout=0.2, keepalive_timeout=0.2)
    listener = ca.loop.run(PublicListener.start(app, "127.0.0.1", 0, limits=limits))
    try:
        silent, partial = _Client(listener.port), _Client(listener.port)
        partial.send(b"POST /ocsp HTTP/1.1\r\nHost")
        started = time.monotonic()
        assert silent.closed_by_server() and partial.closed_by_server()
        assert time.monotonic() - started < 5
        silent.close()
        partial.close()
    finally:
        ca.loop.run(listener.cleanup())
