"""ca.crl: full CRLs and their caching headers, checked with cryptography and the openssl CLI."""

from __future__ import annotations

import hashlib
import random
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

import ca.crl
from ca import crl_publisher
from ca.crl import (
    CRL_MAX_AGE_CAP,
    REASONS,
    EntryEncoder,
    RevokedEntry,
    build_crl,
    build_crl_from_rows,
    crl_cache_headers,
    parse_reason,
)
from keys.signer import ForwardingEcSigner
from tests.ca.conftest import CountingSigner

if TYPE_CHECKING:
    from tests.ca.conftest import ProtocolPki

T0 = datetime(2026, 3, 2, 9, 0, 0, tzinfo=UTC)
T0_EPOCH = int(T0.timestamp())
DAY = timedelta(days=1)


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
        backend = CountingSigner(protocol_pki.issuer.key)
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
        assert elapsed < 4.0, f"100k-entry CRL took {elapsed:.2f}s (measured ~0.2 s)"


def _reference_crl(
    issuer_cert: x509.Certificate, key: ec.EllipticCurvePrivateKey, entries: list[RevokedEntry],
    number: int, this_update: datetime, next_update: datetime,
) -> x509.CertificateRevocationList:
    """The same CRL built by cryptography's builder (what build_crl used before R-REV-1 perf)."""
    builder = x509.CertificateRevocationListBuilder(revoked_certificates=[
        x509.RevokedCertificateBuilder(
            entry.serial, entry.revoked_at,
            [] if entry.reason == "unspecified"
            else [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(REASONS[entry.reason]))],
        ).build()
        for entry in entries
    ])
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        aki = x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)
    except x509.ExtensionNotFound:
        aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key())
    return (
        builder.issuer_name(issuer_cert.subject).last_update(this_update)
        .next_update(next_update)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(aki, critical=False)
        .sign(key, hashes.SHA384() if key.curve.key_size >= 384 else hashes.SHA256())
    )


def _issuer(curve: ec.EllipticCurve, *, ski: bool = True) -> tuple[
    x509.Certificate, ec.EllipticCurvePrivateKey
]:
    key = ec.generate_private_key(curve)
    name = x509.Name([
        x509.NameAttribute(NameOID.COUNTRY_NAME, "JP"),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Sekisho \u95a2\u6240"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"{curve.name} issuer"),
    ])
    builder = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(T0 - DAY).not_valid_after(T0 + 365 * DAY)
    )
    if ski:
        builder = builder.add_extension(
            x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    return builder.sign(key, hashes.SHA256()), key


# Serials at every octet boundary of minimal two's complement: 0x7f fits one octet, 0x80 needs a
# leading 00; the largest allowed serial has 159 bits (20 octets with the 00 it does not need).
_EDGE_SERIALS = [
    1, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFF, 0x800000, 1 << 63, (1 << 64) - 1,
    0x80 << 144, 1 << 158, (1 << 159) - 1,
]
# Both sides of RFC 5280 §5.1.2.4's switch from UTCTime to GeneralizedTime, and fractions of a
# second (dropped, as cryptography drops them).
_EDGE_DATES = [
    datetime(1950, 1, 1, tzinfo=UTC), datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
    datetime(2050, 1, 1, tzinfo=UTC), datetime(2099, 6, 30, 12, 0, 1, tzinfo=UTC),
    datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC), T0.replace(microsecond=999_999),
]


def _mixed_entries(count: int, seed: int = 5280) -> list[RevokedEntry]:
    """Edge serials and dates first, then random ones; every reason in turn."""
    rng = random.Random(seed)
    serials = list(_EDGE_SERIALS)
    seen = set(serials)
    while len(serials) < count:
        serial = rng.getrandbits(rng.randrange(1, 160)) or 1
        if serial not in seen:
            seen.add(serial)
            serials.append(serial)
    reasons = list(REASONS)
    return [
        RevokedEntry(
            serial,
            _EDGE_DATES[index] if index < len(_EDGE_DATES)
            else datetime(1950, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.randrange(1 << 32)),
            reasons[index % len(reasons)],
        )
        for index, serial in enumerate(serials[:count])
    ]


