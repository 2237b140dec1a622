"""TLS and certificate verification with real clients: curl, openssl, Python ssl (R-GW-1..3)."""

from __future__ import annotations

import ssl
from datetime import timedelta

import aiohttp
import pytest
from cryptography.x509.oid import ExtendedKeyUsageOID

from tests.conftest import openssl
from tests.gateway.conftest import GatewayHarness, forge


class TestWithoutCertificate:
    """R-GW-3: without a certificate only the login and acquisition pages answer."""

    def test_login_page_without_certificate_R_GW_3(self, gw: GatewayHarness) -> None:
        """curl without a certificate gets the login page with both buttons."""
        result = gw.curl("/auth/")
        body, status = result.stdout.rsplit("\n", 1)
        assert status == "200", result.stderr
        assert "電子証明書ログイン" in body and "電子証明書取得" in body
        result = gw.curl("/auth/acquire")
        assert result.stdout.endswith("\n200")

    @pytest.mark.parametrize("path", ["/", "/trade/forward", "/admin/restrictions"])
    def test_everything_else_redirects_to_login_R_GW_3(self, gw: GatewayHarness,
                                                       path: str) -> None:
        """Every other page sends a client without a certificate to the login page."""
        result = gw.curl(path, None, "-o", "/dev/null", "-D", "-")
        assert result.stdout.endswith("\n303"), result.stdout
        assert "location: /auth/" in result.stdout.lower()

    def test_password_page_needs_certificate_R_GW_3(self, gw: GatewayHarness) -> None:
        """The password page and the API-like POSTs say a certificate is needed (401)."""
        result = gw.curl("/auth/login")
        assert result.stdout.endswith("\n401")
        assert 'data-code="cert_required"' in result.stdout
        result = gw.curl("/api/echo", None, "-X", "POST", "-d", "x=1")
        assert result.stdout.endswith("\n401")


