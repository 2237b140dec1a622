"""Fixtures: the user store and authenticator alone, and a real gateway with its CA and backend."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import socket
import ssl
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from ca.config import load_ca_config
from common.config import load_raw
from common.passwords import PasswordHasher
from common.tlsfiles import ensure_server_certificate
from demo.backend import build_app as build_backend
from gateway.app import build_app, prepare_server
from gateway.auth import Authenticator
from gateway.cli import ca_client_for, load_trust_bundle, trust_anchor_for
from gateway.config import GatewayConfig, gateway_config_from
from gateway.state import AUTH, REVOCATION
from gateway.tls import server_context
from gateway.users import UserStore
from policy.clock import FakeClock
from policy.password import PasswordPolicy
from tests.conftest import CaHarness, init_ca, start_ca
from tests.support.servers import LoopThread, free_port


@pytest.fixture
def cheap_hasher() -> Iterator[PasswordHasher]:
    """argon2id with small parameters, for tests that are not about hashing cost."""
    hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)
    yield hasher
    hasher.close()


@pytest.fixture
async def store(tmp_path: Path, clock: FakeClock) -> AsyncIterator[UserStore]:
    """A fresh user store in its own SQLite file."""
    opened = await UserStore.open(tmp_path / "gateway" / "gateway.sqlite3", clock)
    yield opened
    await opened.close()


@pytest.fixture
def auth(store: UserStore, cheap_hasher: PasswordHasher, clock: FakeClock) -> Authenticator:
    """The bank's default password policy and a three-try lockout."""
    return Authenticator(store, cheap_hasher, PasswordPolicy(), clock=clock, lockout_max=3)


# -- a real gateway: CA + demo backend + gateway on loopback, real TLS (STYLE 9) -------------

GOOD_PASSWORD = "kj3h5gq8Wz"
SESSION_COOKIE = "__Host-sekisho-session"


@dataclass
class Enrolled:
    """A user with a certificate: PEM files for curl and Python's ssl."""

    user_id: str
    password: str
    cert_file: Path
    key_file: Path
    serial: str
    fingerprint: str
    not_after: datetime


