"""ca.ocsp: openssl CLI requests; responses checked by OpenSSL, cryptography, asn1crypto."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import random
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import pytest
from asn1crypto import ocsp as asn1_ocsp
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp

from ca.ocsp import (
    MAX_CERT_IDS,
    CertId,
    CertStatus,
    IssuerIdentity,
    MalformedRequest,
    ParsedRequest,
    Responder,
    build_response,
    find_issuer,
    internal_error_response,
    malformed_response,
    parse_request,
    request_from_get_path,
    unauthorized_response,
)
from tests.ca.conftest import CountingSigner

if TYPE_CHECKING:
    from tests.ca.conftest import ProtocolPki

HOUR = timedelta(hours=1)
Openssl = Callable[..., Any]


@pytest.fixture
def responder(protocol_pki: ProtocolPki) -> Responder:
    """The G1 delegated responder, signing through a sign()/public_key()-only object."""
    signer: Any = CountingSigner(protocol_pki.responder.key)
    return Responder(protocol_pki.responder.cert, signer, protocol_pki.issuer.cert)


@pytest.fixture
def responder2(protocol_pki: ProtocolPki) -> Responder:
    """The G2 delegated responder."""
    signer: Any = CountingSigner(protocol_pki.responder2.key)
    return Responder(protocol_pki.responder2.cert, signer, protocol_pki.issuer2.cert)


@pytest.fixture
def issuers(responder: Responder, responder2: Responder) -> list[IssuerIdentity]:
    """Our issuing generations as CertIDs name them."""
    return [responder.issuer, responder2.issuer]


def openssl_request(
    openssl_cli: Openssl, files: dict[str, Path], out: Path, *leaves: str,
    issuer: str = "issuer", nonce: bool = True, sha256: bool = False,
) -> bytes:
    """Have `openssl ocsp` write a request for `leaves` (names in `files`) and return its DER."""
    args: list[str | Path] = ["ocsp", "-issuer", files[issuer]]
    if sha256:
        args.append("-sha256")
    for leaf in leaves:
        args += ["-cert", files[leaf]]
    if not nonce:
        args.append("-no_nonce")
    openssl_cli(*args, "-reqout", out)
    return out.read_bytes()


def statuses_for(
    parsed: ParsedRequest, issuers: list[IssuerIdentity], table: dict[int, CertStatus]
) -> list[tuple[CertId, IssuerIdentity | None, CertStatus]]:
    """What the daemon does: find each CertID's issuer and look its serial up in `table`."""
    return [
        (cert_id, find_issuer(cert_id, issuers), table.get(cert_id.serial_number,
                                                           CertStatus.unknown()))
        for cert_id in parsed.cert_ids
    ]


def answer(request: bytes, issuers: list[IssuerIdentity], responder: Responder,
           table: dict[int, CertStatus], this_update: datetime) -> bytes:
    """What the daemon does with one request: parse it, look each serial up in `table`, and
    sign one response valid for an hour."""
    parsed = parse_request(request)
    return build_response(statuses_for(parsed, issuers, table), [responder], this_update,
                          this_update + HOUR, parsed.nonce)


def openssl_check(
    openssl_cli: Openssl, files: dict[str, Path], tmp_path: Path, response: bytes,
    request: bytes | None, *leaves: str, trust: tuple[str, ...] = ("-CAfile", "chain"),
    sha256: bool = False, issuer: str = "issuer",
) -> str:
    """Verify `response` with openssl: with `-reqin` (nonce check) and per leaf; return output."""
    (tmp_path / "resp.der").write_bytes(response)
    trust_args = [trust[0], files[trust[1]]]
    output = ""
    if request is not None:
        (tmp_path / "req.der").write_bytes(request)
        output += openssl_cli("ocsp", "-respin", tmp_path / "resp.der", "-reqin",
                              tmp_path / "req.der", *trust_args, "-issuer", files[issuer],
                              check=False).stdout
    if leaves:
        args: list[str | Path] = ["ocsp", "-respin", tmp_path / "resp.der", "-issuer",
                                  files[issuer], *trust_args, "-no_nonce"]
        if sha256:
            args.append("-sha256")
        for leaf in leaves:
            args += ["-cert", files[leaf]]
        output += openssl_cli(*args, check=False).stdout
    return output


