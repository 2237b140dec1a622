"""`sekisho-ca check-crl`: a Nagios-style freshness check of a published CRL (R-REV-3).

Exit codes follow the monitoring-plugins convention: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
A CRL whose signature does not verify against any configured issuer is CRITICAL (relying
parties will reject it); a CRL that cannot be fetched or parsed is UNKNOWN.
"""

from __future__ import annotations

import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from keys.hierarchy import generation_names

OK, WARNING, CRITICAL, UNKNOWN = 0, 1, 2, 3
_NAMES = {OK: "OK", WARNING: "WARNING", CRITICAL: "CRITICAL", UNKNOWN: "UNKNOWN"}
MAX_CRL_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class CheckResult:
    """The plugin's exit code and its one-line status."""

    code: int
    message: str

    def line(self) -> str:
        """`CRL OK - ...` as monitoring systems expect."""
        return f"CRL {_NAMES[self.code]} - {self.message}"


def load_issuers(keys_directory: Path) -> list[x509.Certificate]:
    """Every issuing generation's certificate from the key folder (no passphrase needed)."""
    return [x509.load_pem_x509_certificate((keys_directory / f"{name}.crt.pem").read_bytes())
            for name in generation_names(keys_directory)]


def issuers_from(source: str) -> list[x509.Certificate]:
    """Issuer certificates from a PEM (one or several) or DER file, or an http(s) URL, so a
    monitoring host can run the check without the CA's config (issue 15 item 16).

    A file copied from the CA is the stronger anchor; a URL is as trustworthy as the path to
    it (the same one the CRL itself comes over).
    """
    data = fetch(source) if source.startswith(("http://", "https://")) else (
        Path(source).read_bytes())
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            return x509.load_pem_x509_certificates(data)
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise ValueError(f"{source} holds no X.509 certificate (PEM or DER)") from None


def _human(delta: timedelta) -> str:
    seconds = int(delta.total_seconds())
    sign = "-" if seconds < 0 else ""
    seconds = abs(seconds)
    return f"{sign}{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def evaluate(der: bytes, issuers: list[x509.Certificate], now: datetime, warn: timedelta,
             crit: timedelta) -> CheckResult:
    """Judge a CRL: signature by one of `issuers`, then time left before nextUpdate."""
    try:
        crl = x509.load_der_x509_crl(der)
    except ValueError:
        return CheckResult(UNKNOWN, "the response is not a DER CRL")
    issuer = next((c for c in issuers if c.subject == crl.issuer), None)
    if issuer is None:
        return CheckResult(CRITICAL, f"CRL issuer {crl.issuer.rfc4514_string()} is not configured")
    public_key = issuer.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not crl.is_signature_valid(
        public_key
    ):
        return CheckResult(CRITICAL, "CRL signature does not verify against its issuer")
    next_update = crl.next_update_utc
    if next_update is None:
        return CheckResult(CRITICAL, "CRL has no nextUpdate")
    left = next_update - now
    try:
        number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    except x509.ExtensionNotFound:
        number = -1
    detail = (f"number {number}, {len(crl)} entries, nextUpdate "
              f"{next_update:%Y-%m-%d %H:%M:%S}Z ({_human(left)} left)"
              f" | time_left={int(left.total_seconds())}s;{int(warn.total_seconds())};"
              f"{int(crit.total_seconds())} entries={len(crl)}")
    if left <= timedelta(0):
        return CheckResult(CRITICAL, "CRL expired: " + detail)
    if left <= crit:
        return CheckResult(CRITICAL, detail)
    if left <= warn:
        return CheckResult(WARNING, detail)
    return CheckResult(OK, detail)


def fetch(url: str, timeout: float = 10) -> bytes:
    """GET the CRL; raises OSError with a readable message on any failure."""
    if not url.startswith(("http://", "https://")):
        raise OSError(f"{url!r} is not an http(s) URL")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (checked)
            data: bytes = response.read(MAX_CRL_BYTES + 1)
    except urllib.error.HTTPError as exc:
        raise OSError(f"HTTP {exc.code} from {url}") from None
    except (urllib.error.URLError, TimeoutError) as exc:
        raise OSError(f"cannot fetch {url}: {getattr(exc, 'reason', exc)}") from None
    if len(data) > MAX_CRL_BYTES:
        raise OSError("the CRL is larger than 64 MiB")
    return data