@dataclass
class GatewayHarness:
    """A running gateway with its CA and demo backend, all sharing one FakeClock."""

    ca: CaHarness
    config: GatewayConfig
    app: web.Application
    url: str
    server_cert: Path
    clock: FakeClock
    directory: Path
    gateway_loop: LoopThread
    backend_loop: LoopThread
    runners: list[tuple[LoopThread, web.AppRunner]]
    users: UserStore
    hasher: PasswordHasher
    ca_running: bool = True

    def run(self, coro: Any) -> Any:
        """Run a coroutine on the gateway's loop."""
        return self.gateway_loop.run(coro)

    @property
    def auth(self) -> Authenticator:
        """The gateway's authenticator."""
        return self.app[AUTH]

    def add_user(self, user_id: str, *, role: str = "contractor", name: str = "Tanaka Taro",
                 customer: str = "ABC Trading", password: str | None = GOOD_PASSWORD) -> str:
        """Create a user; with `password`, it is also changed from the temporary one.

        Returns the password now valid (the temporary one when `password` is None).
        """
        _, temporary = self.run(self.auth.add_user(user_id, name=name, customer=customer,
                                                   role=role, actor="helpdesk:test"))
        if password is None:
            return str(temporary)
        result = self.run(self.auth.change_password(user_id, temporary, password))
        assert result.status.value == "changed", result
        return password

    def issue(self, user_id: str, password: str) -> Enrolled:
        """Acquire a certificate for `user_id` through the CA API; write PEM files."""
        return self.acquire(user_id, password, self.acquisition_password(user_id))

    def acquire(self, user_id: str, password: str, acquisition: str, *,
                suffix: str = "") -> Enrolled:
        """Acquire with a given acquisition password (at the clock's time); PEM files."""
        status, body = self.ca.acquire(user_id, acquisition)
        assert status == 201, body
        return self.write_pkcs12(user_id, password, base64.b64decode(body["pkcs12"]),
                                 acquisition=acquisition, suffix=suffix)

    def acquisition_password(self, user_id: str) -> str:
        """Have the CA issue an acquisition password for `user_id`."""
        return self.ca.acquisition_password(user_id)

    def write_pkcs12(self, user_id: str, password: str, data: bytes, *,
                     acquisition: str | None, suffix: str = "") -> Enrolled:
        """Unpack a PKCS#12 (encrypted with `acquisition`, or not) into PEM files."""
        key, cert, _ = pkcs12.load_key_and_certificates(
            data, acquisition.encode() if acquisition else None)
        if key is None or cert is None:  # the CA's files carry the acquisition password
            raise AssertionError("PKCS#12 without key or certificate")
        return self.write_pem(user_id, password, cert, key, suffix=suffix)

    def write_pem(self, user_id: str, password: str, cert: x509.Certificate, key: Any, *,
                  suffix: str = "") -> Enrolled:
        """Write a certificate and key as PEM files for curl and ssl."""
        return write_client_pem(self.directory / "clients", user_id, password, cert, key,
                                suffix=suffix)

    def enroll(self, user_id: str, *, role: str = "contractor", name: str = "Tanaka Taro",
               customer: str = "ABC Trading") -> Enrolled:
        """A user with a changed password and a certificate."""
        password = self.add_user(user_id, role=role, name=name, customer=customer)
        return self.issue(user_id, password)

    def ssl_context(self, who: Enrolled | None = None) -> ssl.SSLContext:
        """A client context trusting the gateway's server certificate, presenting `who`'s."""
        context = ssl.create_default_context(cafile=str(self.server_cert))
        if who is not None:
            context.load_cert_chain(who.cert_file, who.key_file)
        return context

    def browser(self, who: Enrolled | None = None) -> Browser:
        """A cookie-keeping HTTPS client (aiohttp) presenting `who`'s certificate."""
        return Browser(self.url, self.ssl_context(who), who)

    def curl(self, path: str, who: Enrolled | None = None, *args: str
             ) -> subprocess.CompletedProcess[str]:
        """Run curl against the gateway; output ends with the status code on its own line."""
        command = ["curl", "-sS", "--max-time", "20", "--cacert", str(self.server_cert),
                   "-w", "\n%{http_code}", *args]
        if who is not None:
            command += ["--cert", str(who.cert_file), "--key", str(who.key_file)]
        return subprocess.run([*command, self.url + path], capture_output=True, text=True,
                              timeout=30, check=False)

    def curl_login(self, who: Enrolled, *args: str,
                   ) -> tuple[str, subprocess.CompletedProcess[str]]:
        """Log `who` in with curl and a cookie jar: the login page for its CSRF token, then
        the form (`args` go to that POST, e.g. -L); returns the jar and the POST's result."""
        jar = str(self.directory / f"curl-cookies-{who.user_id}.txt")
        page = self.curl("/auth/login", who, "-c", jar, "-b", jar)
        return jar, self.curl("/auth/login", who, "-c", jar, "-b", jar, *args,
                              "--data-urlencode", f"csrf={csrf_of(page.stdout)}",
                              "--data-urlencode", f"password={who.password}")

    def stop_ca(self) -> None:
        """Stop the CA (its public and internal ports close)."""
        if self.ca_running:
            for runner in self.ca.runners:
                # The gateway's revocation long-poll may still be parked in a CA handler;
                # do not wait the runner's full grace period for it.
                runner._shutdown_timeout = 0.05
            self.ca.stop()
            self.ca_running = False

    def stop(self) -> None:
        """Stop everything this harness started."""
        for loop, runner in reversed(self.runners):
            loop.run(runner.cleanup())
        self.run(self.users.close())
        self.hasher.close()
        self.gateway_loop.stop()
        self.backend_loop.stop()
        self.stop_ca()


def raw_exchange(harness: GatewayHarness, request: bytes, who: Enrolled | None = None, *,
                 server_hostname: str = "localhost", seconds: float = 10) -> bytes:
    """Send `request` byte for byte over one TLS connection (Python's ssl, `who`'s
    certificate) and return everything the gateway answers until it closes or goes quiet:
    for targets and headers that HTTP client libraries would normalise or refuse."""
    context = harness.ssl_context(who)
    context.check_hostname = False
    host, port = harness.url.removeprefix("https://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=seconds) as raw, \
            context.wrap_socket(raw, server_hostname=server_hostname) as tls:
        tls.sendall(request)
        answer = b""
        try:
            while chunk := tls.recv(65536):
                answer += chunk
                if b"\r\n\r\n" in answer and _complete(answer):
                    break
        except (TimeoutError, ssl.SSLError, ConnectionError):
            pass
    return answer


def _complete(answer: bytes) -> bool:
    head, _, body = answer.partition(b"\r\n\r\n")
    match = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    return match is not None and len(body) >= int(match.group(1))


CSRF_PATTERN = re.compile(r'name="csrf" value="([^"]+)"')


async def wait_closed_by_server(ws: aiohttp.ClientWebSocketResponse, seconds: float = 10) -> None:
    """Read (and drop) messages until the gateway closes the WebSocket; TimeoutError when it
    has not within `seconds` (the demo sends quotes every 0.5 s, so a per-read timeout would
    never fire and the test would hang)."""
    async with asyncio.timeout(seconds):
        while True:
            message = await ws.receive()
            if message.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED,
                                aiohttp.WSMsgType.CLOSING):
                return