class TestParseOpensslRequests:
    """parse_request reads what `openssl ocsp -reqout` writes."""

    def test_sha1_request_with_nonce(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: one SHA-1 CertID naming our issuer and the leaf serial, and a nonce."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        parsed = parse_request(der)
        assert len(parsed.cert_ids) == 1
        cert_id = parsed.cert_ids[0]
        assert cert_id.hash_algorithm == "sha1"
        assert cert_id.serial_number == protocol_pki.leaves["alice"].serial
        assert find_issuer(cert_id, issuers) == issuers[0]
        assert parsed.nonce is not None
        assert len(parsed.nonce) == 16  # OpenSSL's default nonce length

    def test_request_without_nonce(
        self, pki_files: dict[str, Path], tmp_path: Path, openssl_cli: Openssl
    ) -> None:
        """R-REV-2: twin — with -no_nonce the request carries no nonce."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice",
                              nonce=False)
        assert parse_request(der).nonce is None

    def test_sha256_request(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: SHA-256 CertIDs are read and matched with the SHA-256 issuer hashes."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice",
                              sha256=True)
        cert_id = parse_request(der).cert_ids[0]
        assert cert_id.hash_algorithm == "sha256"
        assert cert_id.issuer_key_hash == issuers[0].sha256_key_hash
        assert cert_id.issuer_name_hash == issuers[0].sha256_name_hash
        assert find_issuer(cert_id, issuers) == issuers[0]

    def test_two_cert_ids_keep_their_order(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl,
    ) -> None:
        """R-REV-2: a request with two CertIDs (which cryptography cannot parse) is read whole."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der",
                              "leaf_alice", "leaf_bob")
        serials = [cert_id.serial_number for cert_id in parse_request(der).cert_ids]
        assert serials == [protocol_pki.leaves["alice"].serial, protocol_pki.leaves["bob"].serial]

    def test_foreign_issuer_matches_none_of_ours(
        self, pki_files: dict[str, Path], tmp_path: Path, openssl_cli: Openssl,
        issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: twin — a CertID from another CA matches none of our issuers."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "foreign_leaf",
                              issuer="foreign_issuer")
        assert find_issuer(parse_request(der).cert_ids[0], issuers) is None

    def test_signed_request_is_accepted(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl,
    ) -> None:
        """R-REV-2: a request signed by the requestor is read, its signature ignored."""
        openssl_cli("ocsp", "-issuer", pki_files["issuer"], "-cert", pki_files["leaf_alice"],
                    "-signer", pki_files["leaf_alice"], "-signkey", pki_files["leaf_alice_key"],
                    "-reqout", tmp_path / "req.der")
        parsed = parse_request((tmp_path / "req.der").read_bytes())
        assert parsed.cert_ids[0].serial_number == protocol_pki.leaves["alice"].serial

    def test_get_path_round_trip(
        self, pki_files: dict[str, Path], tmp_path: Path, openssl_cli: Openssl
    ) -> None:
        """R-REV-2: the GET form (URL-encoded base64, RFC 6960 A.1) decodes to the same DER."""
        der = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        encoded = base64.b64encode(der).decode()
        assert request_from_get_path(quote(encoded, safe="")) == der
        assert request_from_get_path("/" + encoded) == der
        assert request_from_get_path(encoded.rstrip("=")) == der
        assert request_from_get_path(encoded.replace("+", " ")) == der

    @pytest.mark.parametrize("path", ["", "/", "not*base64", "%ZZ", "A" * 50_000, "QQ=x"])
    def test_bad_get_paths_are_malformed(self, path: str) -> None:
        """R-REV-2: a GET path that is not base64 is a malformed request."""
        with pytest.raises(MalformedRequest):
            request_from_get_path(path)


