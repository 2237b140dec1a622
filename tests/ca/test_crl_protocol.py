"""ca.crl: full CRLs and their caching headers, checked with cryptography and the openssl CLI."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from ca.crl import (
    CRL_MAX_AGE_CAP,
    REASONS,
    RevokedEntry,
    build_crl,
    crl_cache_headers,
    parse_reason,
)
from keys.signer import ForwardingEcSigner

if TYPE_CHECKING:
    from tests.ca.conftest import ProtocolPki

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
DAY = timedelta(days=1)


class RecordingBackend:
    """A key backend that only offers sign() and public_key(), and counts signatures."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        self._key = key
        self.signatures = 0

    def sign(self, data: bytes, algorithm: ec.ECDSA) -> bytes:
        """Sign and count."""
        self.signatures += 1
        return self._key.sign(data, algorithm)

    def public_key(self) -> ec.EllipticCurvePublicKey:
        """The public half."""
        return self._key.public_key()


def _write_crl(der: bytes, directory: Path, openssl_cli: Callable[..., Any]) -> Path:
    (directory / "crl.der").write_bytes(der)
    openssl_cli("crl", "-inform", "DER", "-in", directory / "crl.der",
                "-out", directory / "crl.pem")
    return directory / "crl.pem"


class TestReasons:
    """Revocation reasons are the RFC 5280 names an officer may use for a client certificate."""

    @pytest.mark.parametrize(("text", "expected"), [
        ("keyCompromise", "keyCompromise"),
        ("KEYCOMPROMISE", "keyCompromise"),
        ("key_compromise", "keyCompromise"),
        ("superseded", "superseded"),
        ("Cessation-Of-Operation", "cessationOfOperation"),
        ("affiliationchanged", "affiliationChanged"),
        ("privilegeWithdrawn", "privilegeWithdrawn"),
        ("Unspecified", "unspecified"),
    ])
    def test_names_are_accepted_case_insensitively(self, text: str, expected: str) -> None:
        """R-CERT-7: any spelling of an RFC 5280 reason name gives the canonical name."""
        assert parse_reason(text) == expected
        assert expected in REASONS

    @pytest.mark.parametrize("text", [
        "certificateHold", "removeFromCRL", "cACompromise", "aACompromise",
    ])
    def test_authority_and_hold_reasons_are_refused(self, text: str) -> None:
        """R-CERT-7: hold and authority reasons are refused for client certificates."""
        with pytest.raises(ValueError, match="not used for client certificates") as caught:
            parse_reason(text)
        assert "keyCompromise" in str(caught.value)

    @pytest.mark.parametrize("text", ["", "stolen", "key compromised", "6"])
    def test_unknown_names_are_refused_with_the_valid_list(self, text: str) -> None:
        """R-CERT-7: an unknown reason is refused with a message listing the valid names."""
        with pytest.raises(ValueError, match="unknown revocation reason") as caught:
            parse_reason(text)
        assert all(name in str(caught.value) for name in REASONS)


class TestRevokedEntry:
    """A CRL entry validates its serial, time and reason when it is made."""

    def test_times_are_normalised_to_utc(self) -> None:
        """R-REV-1: an aware time in another zone is stored as the same instant in UTC."""
        jst = timezone(timedelta(hours=9))
        entry = RevokedEntry(5, datetime(2026, 3, 2, 18, 0, tzinfo=jst), "superseded")
        assert entry.revoked_at == datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
        assert entry.revoked_at.tzinfo is UTC

    @pytest.mark.parametrize(("serial", "when", "reason"), [
        (0, T0, "superseded"),
        (-3, T0, "superseded"),
        (1 << 159, T0, "superseded"),
        (5, T0.replace(tzinfo=None), "superseded"),
        (5, T0, "certificateHold"),
        (5, T0, "KeyCompromise"),
    ])
    def test_invalid_entries_are_refused(self, serial: int, when: datetime, reason: str) -> None:
        """R-REV-1: bad serials, naive times and non-canonical reasons are refused."""
        with pytest.raises(ValueError):  # noqa: PT011 -- each case has its own message
            RevokedEntry(serial, when, reason)


