"""Real daemon processes to kill -9 at a chosen moment, and the invariants checked after every
fault (tests/faults, bench/faults.py; R-FAULT-1..5).

`CaProcess` runs `sekisho-ca serve` as a child process with the system clock; a fault point
(`common.faults`) armed through the environment pauses it at a named moment, the test waits
for the marker file, then sends the real SIGKILL. `check_invariants` is what must hold after
any fault, once the daemon is back:

- every PKCS#12 a client received is in the store, issued, with the same certificate;
- no serial twice (delivered or stored);
- `sekisho-ca audit verify` passes;
- the CRL served lists exactly the store's revoked, unexpired serials, and OCSP answers each
  delivered or revoked serial as the store says (never "good" for one that is not issued);
- no user is stuck: no stale intent, no stale counted try, and a fresh acquisition with the
  right password is answered 201, 409 usable_certificate_exists (and the store shows that
  certificate) or 423 locked - never 429 or a 5xx.

A `CaProcess` with a `dsn` is one node of a CA cluster on PostgreSQL (issue 13): `rows` reads
that database, and nodes sharing a folder keep their logs apart by `name`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import re
import signal
import sqlite3
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509 import ocsp

from bench._support import descendants, stop_processes

BIN = Path(sys.executable).parent


def ca_command(config: Path, *args: str) -> list[str]:
    """The argv of `sekisho-ca --config config args...` from this environment."""
    return [str(BIN / "sekisho-ca"), "--config", str(config), *args]


@dataclass
class Answer:
    """An HTTP answer: status, headers, parsed JSON (or raw bytes)."""

    status: int
    headers: dict[str, str]
    body: Any

    @property
    def error(self) -> str | None:
        """The JSON error code, if any."""
        return self.body.get("error") if isinstance(self.body, dict) else None


def http(method: str, url: str, *, body: bytes | None = None, token: str | None = None,
         content_type: str = "application/json", timeout: float = 30,
         context: ssl.SSLContext | None = None) -> Answer:
    """One HTTP request (urllib), errors included; https with `context` (a pinned
    certificate, e.g. the CA's internal listener)."""
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)  # noqa: S310
    try:
        with urllib.request.urlopen(request, timeout=timeout,  # noqa: S310
                                    context=context) as response:
            status, got, raw = response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        status, got, raw = exc.code, dict(exc.headers), exc.read()
    parsed: Any = raw
    if got.get("Content-Type", "").startswith("application/json"):
        parsed = json.loads(raw)
    return Answer(status, got, parsed)