class TestResponsesWithOpenssl:
    """Responses verify with `openssl ocsp` and report the status we set."""

    @pytest.mark.parametrize("trust", [("-CAfile", "chain"), ("-VAfile", "responder")])
    def test_good(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
        trust: tuple[str, str],
    ) -> None:
        """R-REV-2: a good leaf is reported good, the signature and the nonce check pass."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        alice = {protocol_pki.leaves["alice"].serial: CertStatus.good()}
        response = answer(request, issuers, responder, alice, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request, "leaf_alice",
                               trust=trust)
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf_alice']}: good" in output
        assert "Nonce Verify error" not in output
        assert "WARNING" not in output

    def test_revoked_with_reason(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: a revoked leaf is reported revoked with its time and keyCompromise."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_bob")
        revoked_at = protocol_pki.now - HOUR
        bob = {protocol_pki.leaves["bob"].serial: CertStatus.revoked(revoked_at, "keyCompromise")}
        response = answer(request, issuers, responder, bob, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request, "leaf_bob")
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf_bob']}: revoked" in output
        assert "Reason: keyCompromise" in output
        assert f"Revocation Time: {revoked_at.strftime('%b %e %H:%M:%S %Y GMT')}" in output
        assert "Nonce Verify error" not in output

    def test_unknown_serial(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: a serial our issuer never issued (per the store) is reported unknown."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_carol")
        response = answer(request, issuers, responder, {}, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request, "leaf_carol")
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf_carol']}: unknown" in output

    def test_two_cert_ids_answered_in_one_response(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: two CertIDs get two SingleResponses, each with its own status."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der",
                                  "leaf_alice", "leaf_bob")
        response = answer(request, issuers, responder, {
            protocol_pki.leaves["alice"].serial: CertStatus.good(),
            protocol_pki.leaves["bob"].serial: CertStatus.revoked(protocol_pki.now,
                                                                  "superseded"),
        }, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request,
                               "leaf_alice", "leaf_bob")
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf_alice']}: good" in output
        assert f"{pki_files['leaf_bob']}: revoked" in output
        assert "Reason: superseded" in output

    def test_sha256_cert_id_is_echoed(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: a SHA-256 CertID is answered with the same SHA-256 CertID."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice",
                                  sha256=True)
        alice = {protocol_pki.leaves["alice"].serial: CertStatus.good()}
        response = answer(request, issuers, responder, alice, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request, "leaf_alice",
                               sha256=True)
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf_alice']}: good" in output
        loaded = ocsp.load_der_ocsp_response(response)
        assert isinstance(loaded.hash_algorithm, hashes.SHA256)

    def test_missing_or_wrong_nonce_is_caught(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: twin — openssl's nonce check fails without our echo, so the echo is real."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        answers = statuses_for(parse_request(request), issuers,
                               {protocol_pki.leaves["alice"].serial: CertStatus.good()})
        now = protocol_pki.now
        without = build_response(answers, [responder], now, now + HOUR, None)
        assert "WARNING: no nonce in response" in openssl_check(
            openssl_cli, pki_files, tmp_path, without, request)
        wrong = build_response(answers, [responder], now, now + HOUR, b"\x01" * 16)
        assert "Nonce Verify error" in openssl_check(
            openssl_cli, pki_files, tmp_path, wrong, request)

    def test_foreign_trust_anchor_refuses_the_response(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: twin — trusting another CA, openssl refuses the response we signed."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        alice = {protocol_pki.leaves["alice"].serial: CertStatus.good()}
        response = answer(request, issuers, responder, alice, protocol_pki.now)
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request,
                               trust=("-CAfile", "foreign_issuer"))
        assert "Response Verify Failure" in output
        assert "Response verify OK" not in output

    def test_responder_of_another_generation_is_not_trusted(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder2: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: twin — G2's responder cannot vouch for a G1 leaf (RFC 6960 §4.2.2.2)."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_alice")
        parsed = parse_request(request)
        cert_id = parsed.cert_ids[0]
        # Bypass the selection on purpose: sign a "good" for G1's leaf with G2's responder.
        forged = responder2.build([(cert_id, responder2.issuer, CertStatus.good())],
                                  protocol_pki.now, protocol_pki.now + HOUR, parsed.nonce)
        output = openssl_check(openssl_cli, pki_files, tmp_path, forged, request, "leaf_alice")
        assert "Response verify OK" not in output

    def test_error_statuses_read_by_openssl(
        self, tmp_path: Path, openssl_cli: Openssl
    ) -> None:
        """R-REV-2: malformedRequest, internalError and unauthorized are bodiless responses."""
        for body, text in [(malformed_response(), "malformedrequest (1)"),
                           (internal_error_response(), "internalerror (2)"),
                           (unauthorized_response(), "unauthorized (6)")]:
            (tmp_path / "resp.der").write_bytes(body)
            output = openssl_cli("ocsp", "-respin", tmp_path / "resp.der", "-resp_text",
                                 check=False).stdout
            assert f"Responder Error: {text}" in output


class TestResponsesWithCryptography:
    """cryptography's OCSP loader reads our responses field by field."""

    def test_single_response_fields(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: byKey responder ID, producedAt, status, reason, times, nonce and certs."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf_bob")
        revoked_at = protocol_pki.now - HOUR
        bob = {protocol_pki.leaves["bob"].serial: CertStatus.revoked(revoked_at, "keyCompromise")}
        now = protocol_pki.now
        response = answer(request, issuers, responder, bob, now + timedelta(microseconds=7))
        loaded = ocsp.load_der_ocsp_response(response)
        assert loaded.response_status is ocsp.OCSPResponseStatus.SUCCESSFUL
        assert loaded.responder_name is None
        ski = protocol_pki.responder.cert.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier).value.digest
        assert loaded.responder_key_hash == ski == responder.key_hash
        assert loaded.produced_at_utc == now  # whole seconds
        assert loaded.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert loaded.revocation_time_utc == revoked_at
        assert loaded.revocation_reason is x509.ReasonFlags.key_compromise
        assert loaded.this_update_utc == now
        assert loaded.next_update_utc == now + HOUR
        assert loaded.serial_number == protocol_pki.leaves["bob"].serial
        assert isinstance(loaded.hash_algorithm, hashes.SHA1)
        assert loaded.issuer_key_hash == issuers[0].sha1_key_hash
        assert loaded.issuer_name_hash == issuers[0].sha1_name_hash
        nonce = loaded.extensions.get_extension_for_class(x509.OCSPNonce).value.nonce
        assert nonce == parse_request(request).nonce
        assert loaded.certificates == [protocol_pki.responder.cert]
        assert isinstance(loaded.signature_hash_algorithm, hashes.SHA256)
        protocol_pki.responder.key.public_key().verify(
            loaded.signature, loaded.tbs_response_bytes, ec.ECDSA(hashes.SHA256()))

    def test_unspecified_reason_is_omitted(
        self, protocol_pki: ProtocolPki, responder: Responder
    ) -> None:
        """R-REV-2: a revocation with reason unspecified carries no revocationReason."""
        cert_id = responder.issuer.cert_id(protocol_pki.leaves["bob"].serial)
        now = protocol_pki.now
        response = build_response(
            [(cert_id, responder.issuer, CertStatus.revoked(now, "unspecified"))],
            [responder], now, now + HOUR)
        loaded = ocsp.load_der_ocsp_response(response)
        assert loaded.certificate_status is ocsp.OCSPCertStatus.REVOKED
        assert loaded.revocation_reason is None
        assert len(loaded.extensions) == 0  # no nonce asked, none given

    def test_several_single_responses(
        self, protocol_pki: ProtocolPki, responder: Responder
    ) -> None:
        """R-REV-2: good, revoked and unknown answers keep their order and statuses."""
        identity = responder.issuer
        now = protocol_pki.now
        answers = [
            (identity.cert_id(1001), identity, CertStatus.good()),
            (identity.cert_id(1002, "sha256"), identity,
             CertStatus.revoked(now - HOUR, "cessationOfOperation")),
            (identity.cert_id(1003), identity, CertStatus.unknown()),
        ]
        loaded = ocsp.load_der_ocsp_response(
            build_response(answers, [responder], now, now + HOUR, b"n" * 32))
        singles = list(loaded.responses)
        assert [single.serial_number for single in singles] == [1001, 1002, 1003]
        assert [single.certificate_status for single in singles] == [
            ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.REVOKED, ocsp.OCSPCertStatus.UNKNOWN]
        assert singles[1].revocation_reason is x509.ReasonFlags.cessation_of_operation
        assert isinstance(singles[1].hash_algorithm, hashes.SHA256)

    def test_p384_responder_signs_with_sha384(self, protocol_pki: ProtocolPki) -> None:
        """R-REV-2: a P-384 responder key signs with ecdsa-with-SHA384 (RFC 5480 §4)."""
        key = ec.generate_private_key(ec.SECP384R1())
        issuer = protocol_pki.issuer
        cert = (
            x509.CertificateBuilder().subject_name(x509.Name([]))
            .issuer_name(issuer.cert.subject).public_key(key.public_key()).serial_number(77)
            .not_valid_before(protocol_pki.now - HOUR).not_valid_after(protocol_pki.now + HOUR)
            .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.OCSP_SIGNING]),
                           critical=False)
            .sign(issuer.key, hashes.SHA256())
        )
        wide = Responder(cert, key, issuer.cert)
        now = protocol_pki.now
        loaded = ocsp.load_der_ocsp_response(build_response(
            [(wide.issuer.cert_id(5), wide.issuer, CertStatus.good())], [wide], now, now + HOUR))
        assert isinstance(loaded.signature_hash_algorithm, hashes.SHA384)
        key.public_key().verify(loaded.signature, loaded.tbs_response_bytes,
                                ec.ECDSA(hashes.SHA384()))


