"""OCSP requests and responses (RFC 6960, RFC 5019 profile, RFC 9654 nonces) for R-REV-2.

Pure protocol code: no I/O, no clock, no store. The daemon parses a request (`parse_request`),
finds each CertID's issuer (`find_issuer`) and status, and calls `build_response`.
cryptography's OCSP parser and builder handle one CertID per message only, so asn1crypto parses
requests, and responses (any number of SingleResponses) are framed from precomputed DER parts;
the tests hold that framing to asn1crypto.ocsp's encoding, OpenSSL and cryptography. Signing
goes through the signer seam (`sign()` and `public_key()` only, so an HSM can sit behind it).

Issuer policy (decided here, documented once):

- A CertID that matches none of our issuers, when at least one CertID of the request is ours,
  is answered `unknown` in the signed response (RFC 6960 §2.2: "unknown" covers an issuer this
  responder does not serve).
- A request in which NO CertID matches one of our issuers gets `unauthorized` (RFC 6960 §2.3,
  RFC 5019 §2.2.3: the responder cannot answer authoritatively). No signature is spent on it,
  which also keeps foreign or junk traffic cheap.
- A delegated responder may only speak for the CA that issued it (RFC 6960 §4.2.2.2); a CertID
  of another of our generations in the same request is therefore answered `unknown` by the
  responder chosen for the first CertID that is ours.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import unquote

from asn1crypto import algos as asn1_algos
from asn1crypto import ocsp as asn1_ocsp
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509 import ocsp as x509_ocsp
from cryptography.x509.oid import ExtendedKeyUsageOID

from ca.crl import REASON_CODES, REASONS
from ca.der import ECDSA_SIGNATURE_ALGORITHMS, der, require_aware_utc
from keys.signer import signature_hash_for

# Bounds on what a request may carry. A request with one CertID and a nonce is ~100 bytes; a
# signed one with a certificate chain a few KiB. Anything beyond these is not a real client.
MAX_REQUEST_BYTES = 32 * 1024
MAX_CERT_IDS = 16
# RFC 9654 §2.1: a nonce of 0 octets or more than 128 octets is refused with malformedRequest.
MAX_NONCE_BYTES = 128

HashName = Literal["sha1", "sha256"]
_DIGEST_SIZES = {"sha1": 20, "sha256": 32}


class MalformedRequest(Exception):
    """The bytes are not an OCSP request we can answer; reply with `malformed_response()`."""


# A response is a handful of fixed wrappers around the CertIDs, times and signature. Framing
# them by hand costs ~7 us per response where building asn1crypto.ocsp objects costs ~200 us
# (30x the ECDSA signature itself). The tests check these bytes against asn1crypto.ocsp's own
# encoding of the same structures, and against OpenSSL and cryptography.


# The AlgorithmIdentifiers of canonical CertIDs, with NULL parameters as OpenSSL writes them.
_HASH_ALGORITHMS = {
    name: asn1_algos.DigestAlgorithm({"algorithm": name, "parameters": None}).dump()
    for name in _DIGEST_SIZES
}
# The same AlgorithmIdentifiers in their other valid encoding (asn1crypto writes absent
# parameters when told None, NULL by default): clients send either.
_HASH_ALGORITHMS_OTHER_FORM = {
    name: asn1_algos.DigestAlgorithm({"algorithm": name}).dump() for name in _DIGEST_SIZES
}


# --- requests ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertId:
    """One CertID (RFC 6960 §4.1.1): which certificate, named by its issuer's hashes and serial.

    `der` keeps the request's exact encoding, echoed in the response: OpenSSL matches answers
    to questions on the whole CertID, AlgorithmIdentifier parameters included.
    """

    hash_algorithm: HashName
    issuer_name_hash: bytes
    issuer_key_hash: bytes
    serial_number: int
    der: bytes = field(default=b"", compare=False, repr=False)

    def encoded(self) -> bytes:
        """The DER to echo: the request's own bytes, or a canonical encoding (NULL params)."""
        if self.der:
            return self.der
        return der(0x30, _HASH_ALGORITHMS[self.hash_algorithm] + _cert_id_fields(
            self.issuer_name_hash, self.issuer_key_hash, self.serial_number))


