"""Full CRLs (RFC 5280 §5) and their HTTP caching headers (R-REV-1).

Pure protocol code: no I/O, no clock. The caller passes the revoked entries, the CRL number and
the times; the result is DER bytes ready for `application/pkix-crl`. Building is CPU-bound
(about 2 us per new entry, a tenth of that per entry an EntryEncoder remembers from the last
build, plus one signature), so the daemon runs it off the event loop; the DER is encoded by hand
so that this worker thread lets the loop run (see "DER by hand").
"""

from __future__ import annotations

import hashlib
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from operator import itemgetter
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from ca.der import ECDSA_SIGNATURE_ALGORITHMS, der, der_length, require_aware_utc
from keys.signer import signature_hash_for

# The reasons an officer may give for a client certificate (R-CERT-7). certificateHold and
# removeFromCRL are refused because holds are never lifted here (a revoked client certificate
# is re-acquired, not un-revoked); cACompromise and aACompromise describe authorities, not
# end entities.
REASONS: dict[str, x509.ReasonFlags] = {
    "unspecified": x509.ReasonFlags.unspecified,
    "keyCompromise": x509.ReasonFlags.key_compromise,
    "affiliationChanged": x509.ReasonFlags.affiliation_changed,
    "superseded": x509.ReasonFlags.superseded,
    "cessationOfOperation": x509.ReasonFlags.cessation_of_operation,
    "privilegeWithdrawn": x509.ReasonFlags.privilege_withdrawn,
}
_REFUSED_REASONS = {"certificatehold", "removefromcrl", "cacompromise", "aacompromise"}
_REASON_BY_FOLDED = {name.lower(): name for name in REASONS}
_SEPARATORS = re.compile(r"[\s_-]")

# How long an HTTP cache may keep a CRL. The CRL is re-signed on every revocation (R-REV-1),
# so a cache that keeps it for hours hides fresh revocations from CRL-only clients; five
# minutes bounds that delay while the strong ETag keeps revalidation cheap (304).
CRL_MAX_AGE_CAP = timedelta(minutes=5)

_MAX_SERIAL_BITS = 159  # RFC 5280 §4.1.2.2: at most 20 octets, positive


def parse_reason(name: str) -> str:
    """Return the RFC 5280 reason name for `name`, matched case-insensitively (R-CERT-7).

    Spaces, `_` and `-` are ignored, so `key_compromise` and `KEYCOMPROMISE` both give
    `keyCompromise`. Raises ValueError naming the valid reasons otherwise.
    """
    folded = _SEPARATORS.sub("", name).lower() if isinstance(name, str) else ""
    valid = ", ".join(REASONS)
    if folded in _REFUSED_REASONS:
        raise ValueError(
            f"revocation reason {name!r} is not used for client certificates; use one of: {valid}"
        )
    canonical = _REASON_BY_FOLDED.get(folded)
    if canonical is None:
        raise ValueError(f"unknown revocation reason {name!r}; use one of: {valid}")
    return canonical


@dataclass(frozen=True, slots=True)
class RevokedEntry:
    """One CRL entry: the serial, when it was revoked (aware, stored as UTC) and the reason.

    `reason` must be a canonical name from REASONS (use `parse_reason` on officer input).
    """

    serial: int
    revoked_at: datetime
    reason: str

    def __post_init__(self) -> None:
        _check_serial(self.serial)
        offset = self.revoked_at.utcoffset()
        if offset is None:
            raise ValueError("revoked_at must be timezone-aware (UTC)")
        if offset or self.revoked_at.tzinfo is not UTC:
            object.__setattr__(self, "revoked_at", self.revoked_at.astimezone(UTC))
        _check_reason(self.reason)


# Shared by RevokedEntry and the store-row path of EntryEncoder, which checks new rows the same
# way without building a RevokedEntry (its frozen-dataclass __init__ is 40% of an entry's cost).
def _check_serial(serial: int) -> None:
    if not isinstance(serial, int) or serial <= 0 or serial.bit_length() > _MAX_SERIAL_BITS:
        raise ValueError(f"serial {serial!r} is not a positive integer of <= 20 octets")