class TestRefusedCertificates:
    """R-GW-1: foreign, expired and non-clientAuth certificates never get in."""

    def test_valid_certificate_accepted_R_GW_1(self, gw: GatewayHarness) -> None:
        """The twin of the refusals: the CA's own certificate reaches the password page."""
        user = gw.enroll("200001")
        result = gw.curl("/auth/login", user)
        assert result.stdout.endswith("\n200"), result.stderr
        assert "200001" in result.stdout

    @pytest.mark.parametrize(("kind", "kwargs"), [
        ("foreign", {"foreign": True}),
        ("server_auth_only", {"usages": (ExtendedKeyUsageOID.SERVER_AUTH,)}),
    ])
    def test_bad_certificate_refused_at_handshake_R_GW_1(self, gw: GatewayHarness, kind: str,
                                                         kwargs: dict) -> None:
        """The TLS handshake fails: curl gets no HTTP answer at all."""
        gw.add_user("200002")
        bad = forge(gw, "200002", suffix=f"-{kind}", **kwargs)
        result = gw.curl("/auth/login", bad)
        assert result.stdout.endswith("\n000"), (kind, result.stdout[-200:])
        assert result.returncode != 0

    @pytest.mark.parametrize(("kind", "kwargs", "code", "advice"), [
        ("expired", {"days": (-400, -1)}, "cert_expired", "/auth/acquire"),
        ("not_yet_valid", {"days": (2, 30)}, "cert_not_yet_valid", None),
    ])
    @pytest.mark.parametrize("path", ["/auth/login", "/trade/forward"])
    def test_out_of_date_certificate_gets_a_page_R_GW_1(
            self, gw: GatewayHarness, kind: str, kwargs: dict, code: str, advice: str | None,
            path: str) -> None:
        """Dates are checked by the gateway, not the handshake: an expired certificate of ours
        gets the page that says what to do (get a new one), never the login or the backend."""
        gw.add_user("200004")
        dated = forge(gw, "200004", suffix=f"-{kind}", **kwargs)
        result = gw.curl(path, dated)
        body, status = result.stdout.rsplit("\n", 1)
        assert status == "403", (kind, path, body[-300:])
        assert f'data-code="{code}"' in body
        assert advice is None or advice in body
        assert 'name="password"' not in body

    def test_certificate_outliving_its_issuer_refused_R_GW_1(self, gw: GatewayHarness) -> None:
        """The chain's dates count too: past the issuing CA's notAfter (fake clock), a leaf
        that claims to be valid still is not."""
        gw.add_user("200005")
        issuer = gw.ca.runtime.issuers.generations["g1"].certificate
        ca_days = (issuer.not_valid_after_utc - gw.clock.now()).days
        outliving = forge(gw, "200005", suffix="-outliving", days=(-1, ca_days + 30))
        gw.clock.advance(timedelta(days=ca_days + 2))
        body, status = gw.curl("/auth/login", outliving).stdout.rsplit("\n", 1)
        assert status == "403"
        assert 'data-code="cert_issuer_invalid"' in body

    def test_unrecorded_certificate_refused_R_GW_1(self, gw: GatewayHarness) -> None:
        """A certificate signed with the CA's key but never recorded: OCSP unknown -> 403."""
        gw.add_user("200003")
        rogue = forge(gw, "200003")
        result = gw.curl("/auth/login", rogue)
        assert result.stdout.endswith("\n403"), result.stdout[-300:]
        assert 'data-code="cert_unknown"' in result.stdout

    def test_tls_1_1_refused_R_GW_1(self, gw: GatewayHarness) -> None:
        """A TLS 1.1 client cannot connect; TLS 1.2 and 1.3 can."""
        host = gw.url.removeprefix("https://")
        old = openssl("s_client", "-connect", host, "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                      input_bytes=b"", check=False)
        assert old.returncode != 0
        assert "Cipher is (NONE)" in old.stdout  # no session was established
        for version in ("-tls1_2", "-tls1_3"):
            ok = openssl("s_client", "-connect", host, version, "-CAfile",
                         str(gw.server_cert), input_bytes=b"", check=False)
            assert "Verify return code: 0 (ok)" in ok.stdout, (version, ok.stdout[-500:])

    @pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated")
    async def test_python_ssl_client_max_tls_1_1_refused_R_GW_1(
            self, gw: GatewayHarness) -> None:
        """Python's ssl with TLS 1.1 as maximum fails the handshake; the same client allowed
        TLS 1.2 gets the page."""
        context = gw.ssl_context()
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
        # OpenSSL 3 has no TLS 1.1 cipher at the default level: without this, the client
        # would give up before sending its ClientHello and the test could not fail.
        context.set_ciphers("DEFAULT@SECLEVEL=0")
        async with aiohttp.ClientSession() as session:
            with pytest.raises(aiohttp.ClientError):
                await session.get(gw.url + "/auth/", ssl=context)
            context.maximum_version = ssl.TLSVersion.TLSv1_2
            async with session.get(gw.url + "/auth/", ssl=context) as response:
                assert response.status == 200


class TestPerConnectionCertificate:
    """R-GW-4: the certificate is read once per TLS connection, checked on every request."""

    def test_read_once_per_connection_checked_every_request_R_GW_4(
            self, gw: GatewayHarness) -> None:
        """Three requests on one connection read its certificate once; a revocation still
        bites on that connection; the entry goes with the connection."""
        import gc

        from cryptography import x509
        from cryptography.hazmat.primitives import serialization

        from gateway.errors import CertificateRefused
        from gateway.state import REVOCATION, VERIFIER

        user = gw.enroll("600001")
        der = x509.load_pem_x509_certificate(user.cert_file.read_bytes()).public_bytes(
            serialization.Encoding.DER)

        class SslObject:
            reads = 0

            def getpeercert(self, binary_form: bool = False) -> bytes:
                SslObject.reads += 1
                return der

        class Transport:
            def __init__(self, ssl_object: object) -> None:
                self.ssl_object = ssl_object

            def get_extra_info(self, name: str, default: object = None) -> object:
                return self.ssl_object if name == "ssl_object" else default

        class Request:
            def __init__(self, transport: Transport) -> None:
                self.transport = transport

        verifier = gw.app[VERIFIER]
        before = len(verifier._by_connection)
        request = Request(Transport(SslObject()))
        for _ in range(3):
            assert gw.run(verifier.required(request)).fingerprint == user.fingerprint
        assert SslObject.reads == 1
        assert gw.run(verifier.required(Request(Transport(SslObject())))).serial == user.serial
        assert SslObject.reads == 2  # another connection reads its own
        gw.app[REVOCATION]._revoked_live.add(user.fingerprint)  # as the feed does
        with pytest.raises(CertificateRefused) as refused:
            gw.run(verifier.required(request))
        assert refused.value.code == "cert_revoked"
        del request, refused  # the traceback holds the request too
        gc.collect()
        assert len(verifier._by_connection) == before