class TestBuildCrl:
    """build_crl produces an RFC 5280 full CRL that cryptography and OpenSSL accept."""

    def _entries(self, pki: ProtocolPki) -> list[RevokedEntry]:
        return [
            RevokedEntry(pki.leaves["bob"].serial, pki.now - timedelta(hours=2), "keyCompromise"),
            RevokedEntry(4242, pki.now - timedelta(hours=1), "unspecified"),
            RevokedEntry(4243, pki.now - timedelta(minutes=5), "superseded"),
        ]

    def test_crl_fields_read_back_with_cryptography(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner
    ) -> None:
        """R-REV-1: CRL number, AKI, thisUpdate/nextUpdate, entries and reasons are all set."""
        pki = protocol_pki
        der = build_crl(pki.issuer.cert, issuer_signer, self._entries(pki), 17,
                        pki.now, pki.now + DAY)
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(pki.issuer.cert.public_key())  # type: ignore[arg-type]
        assert isinstance(crl.signature_hash_algorithm, hashes.SHA256)
        assert crl.issuer == pki.issuer.cert.subject
        assert crl.last_update_utc == pki.now
        assert crl.next_update_utc == pki.now + DAY
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 17
        ski = pki.issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        assert aki.key_identifier == ski.value.digest
        bob = crl.get_revoked_certificate_by_serial_number(pki.leaves["bob"].serial)
        assert bob is not None
        assert bob.revocation_date_utc == pki.now - timedelta(hours=2)
        reason = bob.extensions.get_extension_for_class(x509.CRLReason).value.reason
        assert reason is x509.ReasonFlags.key_compromise
        unspecified = crl.get_revoked_certificate_by_serial_number(4242)
        assert unspecified is not None
        assert len(unspecified.extensions) == 0  # RFC 5280 §5.3.1: no reasonCode for unspecified
        assert len(crl) == 3

    def test_openssl_prints_number_aki_next_update_and_reasons(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, tmp_path: Path,
        openssl_cli: Callable[..., Any],
    ) -> None:
        """R-REV-1: `openssl crl -text` shows the CRL number, AKI, nextUpdate and reasons."""
        pki = protocol_pki
        der = build_crl(pki.issuer.cert, issuer_signer, self._entries(pki), 17,
                        pki.now, pki.now + DAY)
        (tmp_path / "crl.der").write_bytes(der)
        text = openssl_cli("crl", "-inform", "DER", "-in", tmp_path / "crl.der",
                           "-text", "-noout").stdout
        ski = pki.issuer.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier)
        assert "Version 2 (0x1)" in text
        assert "X509v3 CRL Number: \n                17" in text
        assert "X509v3 Authority Key Identifier:" in text
        assert ski.value.digest.hex(":").upper() in text
        assert f"Next Update: {(pki.now + DAY).strftime('%b %e %H:%M:%S %Y GMT')}" in text
        serial = pki.leaves["bob"].serial
        # OpenSSL prints the serial's octets, so an odd number of hex digits gets a leading 0.
        octets = serial.to_bytes((serial.bit_length() + 7) // 8, "big")
        assert f"Serial Number: {octets.hex().upper()}" in text
        assert "Key Compromise" in text
        assert "Superseded" in text
        assert text.count("X509v3 CRL Reason Code") == 2  # none for the unspecified entry

    def test_openssl_verify_rejects_the_revoked_leaf(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, tmp_path: Path,
        pki_files: dict[str, Path], openssl_cli: Callable[..., Any],
    ) -> None:
        """R-REV-1: openssl verify -crl_check refuses a leaf listed in our CRL."""
        pki = protocol_pki
        der = build_crl(pki.issuer.cert, issuer_signer, self._entries(pki), 1,
                        pki.now, pki.now + DAY)
        crl_pem = _write_crl(der, tmp_path, openssl_cli)
        result = openssl_cli("verify", "-crl_check", "-CRLfile", crl_pem, "-CAfile",
                             pki_files["chain"], pki_files["leaf_bob"], check=False)
        assert result.returncode != 0
        assert "certificate revoked" in result.stdout

    @pytest.mark.parametrize("listed", [False, True])
    def test_openssl_verify_accepts_a_leaf_not_listed(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, tmp_path: Path,
        pki_files: dict[str, Path], openssl_cli: Callable[..., Any], listed: bool,
    ) -> None:
        """R-REV-1: twin — a non-revoked leaf passes with an empty CRL or one listing others."""
        pki = protocol_pki
        entries = self._entries(pki) if listed else []
        der = build_crl(pki.issuer.cert, issuer_signer, entries, 1, pki.now, pki.now + DAY)
        crl_pem = _write_crl(der, tmp_path, openssl_cli)
        result = openssl_cli("verify", "-crl_check", "-CRLfile", crl_pem, "-CAfile",
                             pki_files["chain"], pki_files["leaf_alice"], check=False)
        assert result.returncode == 0, result.stdout
        assert f"{pki_files['leaf_alice']}: OK" in result.stdout

    def test_openssl_verify_refuses_an_expired_crl(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, tmp_path: Path,
        pki_files: dict[str, Path], openssl_cli: Callable[..., Any],
    ) -> None:
        """R-REV-1: twin — after nextUpdate the same good leaf fails, so freshness matters."""
        pki = protocol_pki
        der = build_crl(pki.issuer.cert, issuer_signer, [], 1,
                        pki.now - 2 * DAY, pki.now - DAY)
        crl_pem = _write_crl(der, tmp_path, openssl_cli)
        result = openssl_cli("verify", "-crl_check", "-CRLfile", crl_pem, "-CAfile",
                             pki_files["chain"], pki_files["leaf_alice"], check=False)
        assert result.returncode != 0
        assert "CRL has expired" in result.stdout

    def test_only_sign_and_public_key_are_used(self, protocol_pki: ProtocolPki) -> None:
        """R-REV-1: the CRL is signed once through the signer seam (an HSM can sit behind it)."""
        backend = RecordingBackend(protocol_pki.issuer.key)
        signer = ForwardingEcSigner(backend, "recording")
        der = build_crl(protocol_pki.issuer.cert, signer, [], 3, T0, T0 + DAY)
        assert backend.signatures == 1
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(protocol_pki.issuer.key.public_key())

    def test_p384_issuer_signs_with_sha384(self) -> None:
        """R-REV-1: a P-384 issuer's CRL is signed with ecdsa-with-SHA384 (RFC 5480 §4)."""
        key = ec.generate_private_key(ec.SECP384R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "P-384 issuer")])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(1)
            .not_valid_before(T0 - DAY).not_valid_after(T0 + 365 * DAY)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA384())
        )
        der = build_crl(cert, ForwardingEcSigner(key, "p384"),
                        [RevokedEntry(9, T0, "keyCompromise")], 1, T0, T0 + DAY)
        crl = x509.load_der_x509_crl(der)
        assert isinstance(crl.signature_hash_algorithm, hashes.SHA384)
        assert crl.is_signature_valid(key.public_key())

    @pytest.mark.parametrize(("entries", "number", "this_update", "next_update", "message"), [
        ([RevokedEntry(7, T0, "superseded")] * 2, 1, T0, T0 + DAY, "more than once"),
        ([], -1, T0, T0 + DAY, "crl_number"),
        ([], 1, T0, T0, "later than"),
        ([], 1, T0 + DAY, T0, "later than"),
        ([], 1, T0.replace(tzinfo=None), T0 + DAY, "timezone-aware"),
        ([], 1, T0, (T0 + DAY).replace(tzinfo=None), "timezone-aware"),
    ])
    def test_inconsistent_input_is_refused(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner,
        entries: list[RevokedEntry], number: int, this_update: datetime,
        next_update: datetime, message: str,
    ) -> None:
        """R-REV-1: duplicate serials, negative numbers and naive or reversed times fail early."""
        with pytest.raises(ValueError, match=message):
            build_crl(protocol_pki.issuer.cert, issuer_signer, entries, number,
                      this_update, next_update)

    def test_100k_entries_build_in_linear_time(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner
    ) -> None:
        """R-REV-1: 100k entries take well under the ~9 s of the quadratic builder pattern."""
        entries = [RevokedEntry((1 << 63) + i, T0 - timedelta(seconds=i), "superseded")
                   for i in range(100_000)]
        started = time.perf_counter()
        der = build_crl(protocol_pki.issuer.cert, issuer_signer, entries, 2, T0, T0 + DAY)
        elapsed = time.perf_counter() - started
        assert len(x509.load_der_x509_crl(der)) == 100_000
        assert elapsed < 4.0, f"100k-entry CRL took {elapsed:.2f}s (measured ~0.4 s)"


