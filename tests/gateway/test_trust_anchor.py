"""Who decides which CAs may log in: the operator's root, not whoever answers on the network
(issue 10 item 1; R-GW-1, R-GW-2).

A fake "CA" listener sits where the gateway fetches its issuer bundle: it serves the real
bundle plus an attacker's CA, and answers OCSP for the attacker's certificates with "good"
signed by the attacker's key. Everything else it relays to the real CA.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp
from cryptography.x509.oid import AuthorityInformationAccessOID, ExtendedKeyUsageOID, NameOID

from gateway.ca_client import CaClient
from gateway.cli import CliError, load_trust_bundle
from gateway.trust import TrustAnchor
from policy.clock import FakeClock
from tests.gateway.conftest import Enrolled, GatewayHarness, start_gateway
from tests.support.servers import LoopThread, free_port


@dataclass
class AttackerCa:
    """A CA of the attacker's, named like our issuing generation."""

    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @classmethod
    def make(cls, subject: x509.Name) -> AttackerCa:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.now(UTC)
        certificate = (
            x509.CertificateBuilder().subject_name(subject).issuer_name(subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False,
                                         False), critical=True)
            .sign(key, hashes.SHA256()))
        return cls(key, certificate)

    @property
    def pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def leaf(user_id: str, issuer_name: x509.Name, issuer_key: Any, *, ocsp_url: str,
         crl_url: str) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A login-shaped certificate whose AIA and CRL DP point where the caller says."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, user_id)]))
        .issuer_name(issuer_name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=300))
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
        .add_extension(x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP, x509.UniformResourceIdentifier(ocsp_url))]),
            critical=False)
        .add_extension(x509.CRLDistributionPoints([x509.DistributionPoint(
            [x509.UniformResourceIdentifier(crl_url)], None, None, None)]), critical=False)
        .sign(issuer_key, hashes.SHA256()))
    return certificate, key


@dataclass
class FakeCa:
    """The listener at the gateway's `ca_public_url`: the real bundle plus the attacker's CA;
    OCSP for the attacker's certificates answered "good" with the attacker's key; the rest
    relayed to the real CA. Every path asked is recorded."""

    attacker: AttackerCa
    loop: LoopThread = field(default_factory=LoopThread)
    real: str = ""
    seen: list[str] = field(default_factory=list)
    runner: web.AppRunner | None = None
    port: int = 0

    def start(self) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self.runner, self.port = self.loop.start_app(app, free_port())
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.runner is not None:
            self.loop.run(self.runner.cleanup())
        self.loop.stop()

    async def _handle(self, request: web.Request) -> web.Response:
        self.seen.append(request.path)
        body = await request.read()
        if request.path == "/evil/ocsp":
            return web.Response(body=self._good_for(body),
                                content_type="application/ocsp-response")
        if request.path.startswith("/evil/"):
            return web.Response(status=404)
        async with aiohttp.ClientSession() as session, session.request(
                request.method, self.real + request.path_qs, data=body or None,
                headers={"Content-Type": request.headers.get("Content-Type", "text/plain")},
        ) as answer:
            data = await answer.read()
            status, content_type = answer.status, answer.content_type
        if request.path == "/certs/bundle.pem":
            data += self.attacker.pem
        return web.Response(body=data, status=status, content_type=content_type)

    def _good_for(self, der: bytes) -> bytes:
        request = ocsp.load_der_ocsp_request(der)
        now = datetime.now(UTC)
        builder = ocsp.OCSPResponseBuilder().add_response_by_hash(
            issuer_name_hash=request.issuer_name_hash, issuer_key_hash=request.issuer_key_hash,
            serial_number=request.serial_number, algorithm=hashes.SHA1(),  # noqa: S303
            cert_status=ocsp.OCSPCertStatus.GOOD, this_update=now,
            next_update=now + timedelta(hours=1), revocation_time=None,
            revocation_reason=None,
        ).responder_id(ocsp.OCSPResponderEncoding.HASH, self.attacker.certificate)
        return builder.sign(self.attacker.key, hashes.SHA256()).public_bytes(
            serialization.Encoding.DER)