def _check_reason(reason: str) -> None:
    if reason not in REASONS:
        raise ValueError(
            f"reason {reason!r} is not one of: {', '.join(REASONS)} (see parse_reason)"
        )


# --- DER by hand ------------------------------------------------------------------------------
#
# Why not cryptography's CertificateRevocationListBuilder: it builds, encodes and signs in C
# calls that hold the GIL for the whole CRL (~0.4 s at 100k entries, ~5 s at 1M), and the event
# loop that answers OCSP stalls that long while the daemon re-signs in a worker thread. Here the
# TBSCertList is plain bytes concatenation: the interpreter hands the GIL over every few
# milliseconds, the big joins and the signature release it, and the per-entry DER is kept
# between re-signs (EntryEncoder), so a re-sign only pays for the entries that changed. The
# output is byte-for-byte what cryptography's builder writes for the same input (tested).

# Items per C call in the O(n) passes (set/dict updates, list comparison, bytes.join): the
# interpreter only hands the GIL over between calls, and a call over a million items holds it for
# tens of milliseconds; 16k items take about a millisecond.
_SLICE = 16_384

_TWO_DIGITS = [b"%02d" % value for value in range(100)]

# Reason codes of RFC 5280 §5.3.1 for the reasons in REASONS.
REASON_CODES = {
    "unspecified": 0,
    "keyCompromise": 1,
    "affiliationChanged": 3,
    "superseded": 4,
    "cessationOfOperation": 5,
    "privilegeWithdrawn": 9,
}
_OID_CRL_REASON = b"\x06\x03\x55\x1d\x15"  # 2.5.29.21
_OID_CRL_NUMBER = b"\x06\x03\x55\x1d\x14"  # 2.5.29.20
_OID_AUTHORITY_KEY_IDENTIFIER = b"\x06\x03\x55\x1d\x23"  # 2.5.29.35
# AlgorithmIdentifiers ecdsa-with-SHA256 / -SHA384 (RFC 5758 §3.2: parameters absent).
_VERSION_2 = b"\x02\x01\x01"  # INTEGER 1 = v2 (entry and CRL extensions are present)