@dataclass
class CaProcess:
    """`sekisho-ca serve` as a child process of the test (the real daemon, system clock)."""

    config_path: Path
    public_url: str
    internal_url: str
    database: Path
    token: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    logs: list[Path] = field(default_factory=list)
    name: str = "ca"  # log and marker file names: cluster nodes share one folder
    dsn: str | None = None  # the PostgreSQL store of a cluster node (then `database` is unused)
    internal_tls: ssl.SSLContext | None = None  # pins the internal listener's certificate

    @property
    def marker(self) -> Path:
        """Where an armed fault point writes the PID when it is reached."""
        return self.directory / ("fault-reached" if self.name == "ca"
                                 else f"{self.name}-fault-reached")

    def start(self, fault: str | None = None, *, wait: bool = True,
              timeout: float = 60) -> CaProcess:
        """Start the daemon (optionally with a fault point armed) and wait for /health."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKISHO_FAULT")}
        if fault is not None:
            env["SEKISHO_FAULT"] = fault
            env["SEKISHO_FAULT_MARKER"] = str(self.marker)
        self.marker.unlink(missing_ok=True)
        log = self.directory / f"{self.name}-{len(self.logs)}.log"
        self.logs.append(log)
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ca_command(self.config_path, "serve"), stdout=out, stderr=subprocess.STDOUT,
                env=env, cwd=self.directory)
        if wait:
            self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 60) -> float:
        """Seconds until /health answered 200; fails if the process exits first."""
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(f"the CA exited ({self.process.returncode}):\n"
                                     + self.log_text())
            with contextlib.suppress(OSError):
                if http("GET", self.public_url + "/health", timeout=2).status == 200:
                    return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError("the CA did not become healthy:\n" + self.log_text())

    def wait_fault(self, timeout: float = 30) -> int:
        """Wait until the armed fault point was reached; returns the daemon's PID."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.marker.exists() and self.marker.read_text():
                return int(self.marker.read_text())
            assert self.process is not None and self.process.poll() is None, self.log_text()
            time.sleep(0.02)
        raise AssertionError("the fault point was not reached:\n" + self.log_text())

    def kill9(self) -> None:
        """The real SIGKILL, and reap the process. Its PKCS#12 pool workers and resource
        tracker outlive it (issue 11 item 6): they are stopped by PID (recorded before the
        signal, with their start times), so repeated kills do not pile up orphans."""
        if self.process is not None and self.process.poll() is None:
            children = descendants(self.process.pid)
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(10)
            stop_processes(children, grace=2.0)

    def stop(self) -> None:
        """SIGTERM (clean stop), SIGKILL if it does not stop in time."""
        if self.process is not None and self.process.poll() is None:
            children = descendants(self.process.pid)
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.kill9()
            stop_processes(children, grace=2.0)

    def log_text(self) -> str:
        """Everything the daemon wrote, all runs."""
        return "".join(p.read_text(errors="replace") for p in self.logs if p.exists())

    def cli(self, *args: str, fault: str | None = None, timeout: float = 120,
            ) -> subprocess.CompletedProcess[str]:
        """Run the officer CLI as its own process."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("SEKISHO_FAULT")}
        if fault is not None:
            env["SEKISHO_FAULT"] = fault
        return subprocess.run(ca_command(self.config_path, *args), capture_output=True,
                              text=True, timeout=timeout, env=env, check=False)

    # -- the internal API -----------------------------------------------------------------

    def api(self, method: str, path: str, payload: Any = None, timeout: float = 30) -> Answer:
        """Call the internal API with the bearer token."""
        body = json.dumps(payload).encode() if payload is not None else None
        return http(method, self.internal_url + path, body=body, token=self.token,
                    timeout=timeout, context=self.internal_tls)

    def acquisition_password(self, user_id: str) -> str:
        """Have the CA issue (or reissue) an acquisition password."""
        answer = self.api("POST", f"/v1/users/{user_id}/acquisition-password", {})
        assert answer.status == 201, answer
        return str(answer.body["acquisition_password"])

    def acquire(self, user_id: str, password: str, timeout: float = 30) -> Answer:
        """POST /v1/acquire."""
        return self.api("POST", "/v1/acquire",
                        {"user_id": user_id, "acquisition_password": password}, timeout)

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Read the store directly (a separate read-only connection, like an auditor);
        `?` placeholders on either backend."""
        if self.dsn is not None:
            return asyncio.run(_pg_rows(self.dsn, sql, params))
        with contextlib.closing(sqlite3.connect(f"file:{self.database}?mode=ro", uri=True,
                                                timeout=30)) as db:
            return list(db.execute(sql, params).fetchall())


