"""Regression tests named after public CVEs of our class, each against the real daemons with
a real client (issue 10 "Also"). Our design must never repeat them.

* nginx CVE-2025-23419: a TLS session resumed under another name (SNI) or context skipped
  client-certificate verification.
* Traefik (CVE-2022-46153 and kin): the TLS options chosen by SNI, the route by Host, so a
  client asking for one name and a Host of another reached a route without client-cert
  checks; and a ClientHello fragmented over several TCP segments or TLS records escaped SNI
  detection and got the default (certificate-less) options.
* Keycloak (CVE-2023-2422 family, and its OCSP/CRL fetches): a certificate's own CRL/OCSP
  URLs fetched before its chain was trusted (server-side request forgery, and an attacker's
  responder deciding revocation).
* Vault CVE-2021-29653: a CRL tidy dropped revoked certificates that had not expired.
"""

from __future__ import annotations

import socket
import ssl
import struct
import time
from datetime import timedelta

import pytest
from aiohttp import web
from cryptography import x509

from tests.conftest import CaHarness
from tests.gateway.conftest import Enrolled, GatewayHarness, forge
from tests.gateway.test_trust_anchor import AttackerCa, leaf
from tests.support.servers import LoopThread, free_port, http_get


def _address(gw: GatewayHarness) -> tuple[str, int]:
    host, port = gw.url.removeprefix("https://").rsplit(":", 1)
    return host, int(port)


def _client_context(gw: GatewayHarness, who: Enrolled | None) -> ssl.SSLContext:
    context = gw.ssl_context(who)
    context.check_hostname = False  # the point of these tests is other names
    return context


def _status(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.") else 0


def _exchange(tls: ssl.SSLSocket, path: str, cookie: str = "") -> bytes:
    extra = f"Cookie: {cookie}\r\n" if cookie else ""
    tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra}Connection: close\r\n\r\n"
                .encode())
    answer = b""
    try:
        while chunk := tls.recv(65536):
            answer += chunk
    except (ssl.SSLError, ConnectionError, TimeoutError):
        pass
    return answer


def _connect(gw: GatewayHarness, context: ssl.SSLContext, sni: str,
             session: ssl.SSLSession | None = None) -> ssl.SSLSocket:
    raw = socket.create_connection(_address(gw), timeout=10)
    return context.wrap_socket(raw, server_hostname=sni, session=session)


class TestNginxCve2025_23419:
    """TLS session resumption never carries a client-certificate decision to another name,
    nor past a revocation: the certificate is read and checked on every request."""

    def _first_session(self, gw: GatewayHarness, context: ssl.SSLContext,
                       sni: str) -> ssl.SSLSession:
        with _connect(gw, context, sni) as tls:
            answer = _exchange(tls, "/auth/")
            assert _status(answer) == 200
            session = tls.session
        assert session is not None
        return session

    def test_resumed_under_other_sni_after_revocation_is_refused(self,
                                                                 gw: GatewayHarness) -> None:
        """A session made with a valid certificate under SNI localhost, resumed under SNI
        other.example after the certificate's revocation: 403 cert_revoked."""
        user = gw.enroll("540001")
        context = _client_context(gw, user)
        session = self._first_session(gw, context, "localhost")
        status, _ = gw.ca.api("POST", "/v1/revoke", json={"serial": user.serial,
                                                            "reason": "keyCompromise"})
        assert status == 200
        deadline = time.monotonic() + 5
        while True:
            with _connect(gw, context, "other.example", session) as tls:
                reused = tls.session_reused
                answer = _exchange(tls, "/auth/login")
            if _status(answer) == 403 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert _status(answer) == 403 and b'data-code="cert_revoked"' in answer, answer[:300]
        print(f"session resumed under another SNI: {reused}")

    def test_certificate_less_session_resumed_under_other_sni_has_no_identity(
            self, gw: GatewayHarness) -> None:
        """A session made without a certificate, resumed under another SNI by a client that
        now holds one: still no certificate (401 cert_required), never a login."""
        user = gw.enroll("540002")
        context = _client_context(gw, None)  # Python resumes only within one context
        session = self._first_session(gw, context, "localhost")
        context.load_cert_chain(user.cert_file, user.key_file)
        with _connect(gw, context, "other.example", session) as tls:
            reused = tls.session_reused
            answer = _exchange(tls, "/auth/login")
        if reused:
            assert _status(answer) == 401 and b'data-code="cert_required"' in answer
        else:  # a full handshake: the certificate was presented and verified
            assert _status(answer) == 200

    def test_foreign_certificate_never_rides_a_resumed_session(self,
                                                               gw: GatewayHarness) -> None:
        """A foreign CA's certificate with a session of a valid one: the TLS layer refuses
        the foreign certificate on a full handshake; on resumption it is never sent, and
        the session's own (valid) certificate is the one judged."""
        user = gw.enroll("540003")
        gw.add_user("540004")
        foreign = forge(gw, "540004", foreign=True)
        context = _client_context(gw, user)
        session = self._first_session(gw, context, "localhost")
        context.load_cert_chain(foreign.cert_file, foreign.key_file)
        with _connect(gw, context, "other.example", session) as tls:
            reused = tls.session_reused
            answer = _exchange(tls, "/auth/login")
        assert b"540004" not in answer
        assert reused or _status(answer) == 0