def _der_integer(value: int) -> bytes:
    """A non-negative INTEGER in minimal two's complement (X.690 §8.3.2): 0x80.. gets a 00."""
    return der(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def _der_time(when: datetime) -> bytes:
    """RFC 5280 §5.1.2.4/§5.1.2.6: UTCTime for 1950-2049, GeneralizedTime otherwise.

    `when` is in UTC; fractions of a second are dropped, as cryptography does. Table look-ups
    instead of strftime: this runs once per new entry (0.2 us instead of 1.5 us).
    """
    digits = _TWO_DIGITS
    year = when.year
    if 1950 <= year < 2050:
        return b"".join((b"\x17\x0d", digits[year % 100], digits[when.month], digits[when.day],
                         digits[when.hour], digits[when.minute], digits[when.second], b"Z"))
    return b"".join((b"\x18\x0f", digits[year // 100], digits[year % 100], digits[when.month],
                     digits[when.day], digits[when.hour], digits[when.minute],
                     digits[when.second], b"Z"))


def _extension(oid: bytes, value: bytes) -> bytes:
    """Extension ::= SEQUENCE { extnID, extnValue }: critical FALSE is the DEFAULT, so absent."""
    return der(0x30, oid + der(0x04, value))


# crlEntryExtensions per reason: none for unspecified (RFC 5280 §5.3.1 recommends omitting it),
# else Extensions { CRLReason ENUMERATED }. Shared, since an entry's extensions are its reason.
_ENTRY_EXTENSIONS = {
    name: b"" if code == 0
    else der(0x30, _extension(_OID_CRL_REASON, bytes((0x0A, 0x01, code))))
    for name, code in REASON_CODES.items()
}


def _encode_entry(serial: int, revoked_at: datetime, reason: str) -> bytes:
    """SEQUENCE { userCertificate, revocationDate, crlEntryExtensions }, short-form length.

    At most 2 + 21 + 17 + 14 octets, so every length fits in one octet.
    """
    octets = serial.to_bytes(serial.bit_length() // 8 + 1, "big")
    when = _der_time(revoked_at)
    extensions = _ENTRY_EXTENSIONS[reason]
    return b"".join((bytes((0x30, 2 + len(octets) + len(when) + len(extensions),
                            0x02, len(octets))), octets, when, extensions))


_DUPLICATE = "a serial number appears more than once in the CRL entries"

Key = tuple[Any, ...]  # (serial, revoked_at, reason) as the caller gives them


class EntryEncoder:
    """The DER of a CRL's entries, remembered from one build of that CRL to the next.

    Why: the CRL is re-signed after every revocation and hourly, and between two signings
    almost every entry is unchanged. Encoding an entry costs ~2 us of interpreter time, so a
    100k-entry CRL would spend a quarter second re-encoding what it already had.

    Keep one encoder per CRL (per issuer) and pass it to every build of that CRL. It holds
    exactly the entries of the last build, so it is bounded by that CRL's size (about 0.4 kB
    per entry, the caller's row tuples included; a build of more than `max_entries` entries
    is encoded but not remembered). Two paths:

    - The entries start with the last build's, in the same order (the store lists them in
      revocation order, so new revocations come last): a C-level list comparison confirms the
      common part (~0.1 us per entry), only the new entries are encoded, and they are appended
      to the last build's joined DER.
    - Anything else (expired entries dropped, a changed reason): each entry is looked up by
      its full content (~0.3 us per entry), so a changed date or reason is re-encoded, never
      served stale.

    Thread-safe: builds that share an encoder take turns.
    """

    def __init__(self, max_entries: int = 2_000_000) -> None:
        if max_entries < 0:
            raise ValueError("max_entries must not be negative")
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._forget()

    def __len__(self) -> int:
        """How many entries are remembered."""
        return len(self._keys)

    def encode(self, entries: Sequence[RevokedEntry]) -> bytes:
        """The entries' DER, concatenated in order (the contents of revokedCertificates).

        Raises ValueError if a serial appears twice.
        """
        keys = [(entry.serial, entry.revoked_at, entry.reason) for entry in entries]
        return self._encode(keys, _encode_entry)

    def encode_rows(self, rows: Sequence[tuple[str, int, str]]) -> bytes:
        """`encode` for store rows `(serial lowercase hex, revoked_at Unix seconds, reason)`.

        What `Store.revoked_entries` returns, so a re-sign builds no RevokedEntry (nor
        datetime) for entries already encoded: the row itself is the key. A new row gets
        RevokedEntry's checks (serial, reason) before it is encoded, and its serial must be in
        the store's canonical form (`serial_hex`), so that distinct texts are distinct serials.
        Raises ValueError on an invalid row or a serial listed twice.
        """
        return self._encode(rows, _encode_row)

    def _forget(self) -> None:
        self._keys: list[Key] = []
        self._serials: set[Any] = set()
        self._by_key: dict[Key, bytes] = {}
        self._joined = b""

    def _encode(self, keys: Sequence[Key], encode: Callable[..., bytes]) -> bytes:
        with self._lock:
            known = len(self._keys)
            if 0 < known <= len(keys) and _same_prefix(keys, self._keys):
                return self._append(keys[known:], encode)
            serials: set[Any] = set()
            first = itemgetter(0)
            for start in range(0, len(keys), _SLICE):
                serials.update(map(first, keys[start:start + _SLICE]))
            if len(serials) != len(keys):
                raise ValueError(_DUPLICATE)
            get = self._by_key.get
            ders = [get(key) or encode(*key) for key in keys]
            joined = _join(ders)
            previous, previous_by_key = self._keys, self._by_key
            self._forget()
            _release(previous, previous_by_key)
            if len(keys) <= self.max_entries:
                for start in range(0, len(keys), _SLICE):
                    self._by_key.update(zip(keys[start:start + _SLICE],
                                            ders[start:start + _SLICE], strict=True))
                self._keys, self._serials, self._joined = list(keys), serials, joined
            return joined

    def _append(self, new: Sequence[Key], encode: Callable[..., bytes]) -> bytes:
        if not new:
            return self._joined
        serials = [key[0] for key in new]
        if len(set(serials)) != len(serials) or not self._serials.isdisjoint(serials):
            raise ValueError(_DUPLICATE)
        encoded = [encode(*key) for key in new]
        joined = b"".join((self._joined, _join(encoded)))
        if len(self._keys) + len(new) > self.max_entries:
            self._forget()
        else:
            self._keys += new
            self._serials.update(serials)
            self._by_key.update(zip(new, encoded, strict=True))
            self._joined = joined
        return joined


def _same_prefix(keys: Sequence[Key], known: list[Key]) -> bool:
    """keys[:len(known)] == known, compared a slice at a time so other threads get turns."""
    end = len(known)
    return all(list(keys[start:min(start + _SLICE, end)]) == known[start:start + _SLICE]
               for start in range(0, end, _SLICE))


def _release(keys: list[Key], by_key: dict[Key, bytes]) -> None:
    """Free the previous build's entries a slice at a time.

    Dropping them at once frees a million row tuples in one C call (~0.1 s with the GIL held);
    clearing the dict first leaves `keys` as their last owner, emptied from the end.
    """
    by_key.clear()
    while keys:
        del keys[-_SLICE:]


def _join(parts: list[bytes]) -> bytes:
    """b"".join a slice at a time: sizing a million parts in one call holds the GIL ~0.2 s.

    (bytes.join releases the GIL while it copies a large result, not while it sizes parts.)
    """
    if len(parts) <= _SLICE:
        return b"".join(parts)
    return b"".join([b"".join(parts[start:start + _SLICE])
                     for start in range(0, len(parts), _SLICE)])


def _encode_row(text: str, revoked_at: int, reason: str) -> bytes:
    """A new store row, checked as RevokedEntry checks an entry, then encoded."""
    serial = int(text, 16)
    _check_serial(serial)
    if format(serial, "x") != text:
        raise ValueError(f"serial {text!r} is not in canonical lowercase hex")
    _check_reason(reason)
    return _encode_entry(serial, datetime.fromtimestamp(revoked_at, UTC), reason)


def _authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # RFC 5280 requires an SKI on CA certificates; derive the same method-1 value if an
        # older issuer lacks one, so the AKI still matches what clients compute.
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_cert.public_key())  # type: ignore[arg-type]
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _check_crl_fields(
    crl_number: int, this_update: datetime, next_update: datetime
) -> tuple[datetime, datetime]:
    if crl_number < 0 or crl_number.bit_length() > _MAX_SERIAL_BITS:
        raise ValueError("crl_number must be a non-negative integer of <= 20 octets")
    this_update = require_aware_utc("this_update", this_update)
    next_update = require_aware_utc("next_update", next_update)
    if next_update <= this_update:
        raise ValueError("next_update must be later than this_update")
    return this_update, next_update


def _sign_crl(
    issuer_cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    revoked: bytes,
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
) -> bytes:
    """Frame TBSCertList around the encoded entries, sign it, frame the CertificateList.

    Field and extension order are cryptography's (CRLNumber, then AKI), so the TBS bytes are
    the same as its builder's. The entries are joined once into the TBS and the TBS once into
    the CRL: bytes.join and the signature release the GIL on large inputs.
    """
    hash_algorithm = signature_hash_for(signer)
    algorithm = ECDSA_SIGNATURE_ALGORITHMS[hash_algorithm.name]
    extensions = der(0xA0, der(0x30, (
        _extension(_OID_CRL_NUMBER, _der_integer(crl_number))
        + _extension(_OID_AUTHORITY_KEY_IDENTIFIER,
                     _authority_key_identifier(issuer_cert).public_bytes())
    )))
    head = b"".join((_VERSION_2, algorithm, issuer_cert.subject.public_bytes(),
                     _der_time(this_update), _der_time(next_update)))
    # RFC 5280 §5.1.2.6: with no revoked certificates the list is absent, not empty.
    revoked_header = b"\x30" + der_length(len(revoked)) if revoked else b""
    tbs_length = len(head) + len(revoked_header) + len(revoked) + len(extensions)
    tbs = b"".join((b"\x30" + der_length(tbs_length), head, revoked_header, revoked,
                    extensions))
    signature = signer.sign(tbs, ec.ECDSA(hash_algorithm))
    tail = algorithm + der(0x03, b"\x00" + signature)  # BIT STRING, no unused bits
    return b"".join((b"\x30" + der_length(len(tbs) + len(tail)), tbs, tail))


def build_crl(
    issuer_cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    entries: Sequence[RevokedEntry],
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
    *,
    encoder: EntryEncoder | None = None,
) -> bytes:
    """Build and sign a full v2 CRL for `issuer_cert`; return its DER (R-REV-1, RFC 5280 §5).

    The CRL carries the CRL number and the AKI (from the issuer's SKI) as CRL extensions, and
    per entry the revocation date and a CRLReason extension, omitted for `unspecified` as
    RFC 5280 §5.3.1 recommends. It is signed by `signer` (only `sign()` and `public_key()` are
    used) with SHA-256 for P-256 keys and SHA-384 for P-384 keys. Raises ValueError on a
    negative CRL number, naive or reversed times, or a serial listed twice.

    The DER is encoded here, not by cryptography's builder, so that a worker thread building
    a large CRL lets the event loop run (see above). `encoder` keeps the entries' DER for the
    next build of the same CRL; without one every entry is encoded afresh. Cost on one core:
    ~2 us per new entry, 0.1-0.5 us per remembered one, plus the signature (measured: 0.2 s
    for 100k new entries, 15 ms to re-sign them with one more): call this from a worker
    thread, not the event loop.
    """
    this_update, next_update = _check_crl_fields(crl_number, this_update, next_update)
    if encoder is None:
        encoder = EntryEncoder(max_entries=0)
    revoked = encoder.encode(entries)
    return _sign_crl(issuer_cert, signer, revoked, crl_number, this_update, next_update)


def build_crl_from_rows(
    issuer_cert: x509.Certificate,
    signer: ec.EllipticCurvePrivateKey,
    rows: Sequence[tuple[str, int, str]],
    crl_number: int,
    this_update: datetime,
    next_update: datetime,
    *,
    encoder: EntryEncoder | None = None,
) -> bytes:
    """`build_crl` for store rows `(serial hex, revoked_at Unix seconds, reason)`.

    The daemon's path: with the encoder it keeps per issuer, a re-sign makes no Python object
    per unchanged entry (see EntryEncoder.encode_rows). Same checks and output as build_crl.
    """
    this_update, next_update = _check_crl_fields(crl_number, this_update, next_update)
    if encoder is None:
        encoder = EntryEncoder(max_entries=0)
    revoked = encoder.encode_rows(rows)
    return _sign_crl(issuer_cert, signer, revoked, crl_number, this_update, next_update)


def _http_date(when: datetime) -> str:
    return format_datetime(when.astimezone(UTC).replace(microsecond=0), usegmt=True)


def crl_etag(crl_der: bytes) -> str:
    """A strong ETag: the SHA-256 of the DER, so a re-signed CRL always gets a new tag."""
    return f'"{hashlib.sha256(crl_der).hexdigest()}"'


def crl_cache_headers(
    crl_der: bytes,
    this_update: datetime,
    next_update: datetime,
    now: datetime,
    *,
    max_age_cap: timedelta = CRL_MAX_AGE_CAP,
    etag: str | None = None,
) -> dict[str, str]:
    """HTTP caching headers for a published CRL (R-REV-1; the RFC 5019 §6.2 pattern).

    - `ETag`: `crl_etag(crl_der)` unless the caller has it already (hashing megabytes of
      CRL for every request would hold up the event loop).
    - `Last-Modified`: thisUpdate; `Expires`: nextUpdate.
    - `Cache-Control: public, max-age=N, no-transform` with N = min(`max_age_cap`, whole
      seconds left until nextUpdate), never negative: no cache keeps the CRL past nextUpdate,
      nor longer than the cap after a revocation re-signed it.
    """
    this_update = require_aware_utc("this_update", this_update)
    next_update = require_aware_utc("next_update", next_update)
    now = require_aware_utc("now", now)
    remaining = int((next_update - now).total_seconds())  # truncates toward zero
    max_age = max(0, min(int(max_age_cap.total_seconds()), remaining))
    return {
        "ETag": etag if etag is not None else crl_etag(crl_der),
        "Last-Modified": _http_date(this_update),
        "Expires": _http_date(next_update),
        "Cache-Control": f"public, max-age={max_age}, no-transform",
    }