@pytest.fixture(params=["Attacker Issuing CA g7", "Sekisho Test Issuing CA g1"])
def attacked(request: pytest.FixtureRequest, tmp_path: Path,
             clock: FakeClock) -> Iterator[tuple[GatewayHarness, FakeCa]]:
    """A gateway whose `ca_public_url` is the fake CA listener (started before it); the
    attacker's CA has its own name, or the very name of our issuing generation g1."""
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho Test"),
                         x509.NameAttribute(NameOID.COMMON_NAME, request.param)])
    fake = FakeCa(AttackerCa.make(subject))

    def in_front(real: str) -> str:
        fake.real = real
        return fake.start()

    harness = start_gateway(tmp_path, clock, public_url_for=in_front)
    yield harness, fake
    harness.stop()
    fake.stop()


def _attacker_login_cert(gw: GatewayHarness, fake: FakeCa, user_id: str) -> Enrolled:
    base = f"http://127.0.0.1:{fake.port}"
    certificate, key = leaf(user_id, fake.attacker.certificate.subject, fake.attacker.key,
                            ocsp_url=base + "/evil/ocsp", crl_url=base + "/evil/g1.crl")
    return gw.write_pem(user_id, "unused", certificate, key, suffix="-attacker")


def _cached_certificates(gw: GatewayHarness) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(gw.config.trust_bundle_cache.read_bytes())


class TestOperatorTrustAnchor:
    """Only issuers that chain to the configured root are trusted, fetched or cached."""

    def test_attacker_ca_in_fetched_bundle_never_reaches_password_page(
            self, attacked: tuple[GatewayHarness, FakeCa]) -> None:
        """The attacker's certificate for an existing user gets no TLS session (curl 000),
        while the CA's own certificate of the same user reaches the password page."""
        gw, fake = attacked
        real = gw.enroll("510001")
        forged = _attacker_login_cert(gw, fake, "510001")
        refused = gw.curl("/auth/login", forged)
        assert refused.stdout.endswith("\n000"), refused.stdout[-300:]
        assert "password" not in refused.stdout
        accepted = gw.curl("/auth/login", real)
        assert accepted.stdout.endswith("\n200"), accepted.stderr
        assert 'name="password"' in accepted.stdout
        assert not [p for p in fake.seen if p.startswith("/evil/")], fake.seen

    def test_cache_file_holds_no_attacker_ca(
            self, attacked: tuple[GatewayHarness, FakeCa]) -> None:
        """The cache holds exactly the CA's root and g1, 0600: the attacker's CA (same name as
        g1) was dropped before the write."""
        gw, fake = attacked
        cached = _cached_certificates(gw)
        attacker_der = fake.attacker.certificate.public_bytes(serialization.Encoding.DER)
        assert attacker_der not in [c.public_bytes(serialization.Encoding.DER) for c in cached]
        keys = gw.ca.config.keys.directory
        expected = {x509.load_pem_x509_certificate((keys / f"{n}.crt.pem").read_bytes())
                    for n in ("g1", "root")}
        assert set(cached) == expected
        assert gw.config.trust_bundle_cache.stat().st_mode & 0o777 == 0o600

    async def test_poisoned_cache_is_filtered_again_when_loaded(
            self, attacked: tuple[GatewayHarness, FakeCa], tmp_path: Path) -> None:
        """A cache file edited on disk (attacker CA appended) and a CA that cannot be reached:
        the loaded bundle still holds only what chains to the root."""
        gw, fake = attacked
        cache = tmp_path / "poisoned.pem"
        cache.write_bytes(gw.config.trust_bundle_cache.read_bytes() + fake.attacker.pem)
        anchor = TrustAnchor.from_config(gw.config.ca_root, None)
        unreachable = CaClient(f"http://127.0.0.1:{free_port()}",
                               f"http://127.0.0.1:{free_port()}", "x" * 40)
        try:
            bundle = await load_trust_bundle(unreachable, cache, anchor, attempts=1)
        finally:
            await unreachable.close()
        assert fake.attacker.certificate not in bundle.certificates
        assert len(bundle.certificates) == 2

    async def test_fingerprint_pin_alone_selects_the_root(
            self, attacked: tuple[GatewayHarness, FakeCa], tmp_path: Path) -> None:
        """`ca_root_sha256` without a file: the root is the fetched self-signed certificate
        with that SHA-256; a wrong pin refuses the whole bundle (the gateway does not start)."""
        gw, fake = attacked
        root = x509.load_pem_x509_certificate(gw.config.ca_root.read_bytes())  # type: ignore[union-attr]
        pin = root.fingerprint(hashes.SHA256()).hex(":")
        client = CaClient(gw.ca.internal_url, f"http://127.0.0.1:{fake.port}", "x" * 40)
        try:
            bundle = await load_trust_bundle(client, tmp_path / "pinned.pem",
                                             TrustAnchor.from_config(None, pin))
            assert fake.attacker.certificate not in bundle.certificates
            assert root in bundle.certificates
            wrong = TrustAnchor.from_config(None, "00" * 32)
            with pytest.raises(CliError, match="ca_root_sha256"):
                await load_trust_bundle(client, tmp_path / "wrong.pem", wrong)
            assert not (tmp_path / "wrong.pem").exists()
        finally:
            await client.close()