class TestTraefikSniHostMismatch:
    """One TLS configuration for every name: SNI and Host cannot pick a laxer one."""

    @pytest.mark.parametrize("sni", ["localhost", "other.example", "admin.internal"])
    @pytest.mark.parametrize("host", ["127.0.0.1", "other.example", "backend.internal"])
    def test_any_sni_any_host_same_checks(self, gw: GatewayHarness, sni: str,
                                          host: str) -> None:
        """Without a certificate every SNI/Host pair is sent to the login page; a foreign
        certificate fails the handshake under every SNI."""
        with _connect(gw, _client_context(gw, None), sni) as tls:
            tls.sendall(f"GET /trade/forward HTTP/1.1\r\nHost: {host}\r\n"
                        "Connection: close\r\n\r\n".encode())
            answer = b""
            while chunk := tls.recv(65536):
                answer += chunk
        assert _status(answer) == 303 and b"Location: /auth/" in answer
        gw.add_user("540010")
        foreign = forge(gw, "540010", foreign=True, suffix=f"-{sni}-{host}")
        assert _status(_login_page_or_nothing(gw, _client_context(gw, foreign), sni)) == 0


def _login_page_or_nothing(gw: GatewayHarness, context: ssl.SSLContext, sni: str) -> bytes:
    """/auth/login's answer, or b"" when the handshake is refused (with TLS 1.3 the refusal
    of a client certificate arrives after the client's first write)."""
    try:
        with _connect(gw, context, sni) as tls:
            return _exchange(tls, "/auth/login")
    except (ssl.SSLError, ConnectionError):
        return b""


def _refragment(flight: bytes, record_size: int) -> bytes:
    """The client's first flight with each handshake record split into records of at most
    `record_size` bytes (RFC 8446 §5.1 allows handshake messages over several records)."""
    out = b""
    while flight:
        kind, version, length = struct.unpack("!BHH", flight[:5])
        payload, flight = flight[5:5 + length], flight[5 + length:]
        if kind != 22:
            out += struct.pack("!BHH", kind, version, length) + payload
            continue
        for start in range(0, len(payload), record_size):
            piece = payload[start:start + record_size]
            out += struct.pack("!BHH", kind, version, len(piece)) + piece
    return out