async def _pg_rows(dsn: str, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    numbers = itertools.count(1)
    numbered = re.sub(r"\?", lambda _match: f"${next(numbers)}", sql)
    conn = await asyncpg.connect(dsn)
    try:
        async with conn.transaction(readonly=True):
            return [tuple(row) for row in await conn.fetch(numbered, *params)]
    finally:
        await conn.close()


def certificate_of(answer: Answer, password: str) -> x509.Certificate:
    """The certificate inside a delivered PKCS#12 (it opens with `password`)."""
    _, cert, _ = pkcs12.load_key_and_certificates(base64.b64decode(answer.body["pkcs12"]),
                                                  password.encode())
    assert cert is not None
    return cert


def ocsp_status(ca: CaProcess, issuer: x509.Certificate, serial: str) -> str:
    """"good", "revoked" or "unknown" as the CA's OCSP responder answers for `serial`."""
    # issuerKeyHash is the SHA-1 of the subjectPublicKey bits: RFC 5280's SKI method 1.
    key_hash = x509.SubjectKeyIdentifier.from_public_key(issuer.public_key()).digest
    name_hash = hashes.Hash(hashes.SHA1())  # noqa: S303 (RFC 6960's CertID hash)
    name_hash.update(issuer.subject.public_bytes())
    request = ocsp.OCSPRequestBuilder().add_certificate_by_hash(
        name_hash.finalize(), key_hash, int(serial, 16), hashes.SHA1()).build()  # noqa: S303
    answer = http("POST", ca.public_url + "/ocsp",
                  body=request.public_bytes(serialization.Encoding.DER),
                  content_type="application/ocsp-request")
    assert answer.status == 200, answer
    response = ocsp.load_der_ocsp_response(answer.body)
    assert response.response_status == ocsp.OCSPResponseStatus.SUCCESSFUL
    return response.certificate_status.name.lower()


def check_invariants(ca: CaProcess, delivered: dict[str, bytes],
                     users: dict[str, str] | None = None) -> dict[str, int]:
    """Assert every invariant of the module docstring; returns a few counts for reports.

    `delivered` maps each serial a client received to the certificate DER it received;
    `users` maps user IDs to their current acquisition passwords (for the stuck-user probe).
    """
    now = int(datetime.now(UTC).timestamp())
    assert "Traceback" not in ca.log_text(), ca.log_text()[-3000:]
    stored = {serial: (state, der) for serial, state, der in
              ca.rows("SELECT serial, state, der FROM certificates")}
    for serial, der in delivered.items():
        assert serial in stored, f"delivered {serial} is not in the store"
        state, stored_der = stored[serial]
        assert state == "issued" and bytes(stored_der) == der, f"delivered {serial} is {state}"
    assert not ca.rows("SELECT serial FROM certificates GROUP BY serial HAVING COUNT(*) > 1")
    audit = ca.cli("audit", "verify")
    assert audit.returncode == 0, audit.stdout + audit.stderr
    stale = ca.rows("SELECT serial FROM certificates WHERE state = 'intended'"
                    " AND COALESCE(deadline, 0) < ?", (now,))
    assert not stale, f"stale intents left: {stale}"
    pending = ca.rows("SELECT user_id FROM acquisition_secrets WHERE pending_attempts > 0"
                      " AND COALESCE(pending_until, 0) < ?", (now,))
    assert not pending, f"stale counted tries left: {pending}"
    # CRL == store (the endpoint re-signs first when it is behind the store).
    revoked = {serial for (serial,) in ca.rows(
        "SELECT serial FROM certificates WHERE revoked_at IS NOT NULL AND generation = 'g1'"
        " AND not_after >= ?", (now,))}
    crl_answer = http("GET", ca.public_url + "/crl/g1.crl")
    assert crl_answer.status == 200, crl_answer
    crl = x509.load_der_x509_crl(crl_answer.body)
    listed = {format(entry.serial_number, "x") for entry in crl}
    assert listed == revoked, (f"CRL lists {len(listed)}, store has {len(revoked)} revoked:"
                               f" missing {sorted(revoked - listed)[:5]},"
                               f" extra {sorted(listed - revoked)[:5]}")
    issuer = x509.load_pem_x509_certificate(
        (ca.directory / "var" / "keys" / "g1.crt.pem").read_bytes())
    sample = list(delivered)[:20] + sorted(revoked)[:20] + [
        s for s, (state, _) in stored.items() if state != "issued"][:20]
    for serial in sample:
        state, der = stored[serial]
        expected = ("revoked" if serial in revoked
                    else "good" if state == "issued" else "unknown")
        got = ocsp_status(ca, issuer, serial)
        assert got == expected, f"OCSP says {got} for {serial} ({state}), store: {expected}"
        assert not (got == "good" and state != "issued")
    stuck = 0
    for user_id, password in (users or {}).items():
        answer = ca.acquire(user_id, password)
        usable = ca.rows("SELECT serial FROM certificates WHERE user_id = ? AND state = 'issued'"
                         " AND revoked_at IS NULL AND not_after >= ?", (user_id, now))
        fine = (answer.status == 201
                or (answer.status == 409 and answer.error == "usable_certificate_exists"
                    and usable)
                or (answer.status == 423 and answer.error == "acquisition_locked"))
        stuck += not fine
        assert fine, f"user {user_id} is stuck: {answer.status} {answer.body}"
    return {"delivered": len(delivered), "stored": sum(s == "issued" for s, _ in
                                                       stored.values()),
            "abandoned": sum(s == "abandoned" for s, _ in stored.values()), "stuck": stuck}