def csrf_of(html: str) -> str:
    """The CSRF token of the first form in a page's main part (the header's ログアウト form
    carries the session's token too)."""
    match = CSRF_PATTERN.search(html, max(0, html.find("<main"))) or CSRF_PATTERN.search(html)
    assert match, f"no CSRF token in page: {html[:500]}"
    return match.group(1)


def error_code_of(html: str) -> str | None:
    """The error code an error page shows (data-code), if any."""
    match = re.search(r'id="error" data-code="([^"]+)"', html)
    return match.group(1) if match else None


@dataclass
class Page:
    """One HTTP answer as a browser saw it."""

    status: int
    text: str
    headers: Any
    url: str
    body: bytes

    @property
    def error(self) -> str | None:
        """The error code of an error page."""
        return error_code_of(self.text)


class Browser:
    """A cookie-keeping HTTPS client (aiohttp) with one client certificate."""

    def __init__(self, base: str, context: ssl.SSLContext, who: Enrolled | None) -> None:
        self.base = base
        self.context = context
        self.who = who
        self.jar = aiohttp.CookieJar(unsafe=True)
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Browser:
        self.session = aiohttp.ClientSession(
            cookie_jar=self.jar, connector=aiohttp.TCPConnector(ssl=self.context),
            timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.session is not None
        await self.session.close()

    async def request(self, method: str, path: str, **kwargs: Any) -> Page:
        """Any request; redirects are followed unless allow_redirects=False."""
        assert self.session is not None
        async with self.session.request(method, self.base + path, **kwargs) as response:
            body = await response.read()
            return Page(response.status, body.decode("utf-8", "replace"), response.headers,
                        str(response.url), body)

    async def get(self, path: str, **kwargs: Any) -> Page:
        """GET a page."""
        return await self.request("GET", path, **kwargs)

    async def submit(self, form_page: str, action: str, fields: dict[str, str],
                     **kwargs: Any) -> Page:
        """GET `form_page`, then POST `fields` plus its CSRF token to `action`."""
        page = await self.get(form_page)
        assert page.status == 200, (page.status, page.text[:300])
        return await self.request("POST", action, data={"csrf": csrf_of(page.text), **fields},
                                  **kwargs)

    async def login(self, password: str | None = None, **extra: str) -> Page:
        """The certificate login (§2.2): password page, then the first screen."""
        assert self.who is not None
        return await self.submit("/auth/login", "/auth/login",
                                 {"password": self.who.password if password is None else password,
                                  **extra})

    def cookie(self, name: str) -> str | None:
        """The value of a cookie the browser holds."""
        for morsel in self.jar:
            if morsel.key == name:
                return morsel.value
        return None


def write_client_pem(folder: Path, user_id: str, password: str, cert: x509.Certificate,
                     key: Any, *, suffix: str = "") -> Enrolled:
    """Write a client certificate and its key (0600) as PEM files for curl and ssl."""
    folder.mkdir(exist_ok=True)
    cert_file = folder / f"{user_id}{suffix}.crt.pem"
    key_file = folder / f"{user_id}{suffix}.key.pem"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    key_file.chmod(0o600)
    der = cert.public_bytes(serialization.Encoding.DER)
    return Enrolled(user_id=user_id, password=password, cert_file=cert_file,
                    key_file=key_file, serial=format(cert.serial_number, "x"),
                    fingerprint=hashlib.sha256(der).hexdigest(),
                    not_after=cert.not_valid_after_utc)


def gateway_section(port: int, backend_port: int, extra: str = "") -> str:
    """The [gateway] part of a test config.toml (and a long-lived OCSP responder)."""
    return f"""
        [ocsp]
        responder_validity_days = 400
        [gateway]
        listen = "127.0.0.1:{port}"
        public_url = "https://127.0.0.1:{port}"
        database = "var/gateway/gateway.sqlite3"
        backend_url = "http://127.0.0.1:{backend_port}"
        ca_api_token_file = "var/secrets/ca-api-token"
        tls_cert = "var/gateway/tls/server.crt.pem"
        tls_key = "var/gateway/tls/server.key.pem"
        backend_read_timeout = "3s"
        ca_root = "var/keys/root.crt.pem"
        #CA-URLS#
        {extra}
    """


def start_gateway(directory: Path, clock: FakeClock, *, extra: str = "",
                  tables: str = "", internal_tls: bool = False,
                  public_url_for: Callable[[str], str] | None = None) -> GatewayHarness:
    """Start CA, demo backend and gateway on loopback; the gateway's CA URLs point at the CA
    (its internal API over TLS, pinning the CA's self-signed certificate, with `internal_tls`).
    `public_url_for` gets the CA's public URL and returns the one the gateway is given (e.g.
    a listener in front of the CA, started before the gateway fetches its trust bundle)."""
    port, backend_port = free_port(), free_port()
    config_path = init_ca(directory, clock, extra=gateway_section(port, backend_port, extra),
                          internal_tls=internal_tls)
    ca_config = load_ca_config(config_path)
    public, internal = ca_config.public_listen.port, ca_config.internal_listen.port
    internal_url = (f'ca_internal_url = "https://127.0.0.1:{internal}"\n'
                    f'ca_internal_trust = "{ca_config.internal_tls_cert}"' if internal_tls
                    else f'ca_internal_url = "http://127.0.0.1:{internal}"')
    public_url = f"http://127.0.0.1:{public}"
    if public_url_for is not None:
        public_url = public_url_for(public_url)
    text = config_path.read_text().replace(
        "#CA-URLS#", f'ca_public_url = "{public_url}"\n' + internal_url)
    config_path.write_text(text + tables)  # further tables, e.g. [[cutover]], after [gateway]
    ca = start_ca(config_path, clock)
    config = gateway_config_from(load_raw(config_path))
    ensure_server_certificate(config.tls_cert, config.tls_key, config.public_url, clock)
    backend_loop, gateway_loop = LoopThread(), LoopThread()
    runners: list[tuple[LoopThread, web.AppRunner]] = []
    backend_runner, _ = backend_loop.start_app(build_backend(clock=clock), backend_port)
    runners.append((backend_loop, backend_runner))
    hasher = PasswordHasher(time_cost=1, memory_cost_kib=1024)

    async def open_gateway() -> tuple[UserStore, web.Application, ssl.SSLContext]:
        ca_client = ca_client_for(config)
        bundle = await load_trust_bundle(ca_client, config.trust_bundle_cache,
                                         trust_anchor_for(config))
        users = await UserStore.open(config.database, clock)
        app = build_app(config, clock=clock, users=users, hasher=hasher, ca_client=ca_client,
                        bundle=bundle)
        return users, app, server_context(config.tls_cert, config.tls_key, bundle)

    users, app, context = gateway_loop.run(open_gateway())
    gateway_runner, _ = gateway_loop.start_app(app, port, ssl_context=context,
                                               prepare=prepare_server)
    runners.append((gateway_loop, gateway_runner))
    harness = GatewayHarness(
        ca=ca, config=config, app=app, url=f"https://127.0.0.1:{port}",
        server_cert=config.tls_cert, clock=clock, directory=directory,
        gateway_loop=gateway_loop, backend_loop=backend_loop, runners=runners, users=users,
        hasher=hasher,
    )
    revocation = app[REVOCATION]
    deadline = time.monotonic() + 10
    while not revocation.following and time.monotonic() < deadline:
        time.sleep(0.02)
    assert revocation.following, "the gateway did not start following the revocation feed"
    return harness


@pytest.fixture
def gw(tmp_path: Path, clock: FakeClock) -> Iterator[GatewayHarness]:
    """A running CA + demo backend + gateway with real TLS on loopback."""
    harness = start_gateway(tmp_path, clock)
    yield harness
    harness.stop()


def forge(gw: GatewayHarness, user_id: str, *, days: tuple[int, int] = (-1, 365),
          usages: tuple[x509.ObjectIdentifier, ...] = (ExtendedKeyUsageOID.CLIENT_AUTH,),
          foreign: bool = False, suffix: str = "-forged") -> Enrolled:
    """A client certificate the CA never recorded: signed by g1's key, or by a foreign CA.

    `days` are notBefore/notAfter offsets from the real time.
    """
    now = datetime.now(UTC).replace(microsecond=0)
    if foreign:
        issuer_key = ec.generate_private_key(ec.SECP256R1())
        issuer_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Foreign CA")])
    else:
        generation = gw.ca.runtime.issuers.generations["g1"]
        issuer_key, issuer_name = generation.signer, generation.certificate.subject
    key = ec.generate_private_key(ec.SECP256R1())
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)]))
        .issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now + timedelta(days=days[0]))
        .not_valid_after(now + timedelta(days=days[1]))
        .add_extension(x509.ExtendedKeyUsage(list(usages)), critical=False)
    )
    cert = builder.sign(issuer_key, hashes.SHA256())
    return gw.write_pem(user_id, GOOD_PASSWORD, cert, key, suffix=suffix)