def _rows(entries: list[RevokedEntry]) -> list[tuple[str, int, str]]:
    return [(format(entry.serial, "x"), int(entry.revoked_at.timestamp()), entry.reason)
            for entry in entries]


class TestHandEncodedDer:
    """build_crl writes, byte for byte, the TBSCertList cryptography's builder would write."""

    @pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1()], ids=["P-256", "P-384"])
    @pytest.mark.parametrize(("number", "this_update", "next_update"), [
        (1, T0, T0 + DAY),
        (0, T0.replace(microsecond=500_000), T0 + DAY),
        (0x80, datetime(2049, 12, 31, 12, tzinfo=UTC), datetime(2050, 1, 1, 12, tzinfo=UTC)),
        ((1 << 159) - 1, datetime(2050, 1, 1, tzinfo=UTC), datetime(2050, 1, 2, tzinfo=UTC)),
    ], ids=["utc", "number-0", "across-2050", "after-2050"])
    def test_tbs_is_identical_to_cryptography(
        self, curve: ec.EllipticCurve, number: int, this_update: datetime,
        next_update: datetime,
    ) -> None:
        """R-REV-1: 300 entries, every reason, edge serials and dates: same TBS bytes."""
        cert, key = _issuer(curve)
        entries = _mixed_entries(300)
        der = build_crl(cert, ForwardingEcSigner(key, "ref"), entries, number,
                        this_update, next_update)
        ours = x509.load_der_x509_crl(der)
        reference = _reference_crl(cert, key, entries, number, this_update, next_update)
        assert ours.tbs_certlist_bytes == reference.tbs_certlist_bytes
        assert ours.is_signature_valid(key.public_key())
        assert ours.signature_algorithm_oid == reference.signature_algorithm_oid
        assert ours.public_bytes(Encoding.DER) == der  # no stray bytes around the signature

    @pytest.mark.parametrize("ski", [True, False], ids=["ski", "no-ski"])
    def test_empty_crl_omits_the_list_like_cryptography(self, ski: bool) -> None:
        """R-REV-1: with no entries revokedCertificates is absent; AKI without SKI matches."""
        cert, key = _issuer(ec.SECP256R1(), ski=ski)
        der = build_crl(cert, ForwardingEcSigner(key, "ref"), [], 7, T0, T0 + DAY)
        reference = _reference_crl(cert, key, [], 7, T0, T0 + DAY)
        assert x509.load_der_x509_crl(der).tbs_certlist_bytes == reference.tbs_certlist_bytes

    def test_rows_give_the_same_crl_as_entries(self) -> None:
        """R-REV-1: the store-row path encodes exactly what the RevokedEntry path does."""
        cert, key = _issuer(ec.SECP256R1())
        entries = [RevokedEntry(entry.serial, entry.revoked_at.replace(microsecond=0),
                                entry.reason) for entry in _mixed_entries(200)]
        signer = ForwardingEcSigner(key, "ref")
        from_entries = build_crl(cert, signer, entries, 3, T0, T0 + DAY)
        from_rows = build_crl_from_rows(cert, signer, _rows(entries), 3, T0, T0 + DAY)
        assert (x509.load_der_x509_crl(from_entries).tbs_certlist_bytes
                == x509.load_der_x509_crl(from_rows).tbs_certlist_bytes)

    def test_openssl_reads_generalized_times_after_2049(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, tmp_path: Path,
        openssl_cli: Callable[..., Any],
    ) -> None:
        """R-REV-1: thisUpdate, nextUpdate and revocation dates from 2050 on read back."""
        this_update = datetime(2050, 1, 1, tzinfo=UTC)
        entries = [RevokedEntry(0x80, datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC),
                                "keyCompromise"),
                   RevokedEntry(0xFF00, this_update, "privilegeWithdrawn")]
        der = build_crl(protocol_pki.issuer.cert, issuer_signer, entries, 0x80, this_update,
                        this_update + DAY)
        (tmp_path / "crl.der").write_bytes(der)
        text = openssl_cli("crl", "-inform", "DER", "-in", tmp_path / "crl.der",
                           "-text", "-noout").stdout
        assert "Last Update: Jan  1 00:00:00 2050 GMT" in text
        assert "Next Update: Jan  2 00:00:00 2050 GMT" in text
        assert "Revocation Date: Dec 31 23:59:59 2049 GMT" in text
        assert "Revocation Date: Jan  1 00:00:00 2050 GMT" in text
        assert "X509v3 CRL Number: \n                128" in text
        assert "Privilege Withdrawn" in text
        crl = x509.load_der_x509_crl(der)
        assert crl.is_signature_valid(protocol_pki.issuer.cert.public_key())  # type: ignore[arg-type]