def _cert_id_fields(name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """A CertID's contents after its hash AlgorithmIdentifier: two hashes and the serial."""
    size = ((serial if serial >= 0 else ~serial).bit_length() + 8) // 8  # room for the sign
    return (der(0x04, name_hash) + der(0x04, key_hash)
            + der(0x02, serial.to_bytes(size, "big", signed=True)))


@dataclass(frozen=True, slots=True)
class ParsedRequest:
    """A parsed OCSP request: 1..MAX_CERT_IDS CertIDs and the nonce value if one was sent."""

    cert_ids: tuple[CertId, ...]
    nonce: bytes | None


def _cert_id(value: asn1_ocsp.CertId) -> CertId:
    algorithm = value["hash_algorithm"]
    name = algorithm["algorithm"].native
    if name not in _DIGEST_SIZES:
        raise MalformedRequest(f"unsupported CertID hash algorithm {name!r}; use SHA-1 or SHA-256")
    if algorithm["parameters"].native is not None:
        raise MalformedRequest("CertID hash algorithm parameters must be absent or NULL")
    name_hash = value["issuer_name_hash"].native
    key_hash = value["issuer_key_hash"].native
    if len(name_hash) != _DIGEST_SIZES[name] or len(key_hash) != _DIGEST_SIZES[name]:
        raise MalformedRequest(f"CertID hashes do not have the size of {name}")
    return CertId(name, name_hash, key_hash, value["serial_number"].native, value.dump())


def _nonce(extensions: asn1_ocsp.TBSRequestExtensions) -> bytes | None:
    nonce: bytes | None = None
    for extension in extensions:
        if extension["extn_id"].native != "nonce":
            continue  # RFC 6960 §4.4: other extensions are optional to support
        if nonce is not None:
            raise MalformedRequest("the nonce extension appears twice")
        # RFC 9654 §2.1: extnValue holds the DER of an OCTET STRING whose contents are the nonce.
        nonce = extension["extn_value"].parsed.native
        if not 1 <= len(nonce) <= MAX_NONCE_BYTES:
            raise MalformedRequest(f"the nonce must be 1 to {MAX_NONCE_BYTES} octets (RFC 9654)")
    return nonce


def _parse_common_case(data: bytes) -> ParsedRequest | None:
    """One CertID, parsed by cryptography's Rust parser in a few microseconds instead of the
    ~110 us asn1crypto takes; None hands anything else (several CertIDs, odd encodings,
    malformed input) to the general parser, which decides and explains."""
    try:
        request = x509_ocsp.load_der_ocsp_request(data)
        name = request.hash_algorithm.name
        name_hash = request.issuer_name_hash
        key_hash = request.issuer_key_hash
        serial = request.serial_number
        nonce_extensions = [e for e in request.extensions if e.oid == x509.OCSPNonce.oid]
    except Exception:  # any refusal here only means "let the general parser decide"
        return None
    if name not in _DIGEST_SIZES or not len(name_hash) == len(key_hash) == _DIGEST_SIZES[name]:
        return None
    nonce = None
    if nonce_extensions:
        value = nonce_extensions[0].value
        nonce = value.nonce if isinstance(value, x509.OCSPNonce) else None
        if len(nonce_extensions) > 1 or nonce is None or not 1 <= len(nonce) <= MAX_NONCE_BYTES:
            return None
    # The response must echo the CertID exactly as sent; find which of the two valid
    # encodings of the hash AlgorithmIdentifier (NULL or absent parameters) the client used.
    rest = _cert_id_fields(name_hash, key_hash, serial)
    for algorithm in (_HASH_ALGORITHMS[name], _HASH_ALGORITHMS_OTHER_FORM[name]):
        encoded = der(0x30, algorithm + rest)
        if encoded in data:
            hash_name: HashName = "sha1" if name == "sha1" else "sha256"
            cert_id = CertId(hash_name, name_hash, key_hash, serial, encoded)
            return ParsedRequest((cert_id,), nonce)
    return None


def parse_request(der: bytes) -> ParsedRequest:
    """Parse a DER OCSPRequest (RFC 6960 §4.1) into its CertIDs and nonce (R-REV-2).

    Signed requests are accepted and their signature ignored (this responder needs no requestor
    authentication). Every failure, whatever the input bytes, raises MalformedRequest and
    nothing else: empty, oversized (> MAX_REQUEST_BYTES), not DER, trailing bytes, a version
    other than v1, a hash other than SHA-1/SHA-256, no CertID or more than MAX_CERT_IDS, a
    duplicated, empty or oversized nonce.
    """
    if not isinstance(der, bytes | bytearray | memoryview):
        raise MalformedRequest("the request body must be bytes")
    data = bytes(der)
    if not data:
        raise MalformedRequest("empty OCSP request")
    if len(data) > MAX_REQUEST_BYTES:
        raise MalformedRequest(f"OCSP request larger than {MAX_REQUEST_BYTES} bytes")
    common = _parse_common_case(data)
    if common is not None:
        return common
    try:
        request = asn1_ocsp.OCSPRequest.load(data, strict=True)
        tbs = request["tbs_request"]
        items = tbs["request_list"]
        count = len(items)
        if not 1 <= count <= MAX_CERT_IDS:
            raise MalformedRequest(f"an OCSP request must hold 1 to {MAX_CERT_IDS} CertIDs")
        # asn1crypto parses lazily; walking `.native` once makes it read every byte, so garbage
        # anywhere (even in the ignored signature) is found here and not later.
        request.native  # noqa: B018
        if tbs["version"].native != "v1":
            raise MalformedRequest("unsupported OCSP request version")
        cert_ids = tuple(_cert_id(item["req_cert"]) for item in items)
        extensions = tbs["request_extensions"]
        nonce = None if extensions.native is None else _nonce(extensions)
    except MalformedRequest:
        raise
    except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError, ... on junk
        raise MalformedRequest("not a DER-encoded OCSP request") from exc
    return ParsedRequest(cert_ids, nonce)


def request_from_get_path(path: str) -> bytes:
    """Decode the request from an OCSP GET URL's last part (RFC 6960 Appendix A.1).

    `path` is the part after the responder's base URL, still percent-encoded or already decoded
    (base64 has no `%`). Spaces become `+` again, for routers that form-decode. Raises
    MalformedRequest on anything that is not base64 of at most MAX_REQUEST_BYTES.
    """
    text = unquote(path.lstrip("/")).replace(" ", "+")
    if not text or len(text) > (MAX_REQUEST_BYTES * 4) // 3 + 4:
        raise MalformedRequest("empty or oversized OCSP GET request")
    text += "=" * (-len(text) % 4)  # some clients drop the padding
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise MalformedRequest("the OCSP GET request is not base64") from exc


# --- issuers ----------------------------------------------------------------------------------


def _sha1(data: bytes) -> bytes:
    # SHA-1 here only names keys and names the way RFC 6960 CertIDs and byKey responder IDs
    # do; collision resistance protects nothing, the response signature does.
    return hashlib.sha1(data, usedforsecurity=False).digest()


def _name_and_key_bytes(certificate: x509.Certificate) -> tuple[bytes, bytes]:
    """The subject Name DER and the subjectPublicKey BIT STRING value of `certificate`."""
    tbs = asn1_x509.Certificate.load(certificate.public_bytes(Encoding.DER))["tbs_certificate"]
    spki = tbs["subject_public_key_info"]
    # The BIT STRING's contents start with the unused-bits octet; RFC 6960 §4.1.1 hashes the
    # value "excluding the tag, length, and number of unused bits".
    return tbs["subject"].dump(), spki["public_key"].contents[1:]


@dataclass(frozen=True, slots=True)
class IssuerIdentity:
    """An issuing CA as CertIDs name it: SHA-1 and SHA-256 hashes of its name and key."""

    sha1_name_hash: bytes
    sha1_key_hash: bytes
    sha256_name_hash: bytes
    sha256_key_hash: bytes
    certificate: x509.Certificate = field(compare=False, repr=False)

    @classmethod
    def from_certificate(cls, certificate: x509.Certificate) -> IssuerIdentity:
        """Compute the identity of `certificate` as an issuer (RFC 6960 §4.1.1)."""
        name, key = _name_and_key_bytes(certificate)
        return cls(
            _sha1(name), _sha1(key),
            hashlib.sha256(name).digest(), hashlib.sha256(key).digest(), certificate,
        )

    def matches(self, cert_id: CertId) -> bool:
        """Whether `cert_id` names a certificate issued by this CA."""
        if cert_id.hash_algorithm == "sha1":
            return (cert_id.issuer_name_hash, cert_id.issuer_key_hash) == (
                self.sha1_name_hash, self.sha1_key_hash)
        if cert_id.hash_algorithm == "sha256":
            return (cert_id.issuer_name_hash, cert_id.issuer_key_hash) == (
                self.sha256_name_hash, self.sha256_key_hash)
        return False

    def cert_id(self, serial_number: int, hash_algorithm: HashName = "sha1") -> CertId:
        """The CertID a client would send for `serial_number` (for pre-produced responses)."""
        if hash_algorithm == "sha1":
            return CertId("sha1", self.sha1_name_hash, self.sha1_key_hash, serial_number)
        return CertId("sha256", self.sha256_name_hash, self.sha256_key_hash, serial_number)


def find_issuer(cert_id: CertId, issuers: Iterable[IssuerIdentity]) -> IssuerIdentity | None:
    """The issuer among `issuers` that `cert_id` names, or None if it is not one of ours."""
    return next((issuer for issuer in issuers if issuer.matches(cert_id)), None)


# --- statuses ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CertStatus:
    """A certificate's status for OCSP (RFC 6960 §2.2).

    `revoked_at` (aware) and `reason` (a name from ca.crl.REASONS) are set exactly when
    `status` is "revoked". Use "unknown" for serials this issuer never issued.
    """

    status: Literal["good", "revoked", "unknown"]
    revoked_at: datetime | None = None
    reason: str | None = None

    def __post_init__(self) -> None:
        if self.status == "revoked":
            if self.revoked_at is None or self.revoked_at.utcoffset() is None:
                raise ValueError("a revoked status needs an aware revoked_at")
            if self.reason not in REASONS:
                raise ValueError(f"reason {self.reason!r} is not one of: {', '.join(REASONS)}")
        elif self.status in ("good", "unknown"):
            if self.revoked_at is not None or self.reason is not None:
                raise ValueError(f"a {self.status} status has no revocation time or reason")
        else:
            raise ValueError(f"status {self.status!r} is not good, revoked or unknown")

    @classmethod
    def good(cls) -> CertStatus:
        """Issued by us, within validity, not revoked."""
        return cls("good")

    @classmethod
    def unknown(cls) -> CertStatus:
        """Not a certificate this responder knows."""
        return cls("unknown")

    @classmethod
    def revoked(cls, revoked_at: datetime, reason: str) -> CertStatus:
        """Revoked at `revoked_at` for `reason` (an RFC 5280 name, see ca.crl.parse_reason)."""
        return cls("revoked", revoked_at, reason)


UNKNOWN = CertStatus.unknown()

# --- responses --------------------------------------------------------------------------------

Answer = tuple[CertId, IssuerIdentity | None, CertStatus]


def _status_only(status: str) -> bytes:
    return asn1_ocsp.OCSPResponse({"response_status": status}).dump()


_MALFORMED = _status_only("malformed_request")
_INTERNAL_ERROR = _status_only("internal_error")
_UNAUTHORIZED = _status_only("unauthorized")
_TRY_LATER = _status_only("try_later")


def malformed_response() -> bytes:
    """OCSPResponse with status malformedRequest (1) and no body (RFC 6960 §4.2.1)."""
    return _MALFORMED


def internal_error_response() -> bytes:
    """OCSPResponse with status internalError (2): the responder failed, not the client."""
    return _INTERNAL_ERROR


def try_later_response() -> bytes:
    """OCSPResponse with status tryLater (3): the responder cannot sign now (R-KEY-1: the
    token is unavailable and no pre-signed answer is still valid)."""
    return _TRY_LATER


def unauthorized_response() -> bytes:
    """OCSPResponse with status unauthorized (6): no CertID names one of our issuers."""
    return _UNAUTHORIZED


def _generalized_time(when: datetime) -> bytes:
    # RFC 5280 §4.1.2.5.2 (which RFC 6960 follows): YYYYMMDDHHMMSSZ, no fractional seconds.
    utc = when.astimezone(UTC)
    text = (f"{utc.year:04d}{utc.month:02d}{utc.day:02d}"
            f"{utc.hour:02d}{utc.minute:02d}{utc.second:02d}Z")
    return der(0x18, text.encode("ascii"))


_GOOD = b"\x80\x00"  # [0] IMPLICIT NULL
_UNKNOWN = b"\x82\x00"  # [2] IMPLICIT NULL
_NONCE_OID = asn1_ocsp.ResponseDataExtensionId("nonce").dump()
_SUCCESSFUL = asn1_ocsp.OCSPResponseStatus("successful").dump()
_BASIC_TYPE = asn1_ocsp.ResponseType("basic_ocsp_response").dump()


def _cert_status(status: CertStatus) -> bytes:
    if status.status == "good":
        return _GOOD
    if status.status == "revoked" and status.revoked_at is not None and status.reason:
        info = _generalized_time(status.revoked_at)
        # Omitted for unspecified, as in the CRL (RFC 5280 §5.3.1).
        if status.reason != "unspecified":
            info += der(0xA0, bytes((0x0A, 0x01, REASON_CODES[status.reason])))
        return der(0xA1, info)  # [1] IMPLICIT RevokedInfo
    return _UNKNOWN


class Responder:
    """A delegated OCSP responder for one issuing CA (RFC 6960 §4.2.2.2), ready to sign.

    Construction checks the delegation (issued directly by `issuer_cert`, EKU id-kp-OCSPSigning,
    key matching `signer`) and precomputes everything that does not change per response: the
    byKey responder ID, the signature algorithm, the `certs` field. Only `signer.sign()` and
    `signer.public_key()` are ever called.
    """

    def __init__(
        self,
        certificate: x509.Certificate,
        signer: ec.EllipticCurvePrivateKey,
        issuer_cert: x509.Certificate,
    ) -> None:
        subject = certificate.subject.rfc4514_string()
        try:
            certificate.verify_directly_issued_by(issuer_cert)
        except (ValueError, TypeError, InvalidSignature) as exc:
            raise ValueError(
                f"OCSP responder {subject} is not issued by {issuer_cert.subject.rfc4514_string()}"
                "; issue the responder certificate from the CA it answers for"
            ) from exc
        try:
            usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        except x509.ExtensionNotFound:
            usages = x509.ExtendedKeyUsage([])
        if ExtendedKeyUsageOID.OCSP_SIGNING not in usages:
            raise ValueError(f"OCSP responder {subject} lacks the OCSPSigning extended key usage")
        public_key = signer.public_key()
        if not isinstance(public_key, ec.EllipticCurvePublicKey):
            raise ValueError("the OCSP responder signer must hold an EC key")
        spki = PublicFormat.SubjectPublicKeyInfo
        if public_key.public_bytes(Encoding.DER, spki) != (
            certificate.public_key().public_bytes(Encoding.DER, spki)
        ):
            raise ValueError(f"the signer's key is not the key of OCSP responder {subject}")

        self.certificate = certificate
        self.issuer = IssuerIdentity.from_certificate(issuer_cert)
        self._signer = signer
        # RFC 5480 §4: SHA-384 goes with P-384; the P-256 responders of this CA use SHA-256.
        hash_algorithm = signature_hash_for(public_key)
        self._algorithm = ec.ECDSA(hash_algorithm)
        _, key_bits = _name_and_key_bytes(certificate)
        self.key_hash = _sha1(key_bits)
        # The constant parts of every response, encoded once.
        self._responder_id = asn1_ocsp.ResponderId(name="by_key", value=self.key_hash).dump()
        self._signature_algorithm = ECDSA_SIGNATURE_ALGORITHMS[hash_algorithm.name]
        self._certs = der(0xA0, der(0x30, certificate.public_bytes(Encoding.DER)))

    def build(
        self,
        answers: Sequence[Answer],
        this_update: datetime,
        next_update: datetime,
        nonce: bytes | None = None,
    ) -> bytes:
        """Sign a successful OCSPResponse with one SingleResponse per answer, in order.

        Each SingleResponse echoes its CertID (hash algorithm included) with the given status,
        thisUpdate and nextUpdate; producedAt is `this_update`; times are whole seconds. An
        answer whose issuer is not this responder's CA is answered `unknown` (see the module
        docstring). The nonce, when given, is echoed in the responseExtensions (RFC 9654).
        The responder certificate is included so clients can check the delegation.
        """
        if not answers:
            raise ValueError("an OCSP response needs at least one answer")
        this_update = require_aware_utc("this_update", this_update)
        next_update = require_aware_utc("next_update", next_update)
        if next_update <= this_update:
            raise ValueError("next_update must be later than this_update")
        if nonce is not None and not 1 <= len(nonce) <= MAX_NONCE_BYTES:
            raise ValueError(f"a nonce has 1 to {MAX_NONCE_BYTES} octets (RFC 9654)")
        this_der = _generalized_time(this_update)
        times = this_der + der(0xA0, _generalized_time(next_update))
        singles = b"".join(
            der(0x30, cert_id.encoded()
                 + (_cert_status(status) if issuer == self.issuer else _UNKNOWN) + times)
            for cert_id, issuer, status in answers
        )
        extensions = b""
        if nonce is not None:
            extension = der(0x30, _NONCE_OID + der(0x04, der(0x04, nonce)))
            extensions = der(0xA1, der(0x30, extension))
        # ResponseData: version v1 is the DEFAULT, so DER leaves it out.
        tbs = der(0x30, self._responder_id + this_der + der(0x30, singles) + extensions)
        signature = self._signer.sign(tbs, self._algorithm)
        basic = der(
            0x30,
            tbs + self._signature_algorithm + der(0x03, b"\x00" + signature) + self._certs,
        )
        response_bytes = der(0x30, _BASIC_TYPE + der(0x04, basic))
        return der(0x30, _SUCCESSFUL + der(0xA0, response_bytes))


def build_response(
    answers: Sequence[Answer],
    responders: Sequence[Responder],
    this_update: datetime,
    next_update: datetime,
    nonce: bytes | None = None,
) -> bytes:
    """Answer an OCSP request (R-REV-2): a signed response, or `unauthorized` if none is ours.

    `answers` holds, per CertID of the request and in its order, the CertID, the issuer it
    names (from `find_issuer`, None if foreign) and its status. The responder is the one whose
    CA issued the first CertID that is ours; when no CertID has a responder here, the result is
    `unauthorized_response()` (see the module docstring for why not a signed `unknown`).
    """
    for _, issuer, _ in answers:
        if issuer is None:
            continue
        responder = next((r for r in responders if r.issuer == issuer), None)
        if responder is not None:
            return responder.build(answers, this_update, next_update, nonce)
    return unauthorized_response()