class TestEncodingMatchesAsn1crypto:
    """The hand-framed DER equals asn1crypto.ocsp's encoding of the same structures."""

    @pytest.mark.parametrize("hash_algorithm", ["sha1", "sha256"])
    @pytest.mark.parametrize("serial", [
        0, 1, 127, 128, 255, 256, 1 << 63, (1 << 159) - 1, -1, -128, -129, -(1 << 70),
    ])
    def test_canonical_cert_id(
        self, responder: Responder, serial: int, hash_algorithm: Any
    ) -> None:
        """R-REV-2: a CertID made from an issuer (pre-produced responses) is canonical DER."""
        cert_id = responder.issuer.cert_id(serial, hash_algorithm)
        expected = asn1_ocsp.CertId({
            "hash_algorithm": {"algorithm": hash_algorithm, "parameters": None},
            "issuer_name_hash": cert_id.issuer_name_hash,
            "issuer_key_hash": cert_id.issuer_key_hash,
            "serial_number": serial,
        })
        assert cert_id.encoded() == expected.dump()

    @pytest.mark.parametrize("nonce", [None, b"\x00", b"n" * 16, b"N" * 128])
    def test_response_data_bytes(
        self, protocol_pki: ProtocolPki, responder: Responder, nonce: bytes | None
    ) -> None:
        """R-REV-2: ResponseData, signature algorithm and certs are byte-identical."""
        identity = responder.issuer
        now = protocol_pki.now
        answers = [
            (identity.cert_id(1), identity, CertStatus.good()),
            (identity.cert_id((1 << 159) - 1, "sha256"), identity,
             CertStatus.revoked(now - HOUR, "keyCompromise")),
            (identity.cert_id(3), identity, CertStatus.revoked(now, "unspecified")),
            (identity.cert_id(4), identity, CertStatus.unknown()),
            (identity.cert_id(5), None, CertStatus.good()),  # foreign: answered unknown
        ]
        built = asn1_ocsp.OCSPResponse.load(
            build_response(answers, [responder], now, now + HOUR, nonce))
        basic = built["response_bytes"]["response"].parsed

        expected_status = ["good", "revoked", "revoked", "unknown", "unknown"]
        reasons = {1: "key_compromise"}
        singles = []
        for index, ((cert_id, _, status), name) in enumerate(
                zip(answers, expected_status, strict=True)):
            value: Any = None
            if name == "revoked":
                assert status.revoked_at is not None
                value = {"revocation_time": status.revoked_at}
                if index in reasons:
                    value["revocation_reason"] = reasons[index]
            singles.append({
                "cert_id": asn1_ocsp.CertId.load(cert_id.encoded()),
                "cert_status": asn1_ocsp.CertStatus(name=name, value=value),
                "this_update": now, "next_update": now + HOUR,
            })
        data: dict[str, Any] = {
            "responder_id": asn1_ocsp.ResponderId(name="by_key", value=responder.key_hash),
            "produced_at": now, "responses": singles,
        }
        if nonce is not None:
            data["response_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
        expected = asn1_ocsp.ResponseData(data)
        assert basic["tbs_response_data"].dump() == expected.dump()
        assert basic["signature_algorithm"]["algorithm"].native == "sha256_ecdsa"
        assert basic["certs"][0].dump() == protocol_pki.responder.cert.public_bytes(
            Encoding.DER)
        assert built.dump(force=True) == built.dump()  # re-encoding changes nothing: DER


class TestIssuerSelection:
    """Which responder signs, and what foreign or other-generation CertIDs get."""

    def test_no_cert_id_of_ours_is_unauthorized(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, responder2: Responder,
        issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: a request only about another CA's certificates gets `unauthorized`."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "foreign_leaf",
                                  issuer="foreign_issuer")
        parsed = parse_request(request)
        answers = statuses_for(parsed, issuers, {})
        now = protocol_pki.now
        response = build_response(answers, [responder, responder2], now, now + HOUR,
                                  parsed.nonce)
        assert response == unauthorized_response()
        loaded = ocsp.load_der_ocsp_response(response)
        assert loaded.response_status is ocsp.OCSPResponseStatus.UNAUTHORIZED
        assert responder._signer.signatures == 0  # type: ignore[attr-defined]

    def test_foreign_cert_id_next_to_ours_is_unknown(
        self, protocol_pki: ProtocolPki, responder: Responder, issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: twin — beside one of ours, a foreign CertID is answered unknown."""
        foreign = IssuerIdentity.from_certificate(protocol_pki.foreign_issuer.cert)
        ours = responder.issuer.cert_id(protocol_pki.leaves["alice"].serial)
        theirs = foreign.cert_id(protocol_pki.foreign_leaf.serial)
        now = protocol_pki.now
        answers = [(theirs, find_issuer(theirs, issuers), CertStatus.good()),
                   (ours, find_issuer(ours, issuers), CertStatus.good())]
        loaded = ocsp.load_der_ocsp_response(
            build_response(answers, [responder], now, now + HOUR))
        assert [single.certificate_status for single in loaded.responses] == [
            ocsp.OCSPCertStatus.UNKNOWN, ocsp.OCSPCertStatus.GOOD]

    def test_each_generation_is_signed_by_its_own_responder(
        self, protocol_pki: ProtocolPki, pki_files: dict[str, Path], tmp_path: Path,
        openssl_cli: Openssl, responder: Responder, responder2: Responder,
        issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: a G2 leaf is answered by G2's responder, which openssl accepts."""
        request = openssl_request(openssl_cli, pki_files, tmp_path / "req.der", "leaf2",
                                  issuer="issuer2")
        parsed = parse_request(request)
        answers = statuses_for(parsed, issuers, {protocol_pki.leaf2.serial: CertStatus.good()})
        now = protocol_pki.now
        response = build_response(answers, [responder, responder2], now, now + HOUR,
                                  parsed.nonce)
        loaded = ocsp.load_der_ocsp_response(response)
        assert loaded.responder_key_hash == responder2.key_hash
        output = openssl_check(openssl_cli, pki_files, tmp_path, response, request, "leaf2",
                               trust=("-CAfile", "chain2"), issuer="issuer2")
        assert output.count("Response verify OK") == 2
        assert f"{pki_files['leaf2']}: good" in output

    def test_other_generation_in_the_same_request_is_unknown(
        self, protocol_pki: ProtocolPki, responder: Responder, responder2: Responder,
        issuers: list[IssuerIdentity],
    ) -> None:
        """R-REV-2: G1's responder answers a G2 CertID of the same request `unknown`."""
        g1 = responder.issuer.cert_id(protocol_pki.leaves["alice"].serial)
        g2 = responder2.issuer.cert_id(protocol_pki.leaf2.serial)
        now = protocol_pki.now
        answers = [(g1, find_issuer(g1, issuers), CertStatus.good()),
                   (g2, find_issuer(g2, issuers), CertStatus.good())]
        loaded = ocsp.load_der_ocsp_response(
            build_response(answers, [responder, responder2], now, now + HOUR))
        assert loaded.responder_key_hash == responder.key_hash
        assert [single.certificate_status for single in loaded.responses] == [
            ocsp.OCSPCertStatus.GOOD, ocsp.OCSPCertStatus.UNKNOWN]


class TestResponderChecks:
    """A Responder refuses to start with a certificate or key that cannot work."""

    def test_leaf_without_ocsp_signing_is_refused(self, protocol_pki: ProtocolPki) -> None:
        """R-REV-2: a clientAuth leaf is not a delegated responder."""
        alice = protocol_pki.leaves["alice"]
        with pytest.raises(ValueError, match="OCSPSigning"):
            Responder(alice.cert, alice.key, protocol_pki.issuer.cert)

    def test_responder_of_another_issuer_is_refused(self, protocol_pki: ProtocolPki) -> None:
        """R-REV-2: G2's responder cannot be configured to speak for G1."""
        with pytest.raises(ValueError, match="not issued by"):
            Responder(protocol_pki.responder2.cert, protocol_pki.responder2.key,
                      protocol_pki.issuer.cert)

    def test_mismatched_key_is_refused(self, protocol_pki: ProtocolPki) -> None:
        """R-REV-2: a signer holding another key would make unverifiable responses."""
        with pytest.raises(ValueError, match="not the key"):
            Responder(protocol_pki.responder.cert, protocol_pki.responder2.key,
                      protocol_pki.issuer.cert)

    def test_only_sign_and_public_key_are_used(
        self, protocol_pki: ProtocolPki, responder: Responder
    ) -> None:
        """R-REV-2: one sign() per response through a sign()/public_key()-only object."""
        identity = responder.issuer
        now = protocol_pki.now
        for _ in range(3):
            build_response([(identity.cert_id(9), identity, CertStatus.good())], [responder],
                           now, now + HOUR)
        assert responder._signer.signatures == 3  # type: ignore[attr-defined]

    @pytest.mark.parametrize(("this_offset", "next_offset", "nonce", "message"), [
        (HOUR, HOUR, None, "later than"),
        (HOUR, timedelta(0), None, "later than"),
        (timedelta(0), HOUR, b"", "nonce"),
        (timedelta(0), HOUR, b"x" * 129, "nonce"),
    ])
    def test_inconsistent_build_input_is_refused(
        self, protocol_pki: ProtocolPki, responder: Responder, this_offset: timedelta,
        next_offset: timedelta, nonce: bytes | None, message: str,
    ) -> None:
        """R-REV-2: reversed times and impossible nonces are programming errors."""
        identity = responder.issuer
        now = protocol_pki.now
        with pytest.raises(ValueError, match=message):
            responder.build([(identity.cert_id(9), identity, CertStatus.good())],
                            now + this_offset, now + next_offset, nonce)

    @pytest.mark.parametrize(("status", "revoked_at", "reason"), [
        ("revoked", None, "keyCompromise"),
        ("revoked", datetime(2026, 1, 1), "keyCompromise"),  # noqa: DTZ001 -- naive on purpose
        ("revoked", datetime(2026, 1, 1, tzinfo=UTC), "certificateHold"),
        ("good", datetime(2026, 1, 1, tzinfo=UTC), None),
        ("unknown", None, "superseded"),
        ("expired", None, None),
    ])
    def test_inconsistent_statuses_are_refused(
        self, status: Any, revoked_at: datetime | None, reason: str | None
    ) -> None:
        """R-REV-2: a status carries a revocation time and reason exactly when revoked."""
        with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
            CertStatus(status, revoked_at, reason)


class TestMalformedRequests:
    """Whatever bytes arrive, parse_request raises MalformedRequest or returns a request."""

    @pytest.fixture
    def good_request(self, protocol_pki: ProtocolPki, responder: Responder) -> bytes:
        """A well-formed request with one CertID and a nonce, built with asn1crypto."""
        return _request([responder.issuer.cert_id(protocol_pki.leaves["alice"].serial)],
                        nonce=b"\x42" * 16)

    def test_a_well_formed_request_parses(self, good_request: bytes) -> None:
        """R-REV-2: the base case of the fuzzing below is itself accepted."""
        parsed = parse_request(good_request)
        assert parsed.nonce == b"\x42" * 16

    @pytest.mark.parametrize("data", [
        b"", b"\x00", b"\x30", b"\x30\x00", b"\x30\x80\x00\x00", b"\xff" * 64,
        b"\x30\x84\xff\xff\xff\xff", b"\x30\x80" * 5000, b"\x00" * 100_000,
        bytes(range(256)) * 400,
    ], ids=lambda data: f"{len(data)}B")
    def test_junk_is_malformed(self, data: bytes) -> None:
        """R-REV-2: empty, garbage, nested and 100 KB inputs are malformed requests."""
        with pytest.raises(MalformedRequest):
            parse_request(data)

    @pytest.mark.parametrize("data", ["text", None, 42])
    def test_non_bytes_are_malformed(self, data: Any) -> None:
        """R-REV-2: a body that is not bytes at all is a malformed request, not a TypeError."""
        with pytest.raises(MalformedRequest):
            parse_request(data)

    def test_random_bytes_are_malformed(self) -> None:
        """R-REV-2: 2,000 random byte strings never raise anything but MalformedRequest."""
        rng = random.Random(6960)
        for _ in range(2000):
            data = rng.randbytes(rng.randrange(1, 600))
            if rng.random() < 0.5:
                data = b"\x30" + data  # look like a SEQUENCE to reach deeper code
            with pytest.raises(MalformedRequest):
                parse_request(data)

    def test_every_truncation_is_malformed(self, good_request: bytes) -> None:
        """R-REV-2: each prefix of a valid request is a malformed request."""
        for length in range(len(good_request)):
            with pytest.raises(MalformedRequest):
                parse_request(good_request[:length])

    def test_trailing_bytes_are_malformed(self, good_request: bytes) -> None:
        """R-REV-2: a valid request followed by anything is a malformed request."""
        for tail in (b"\x00", b"\x30\x00", good_request):
            with pytest.raises(MalformedRequest):
                parse_request(good_request + tail)

    def test_bit_flips_never_raise_anything_else(self, good_request: bytes) -> None:
        """R-REV-2: flipping any single bit either still parses or is a malformed request."""
        outcomes = {"parsed": 0, "malformed": 0}
        for position in range(len(good_request) * 8):
            flipped = bytearray(good_request)
            flipped[position // 8] ^= 1 << (position % 8)
            try:
                parse_request(bytes(flipped))
            except MalformedRequest:
                outcomes["malformed"] += 1
            else:
                outcomes["parsed"] += 1
        assert outcomes["malformed"] > 0
        assert outcomes["parsed"] > 0  # flips inside hashes or the serial stay well-formed

    def test_random_multi_bit_corruption(self, good_request: bytes) -> None:
        """R-REV-2: 3,000 requests with random byte overwrites raise nothing unexpected."""
        rng = random.Random(5019)
        for _ in range(3000):
            corrupted = bytearray(good_request)
            for _ in range(rng.randrange(1, 6)):
                corrupted[rng.randrange(len(corrupted))] = rng.randrange(256)
            with contextlib.suppress(MalformedRequest):
                parse_request(bytes(corrupted))

    def test_unsupported_hash_is_malformed(self, responder: Responder) -> None:
        """R-REV-2: a CertID hashed with MD5 (or anything but SHA-1/SHA-256) is refused."""
        cert_id = asn1_ocsp.CertId({
            "hash_algorithm": {"algorithm": "md5"},
            "issuer_name_hash": b"\x00" * 16, "issuer_key_hash": b"\x00" * 16,
            "serial_number": 5,
        })
        with pytest.raises(MalformedRequest, match="hash algorithm"):
            parse_request(_request_from_asn1([cert_id]))

    def test_wrong_hash_length_is_malformed(self, responder: Responder) -> None:
        """R-REV-2: a "SHA-1" CertID with 32-byte hashes is refused."""
        cert_id = asn1_ocsp.CertId({
            "hash_algorithm": {"algorithm": "sha1"},
            "issuer_name_hash": b"\x00" * 32, "issuer_key_hash": b"\x00" * 32,
            "serial_number": 5,
        })
        with pytest.raises(MalformedRequest, match="size"):
            parse_request(_request_from_asn1([cert_id]))

    @pytest.mark.parametrize(("count", "ok"), [
        (0, False), (1, True), (MAX_CERT_IDS, True), (MAX_CERT_IDS + 1, False),
    ])
    def test_cert_id_count_bounds(self, responder: Responder, count: int, ok: bool) -> None:
        """R-REV-2: a request holds 1 to MAX_CERT_IDS CertIDs."""
        data = _request([responder.issuer.cert_id(n + 1) for n in range(count)])
        if ok:
            assert len(parse_request(data).cert_ids) == count
        else:
            with pytest.raises(MalformedRequest, match="CertIDs"):
                parse_request(data)

    @pytest.mark.parametrize(("length", "ok"), [(0, False), (1, True), (128, True), (129, False)])
    def test_nonce_length_bounds(self, responder: Responder, length: int, ok: bool) -> None:
        """R-REV-2: nonces of 1 to 128 octets are accepted (RFC 9654), others malformed."""
        data = _request([responder.issuer.cert_id(1)], nonce=b"\x07" * length)
        if ok:
            assert parse_request(data).nonce == b"\x07" * length
        else:
            with pytest.raises(MalformedRequest, match="nonce"):
                parse_request(data)

    def test_duplicate_nonce_is_malformed(self, responder: Responder) -> None:
        """R-REV-2: two nonce extensions make the request ambiguous."""
        request = asn1_ocsp.OCSPRequest.load(_request([responder.issuer.cert_id(1)],
                                                      nonce=b"a" * 16))
        nonce_ext = {"extn_id": "nonce", "extn_value": b"b" * 16}
        data = asn1_ocsp.OCSPRequest({"tbs_request": {
            "request_list": request["tbs_request"]["request_list"],
            "request_extensions": [nonce_ext, nonce_ext],
        }}).dump()
        with pytest.raises(MalformedRequest, match="twice"):
            parse_request(data)

    def test_other_versions_are_malformed(self, responder: Responder) -> None:
        """R-REV-2: only OCSP v1 requests exist; another version number is refused."""
        cert_id = asn1_ocsp.CertId.load(responder.issuer.cert_id(1).encoded())
        data = asn1_ocsp.OCSPRequest({"tbs_request": {
            "version": 1, "request_list": [{"req_cert": cert_id}],
        }}).dump()
        with pytest.raises(MalformedRequest):
            parse_request(data)

    def test_malformed_response_is_what_cryptography_expects(self) -> None:
        """R-REV-2: the reply to a malformed request is OCSP malformedRequest, not an error."""
        loaded = ocsp.load_der_ocsp_response(malformed_response())
        assert loaded.response_status is ocsp.OCSPResponseStatus.MALFORMED_REQUEST
        assert malformed_response() == bytes.fromhex("30030a0101")


def test_signing_throughput(protocol_pki: ProtocolPki, responder: Responder) -> None:
    """R-REV-2: one core signs thousands of responses per second (measured ~25,000/s)."""
    identity = responder.issuer
    request = _request([identity.cert_id(protocol_pki.leaves["alice"].serial)],
                       nonce=b"\x11" * 32)
    now = protocol_pki.now
    count = 1000
    started = time.perf_counter()
    for _ in range(count):
        parsed = parse_request(request)
        answers = [(cert_id, find_issuer(cert_id, [identity]), CertStatus.good())
                   for cert_id in parsed.cert_ids]
        build_response(answers, [responder], now, now + HOUR, parsed.nonce)
    rate = count / (time.perf_counter() - started)
    assert rate > 1000, f"{rate:.0f} parse+sign per second"


def _request(cert_ids: list[CertId], nonce: bytes | None = None) -> bytes:
    return _request_from_asn1([asn1_ocsp.CertId.load(c.encoded()) for c in cert_ids], nonce)


def _request_from_asn1(cert_ids: list[asn1_ocsp.CertId], nonce: bytes | None = None) -> bytes:
    tbs: dict[str, Any] = {"request_list": [{"req_cert": cert_id} for cert_id in cert_ids]}
    if nonce is not None:
        tbs["request_extensions"] = [{"extn_id": "nonce", "extn_value": nonce}]
    return asn1_ocsp.OCSPRequest({"tbs_request": tbs}).dump()


def test_sha1_key_hash_is_over_the_bit_string_value(protocol_pki: ProtocolPki) -> None:
    """R-REV-2: the issuer key hash is SHA-1 of the public key bits (RFC 6960 §4.1.1)."""
    point = protocol_pki.issuer.cert.public_key().public_bytes(
        Encoding.X962, PublicFormat.UncompressedPoint)
    identity = IssuerIdentity.from_certificate(protocol_pki.issuer.cert)
    assert identity.sha1_key_hash == hashlib.sha1(point).digest()  # noqa: S324 -- RFC 6960
    assert identity.sha256_key_hash == hashlib.sha256(point).digest()