class TestEntryEncoder:
    """A re-sign re-encodes only what changed, and never serves a stale entry."""

    @staticmethod
    def _tbs(der: bytes) -> bytes:
        return x509.load_der_x509_crl(der).tbs_certlist_bytes

    @pytest.fixture
    def encoded_rows(self, monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
        """Every store row the encoder encodes (as opposed to finding it remembered)."""
        calls: list[tuple[str, int, str]] = []
        encode_row = ca.crl._encode_row

        def counting(text: str, revoked_at: int, reason: str) -> bytes:
            calls.append((text, revoked_at, reason))
            return encode_row(text, revoked_at, reason)

        monkeypatch.setattr(ca.crl, "_encode_row", counting)
        return calls

    def test_re_signs_encode_only_new_rows_and_match_a_fresh_build(
        self, encoded_rows: list[tuple[str, int, str]],
    ) -> None:
        """R-REV-1: appended, dropped and changed rows; each CRL equals an uncached build."""
        cert, key = _issuer(ec.SECP256R1())
        signer = ForwardingEcSigner(key, "ref")
        rows = _rows(_mixed_entries(400))
        encoder = EntryEncoder()

        def build(current: list[tuple[str, int, str]], number: int) -> bytes:
            # Fresh tuples, as every store read returns new objects.
            der = build_crl_from_rows(cert, signer, [tuple(row) for row in current], number,
                                      T0, T0 + DAY, encoder=encoder)
            entries = [RevokedEntry(int(text, 16), datetime.fromtimestamp(at, UTC), reason)
                       for text, at, reason in current]
            uncached = build_crl(cert, signer, entries, number, T0, T0 + DAY)
            assert self._tbs(der) == self._tbs(uncached)
            return der

        build(rows[:300], 1)
        assert len(encoded_rows) == len(encoder) == 300
        encoded_rows.clear()
        build(rows[:300], 2)  # hourly re-sign, nothing new
        assert encoded_rows == []
        build(rows[:301], 3)  # one revocation
        build(rows[:400], 4)  # a bulk revocation
        assert encoded_rows == rows[300:400]
        assert len(encoder) == 400
        encoded_rows.clear()
        dropped = rows[:10] + rows[20:400]  # expired entries dropped from the middle
        build(dropped, 5)
        assert encoded_rows == []
        assert len(encoder) == len(dropped)
        text, revoked_at, _ = dropped[50]
        changed = [*dropped[:50], (text, revoked_at + 60, "keyCompromise"), *dropped[51:]]
        der = build(changed, 6)
        assert encoded_rows == [changed[50]]  # re-encoded, not served from the old entry
        entry = x509.load_der_x509_crl(der).get_revoked_certificate_by_serial_number(
            int(text, 16))
        assert entry is not None
        assert entry.revocation_date_utc == datetime.fromtimestamp(revoked_at + 60, UTC)
        assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason is (
            x509.ReasonFlags.key_compromise)

    def test_entries_are_remembered_too(self) -> None:
        """R-REV-1: build_crl with an encoder: a re-sign with one more entry, same TBS."""
        cert, key = _issuer(ec.SECP256R1())
        signer = ForwardingEcSigner(key, "ref")
        entries = _mixed_entries(120)
        encoder = EntryEncoder()
        build_crl(cert, signer, entries[:100], 1, T0, T0 + DAY, encoder=encoder)
        again = build_crl(cert, signer, entries, 2, T0, T0 + DAY, encoder=encoder)
        assert len(encoder) == 120
        reference = _reference_crl(cert, key, entries, 2, T0, T0 + DAY)
        assert self._tbs(again) == reference.tbs_certlist_bytes

    @pytest.mark.parametrize("prefix", [0, 3], ids=["first-build", "appended"])
    @pytest.mark.parametrize(("extra", "message"), [
        ([("5", T0_EPOCH, "superseded"), ("5", T0_EPOCH + 1, "keyCompromise")], "more than once"),
        ([("a1", T0_EPOCH, "superseded")], "more than once"),  # already among the first rows
        ([("05", T0_EPOCH, "superseded")], "canonical"),
        ([("0x5", T0_EPOCH, "superseded")], "canonical"),
        ([("0", T0_EPOCH, "superseded")], "positive integer"),
        ([(format(1 << 159, "x"), T0_EPOCH, "superseded")], "positive integer"),
        ([("5", T0_EPOCH, "certificateHold")], "is not one of"),
    ])
    def test_bad_rows_are_refused(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner, prefix: int,
        extra: list[tuple[str, int, str]], message: str,
    ) -> None:
        """R-REV-1: duplicates, non-canonical or invalid serials and bad reasons fail early."""
        first = [("a1", T0_EPOCH, "superseded"), ("a2", T0_EPOCH, "unspecified"),
                 ("a3", T0_EPOCH, "keyCompromise")]
        encoder = EntryEncoder()
        build_crl_from_rows(protocol_pki.issuer.cert, issuer_signer, first[:prefix], 1,
                            T0, T0 + DAY, encoder=encoder)
        with pytest.raises(ValueError, match=message):
            build_crl_from_rows(protocol_pki.issuer.cert, issuer_signer, first + extra, 2,
                                T0, T0 + DAY, encoder=encoder)
        assert len(encoder) == prefix  # a refused build leaves the encoder as it was

    def test_builds_above_max_entries_are_not_remembered(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner,
    ) -> None:
        """R-REV-1: the encoder is bounded; a CRL larger than the bound is still built."""
        encoder = EntryEncoder(max_entries=2)
        rows = [("b1", T0_EPOCH, "superseded"), ("b2", T0_EPOCH, "superseded")]
        build_crl_from_rows(protocol_pki.issuer.cert, issuer_signer, rows, 1, T0, T0 + DAY,
                            encoder=encoder)
        assert len(encoder) == 2
        der = build_crl_from_rows(protocol_pki.issuer.cert, issuer_signer,
                                  [*rows, ("b3", T0_EPOCH, "superseded")], 2, T0, T0 + DAY,
                                  encoder=encoder)
        assert len(encoder) == 0
        assert len(x509.load_der_x509_crl(der)) == 3
        with pytest.raises(ValueError, match="max_entries"):
            EntryEncoder(max_entries=-1)

    def test_publisher_keeps_one_encoder_per_issuer(
        self, protocol_pki: ProtocolPki, issuer_signer: ForwardingEcSigner,
        encoded_rows: list[tuple[str, int, str]],
    ) -> None:
        """R-REV-1: the daemon's build path remembers entries between re-signs."""
        rows = _rows(_mixed_entries(50, seed=7))
        first = crl_publisher._build(protocol_pki.issuer.cert, issuer_signer, rows, 1,
                                     T0, T0 + DAY)
        encoded_rows.clear()
        again = crl_publisher._build(protocol_pki.issuer.cert, issuer_signer,
                                     [tuple(row) for row in rows], 2, T0, T0 + DAY)
        assert encoded_rows == []
        assert len(x509.load_der_x509_crl(again)) == len(x509.load_der_x509_crl(first)) == 50


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