class TestCacheHeaders:
    """crl_cache_headers lets HTTP caches keep a CRL, but never past nextUpdate."""

    def test_headers_name_the_crl_and_its_times(self) -> None:
        """R-REV-1: strong ETag of the DER, Last-Modified = thisUpdate, Expires = nextUpdate."""
        der = b"0\x03\x02\x01\x00"
        headers = crl_cache_headers(der, T0, T0 + DAY, T0 + timedelta(minutes=1))
        assert headers["ETag"] == f'"{hashlib.sha256(der).hexdigest()}"'
        assert parsedate_to_datetime(headers["Last-Modified"]) == T0
        assert headers["Last-Modified"] == "Mon, 02 Mar 2026 09:00:00 GMT"
        assert parsedate_to_datetime(headers["Expires"]) == T0 + DAY
        assert headers["Cache-Control"] == (
            f"public, max-age={int(CRL_MAX_AGE_CAP.total_seconds())}, no-transform")

    def test_a_resigned_crl_gets_a_new_etag(self) -> None:
        """R-REV-1: twin — different DER (a re-signed CRL) never shares the ETag."""
        first = crl_cache_headers(b"one", T0, T0 + DAY, T0)
        second = crl_cache_headers(b"two", T0, T0 + DAY, T0)
        assert first["ETag"] != second["ETag"]

    @pytest.mark.parametrize(("seconds_left", "max_age"), [
        (86_400, 300),
        (301, 300),
        (300, 300),
        (299, 299),
        (1, 1),
        (0, 0),
        (-1, 0),
        (-86_400, 0),
    ])
    def test_max_age_never_reaches_past_next_update(
        self, seconds_left: int, max_age: int
    ) -> None:
        """R-REV-1: max-age is min(5 minutes, time left before nextUpdate), never negative."""
        now = T0 + DAY - timedelta(seconds=seconds_left)
        headers = crl_cache_headers(b"crl", T0, T0 + DAY, now)
        assert headers["Cache-Control"] == f"public, max-age={max_age}, no-transform"

    def test_fractional_seconds_round_down(self) -> None:
        """R-REV-1: 1.9 s before nextUpdate allows 1 s of caching, not 2."""
        now = T0 + DAY - timedelta(seconds=1, microseconds=900_000)
        headers = crl_cache_headers(b"crl", T0, T0 + DAY, now)
        assert "max-age=1," in headers["Cache-Control"]

    def test_the_cap_can_be_changed(self) -> None:
        """R-REV-1: a deployment may choose another cap (e.g. one hour)."""
        headers = crl_cache_headers(b"crl", T0, T0 + DAY, T0, max_age_cap=timedelta(hours=1))
        assert "max-age=3600," in headers["Cache-Control"]

    def test_naive_times_are_refused(self) -> None:
        """R-REV-1: a naive `now` is a bug in the caller, not a local time to guess at."""
        with pytest.raises(ValueError, match="timezone-aware"):
            crl_cache_headers(b"crl", T0, T0 + DAY, T0.replace(tzinfo=None))


def test_crl_der_round_trips_through_pem(
    protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner
) -> None:
    """R-REV-1: the DER we serve is exactly what cryptography re-encodes (no stray bytes)."""
    der = build_crl(protocol_pki.issuer.cert, issuer_signer, [], 1, T0, T0 + DAY)
    assert x509.load_der_x509_crl(der).public_bytes(Encoding.DER) == der