def fragmented_get(gw: GatewayHarness, who: Enrolled | None, path: str, *,
                   record_size: int, segment_size: int, sni: str = "localhost") -> bytes:
    """GET `path` over TLS whose ClientHello goes out in records of `record_size` bytes,
    each TCP write `segment_size` bytes (TCP_NODELAY, a pause between writes)."""
    context = _client_context(gw, who)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    tls = context.wrap_bio(incoming, outgoing, server_hostname=sni)
    with socket.create_connection(_address(gw), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        first = True
        while True:
            try:
                tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                flight = outgoing.read()
                if first and flight:
                    flight = _refragment(flight, record_size)
                    for start in range(0, len(flight), segment_size):
                        sock.sendall(flight[start:start + segment_size])
                        time.sleep(0.001)
                    first = False
                elif flight:
                    sock.sendall(flight)
                data = sock.recv(65536)
                if not data:
                    raise ConnectionError("closed during the handshake") from None
                incoming.write(data)
        sock.sendall(outgoing.read())
        tls.write(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        sock.sendall(outgoing.read())
        answer = b""
        while True:
            try:
                chunk = tls.read(65536)
                if not chunk:
                    break
                answer += chunk
                continue
            except ssl.SSLWantReadError:
                pass
            except (ssl.SSLZeroReturnError, ssl.SSLError):
                break
            data = sock.recv(65536)
            if not data:
                break
            incoming.write(data)
            sock.sendall(outgoing.read())  # TLS 1.3 key updates, alerts
    return answer


class TestTraefikFragmentedClientHello:
    """A ClientHello split over TCP segments and TLS records is verified like any other."""

    @pytest.mark.parametrize(("record_size", "segment_size"), [(16384, 1), (40, 7), (1, 3)])
    def test_fragmented_hello_with_valid_certificate_logs_in_page(
            self, gw: GatewayHarness, record_size: int, segment_size: int) -> None:
        """The twin: fragmentation does not break a legitimate login page."""
        user = gw.enroll(f"54002{record_size % 10}")
        answer = fragmented_get(gw, user, "/auth/login", record_size=record_size,
                                segment_size=segment_size)
        assert _status(answer) == 200 and user.user_id.encode() in answer

    @pytest.mark.parametrize(("record_size", "segment_size"), [(16384, 1), (40, 7), (1, 3)])
    def test_fragmented_hello_without_or_with_foreign_certificate_gets_nothing(
            self, gw: GatewayHarness, record_size: int, segment_size: int) -> None:
        """No certificate: the backend path still redirects to the login page; a foreign
        certificate: the handshake fails."""
        answer = fragmented_get(gw, None, "/trade/forward", record_size=record_size,
                                segment_size=segment_size, sni="no-client-auth.example")
        assert _status(answer) == 303 and b"Location: /auth/" in answer
        gw.add_user("540030")
        foreign = forge(gw, "540030", foreign=True, suffix=f"-{record_size}-{segment_size}")
        try:
            answer = fragmented_get(gw, foreign, "/auth/login", record_size=record_size,
                                    segment_size=segment_size)
        except (ssl.SSLError, ConnectionError):
            answer = b""
        assert _status(answer) == 0, answer[:200]


class TestKeycloakCertificateUrlsBeforeTrust:
    """The URLs inside a presented certificate are never fetched: not before the chain is
    trusted, not after (test_trust_anchor.TestRevocationOnlyAtOurCa has the trusted case)."""

    def test_untrusted_certificate_urls_never_fetched(self, gw: GatewayHarness) -> None:
        """A foreign CA's certificate whose AIA (OCSP, caIssuers) and CRL DP name a
        listener: the handshake fails and the listener hears nothing."""
        seen: list[str] = []

        async def record(request: web.Request) -> web.Response:
            seen.append(request.path)
            return web.Response(status=404)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        loop = LoopThread()
        runner, port = loop.start_app(app, free_port())
        try:
            gw.add_user("540040")
            attacker = AttackerCa.make(x509.Name.from_rfc4514_string("CN=Foreign CA"))
            certificate, key = leaf("540040", attacker.certificate.subject, attacker.key,
                                    ocsp_url=f"http://127.0.0.1:{port}/ocsp",
                                    crl_url=f"http://127.0.0.1:{port}/crl.crl")
            foreign = gw.write_pem("540040", "unused", certificate, key, suffix="-kc")
            result = gw.curl("/auth/login", foreign)
            assert result.stdout.endswith("\n000"), result.stdout[-200:]
            time.sleep(0.3)
            assert seen == []
        finally:
            loop.run(runner.cleanup())
            loop.stop()


class TestVaultCve2021_29653:
    """A revoked certificate that has not expired stays on the CRL whatever else is tidied."""

    def test_revoked_unexpired_stays_on_crl_after_others_expire(self, ca: CaHarness) -> None:
        """B (issued first, revoked) expires and leaves the CRL (crl.drop_expired); A
        (issued 200 days later, revoked) stays on the CRL the public listener serves, and
        the CA still reports it revoked."""
        serials = {}
        for name, user_id in (("B", "540050"), ("A", "540051")):
            status, body = ca.acquire(user_id, ca.acquisition_password(user_id))
            assert status == 201, body
            serials[name] = int(body["serial"], 16)
            status, body = ca.api("POST", "/v1/revoke", json={"serial": body["serial"],
                                                                 "reason": "keyCompromise"})
            assert status == 200, body
            ca.sync()
            if name == "B":
                ca.clock.advance(timedelta(days=200))
                ca.time_passed()

        def crl_serials() -> set[int]:
            status, _, der = http_get(f"{ca.public_url}/crl/g1.crl")
            assert status == 200
            return {entry.serial_number for entry in x509.load_der_x509_crl(der)}

        assert crl_serials() >= {serials["A"], serials["B"]}
        ca.clock.advance(timedelta(days=166, hours=1))  # past B's notAfter, A has 200 days
        ca.time_passed()
        ca.sync()
        on_crl = crl_serials()
        assert serials["A"] in on_crl, "a revoked, unexpired certificate left the CRL"
        assert serials["B"] not in on_crl
        status, view = ca.api("GET", f"/v1/certificates/{serials['A']:x}")
        assert status == 200 and view["state"] == "revoked", view