class TestRevocationOnlyAtOurCa:
    """R-GW-2: OCSP and CRL are asked only at the configured CA, never at a URL written in
    the certificate being judged."""

    async def test_certificate_urls_never_fetched(self, tmp_path: Path,
                                                  gw: GatewayHarness) -> None:
        """A certificate signed with g1's key (so it passes the chain) whose AIA and CRL DP
        point at an attacker's listener: the gateway asks our CA (which never issued it:
        cert_unknown) and the attacker's listener receives nothing."""
        seen: list[str] = []

        async def record(request: web.Request) -> web.Response:
            seen.append(request.path)
            return web.Response(status=500)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", record)
        listener = LoopThread()
        runner, port = listener.start_app(app, free_port())
        try:
            gw.add_user("510011")
            generation = gw.ca.runtime.issuers.generations["g1"]
            certificate, key = leaf("510011", generation.certificate.subject,
                                    generation.signer,
                                    ocsp_url=f"http://127.0.0.1:{port}/ocsp",
                                    crl_url=f"http://127.0.0.1:{port}/crl/g1.crl")
            forged = gw.write_pem("510011", "unused", certificate, key, suffix="-aia")
            async with gw.browser(forged) as browser:
                page = await browser.get("/auth/login")
            assert page.status == 403 and page.error == "cert_unknown", page.text[:300]
            await asyncio.sleep(0.2)
            assert seen == []
        finally:
            listener.run(runner.cleanup())
            listener.stop()

    async def test_crl_fallback_uses_configured_ca(self, gw: GatewayHarness) -> None:
        """With OCSP failing, the CRL comes from `ca_public_url`/crl/g1.crl (a revoked
        certificate is refused), not from the certificate's distribution point."""
        from gateway.state import REVOCATION

        user = gw.enroll("510012")
        status, _ = gw.ca.api("POST", "/v1/revoke", json={"serial": user.serial,
                                                            "reason": "keyCompromise"})
        assert status == 200
        gw.ca.sync()
        revocation = gw.app[REVOCATION]
        asked: list[str] = []
        original = revocation._ca._fetch_from  # each node's URL passes here (issue 13)

        async def fetch(url: str, **kwargs: Any) -> bytes:
            asked.append(url)
            if url.endswith("/ocsp"):
                from gateway.ca_client import CaUnavailable
                raise CaUnavailable("OCSP down for this test")
            return await original(url, **kwargs)

        revocation._ca._fetch_from = fetch  # type: ignore[method-assign]
        revocation._revoked_live.clear()
        revocation._answers.clear()
        async with gw.browser(user) as browser:
            page = await browser.get("/auth/login")
        assert page.status == 403 and page.error == "cert_revoked"
        assert asked == [f"{gw.config.ca_public_url}/ocsp", f"{gw.config.ca_public_url}/crl/g1.crl"]
