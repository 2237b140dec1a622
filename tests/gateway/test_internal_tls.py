"""The CA's internal API over TLS (`ca.internal_tls`), the gateway pinning its certificate.

The internal API carries acquisition passwords and PKCS#12 files; off one host it must not
travel in clear. With `internal_tls = true` the CA makes a self-signed certificate on first
`serve` and the gateway trusts exactly that file (`gateway.ca_internal_trust`).
"""

from __future__ import annotations

import stat
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import aiohttp
import pytest
from cryptography import x509

from common.tlsfiles import tls_client_context
from policy.clock import FakeClock
from tests.conftest import openssl
from tests.gateway.conftest import GatewayHarness, start_gateway


@pytest.fixture
def tls_gw(tmp_path: Path, clock: FakeClock) -> Iterator[GatewayHarness]:
    """CA with its internal listener on TLS, and a gateway pinning its certificate."""
    harness = start_gateway(tmp_path, clock, internal_tls=True)
    yield harness
    harness.stop()


async def test_gateway_acquires_through_the_tls_api(tls_gw: GatewayHarness) -> None:
    """The acquisition form works end to end: the gateway reached the CA over TLS."""
    gw = tls_gw
    assert gw.ca.internal_url.startswith("https://")
    temporary = gw.add_user("610001", password=None)
    acquisition = gw.acquisition_password("610001")
    async with gw.browser() as browser:
        ready = await browser.submit("/auth/acquire", "/auth/acquire", {
            "user_id": "610001", "password": temporary, "acquisition_password": acquisition})
        assert ready.url == gw.url + "/auth/download", ready.text[:300]
        page = await browser.submit("/auth/download", "/auth/download", {})
    assert page.headers["Content-Type"] == "application/x-pkcs12"


def test_certificate_made_on_first_serve(tls_gw: GatewayHarness) -> None:
    """A self-signed serverAuth certificate naming 127.0.0.1, long-lived since it is pinned;
    its key is 0600."""
    config = tls_gw.ca.config
    cert = x509.load_pem_x509_certificate(config.internal_tls_cert.read_bytes())
    assert cert.not_valid_after_utc - cert.not_valid_before_utc > timedelta(days=3000)
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "127.0.0.1" in [str(ip) for ip in names.get_values_for_type(x509.IPAddress)]
    assert stat.S_IMODE(config.internal_tls_key.stat().st_mode) == 0o600


async def test_plain_http_and_unpinned_clients_get_nothing(tls_gw: GatewayHarness) -> None:
    """No answer in clear, none to a client that does not trust the pinned certificate, and
    the token is still required over TLS."""
    port = tls_gw.ca.config.internal_listen.port
    async with aiohttp.ClientSession() as session:
        with pytest.raises(aiohttp.ClientError):
            await session.get(f"http://127.0.0.1:{port}/v1/revocations?after=0&wait=0")
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await session.get(f"https://127.0.0.1:{port}/v1/revocations?after=0&wait=0",
                              ssl=tls_client_context(None))
    status, body = tls_gw.ca.api("GET", "/v1/revocations?after=0&wait=0", token=None)
    assert status == 401 and body["error"] == "unauthenticated"


def test_tls_1_1_refused(tls_gw: GatewayHarness) -> None:
    """TLS 1.2 minimum, as on the gateway."""
    host = f"127.0.0.1:{tls_gw.ca.config.internal_listen.port}"
    old = openssl("s_client", "-connect", host, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                  input_bytes=b"", check=False)
    assert "Cipher is (NONE)" in old.stdout
    ok = openssl("s_client", "-connect", host, "-tls1_2", "-CAfile",
                 str(tls_gw.ca.config.internal_tls_cert), input_bytes=b"", check=False)
    assert "Verify return code: 0 (ok)" in ok.stdout


def test_missing_pinned_certificate_is_a_clear_error(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Before the CA has made its certificate, the helpdesk CLI says what to do."""
    from gateway import cli as gateway_cli

    config = tmp_path / "config.toml"
    token = tmp_path / "token"
    token.write_text("t" * 32)
    token.chmod(0o600)
    config.write_text(f"""
[gateway]
database = "{tmp_path / 'gw.sqlite3'}"
ca_internal_url = "https://127.0.0.1:9"
ca_internal_trust = "{tmp_path / 'missing.crt.pem'}"
ca_api_token_file = "{token}"
""")
    assert gateway_cli.main(["--config", str(config), "users", "add", "610002", "--name", "n",
                             "--customer", "c", "--role", "admin"]) == 1
    assert "ca_internal_trust" in capsys.readouterr().err
    assert gateway_cli.main(["--config", str(config), "users", "show", "610002"]) == 1
