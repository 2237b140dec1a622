"""OCSP responder throughput and latency: ours vs `openssl ocsp`, then a malformed-input storm
and a CRL re-sign under load (issue: revocation publication, R-REV-2).

Both responders serve the same 10,000 certificates of one bench CA (10% revoked, varied
reasons) and sign with the same P-256 delegated responder key. Each runs alone, pinned to
core 0; `ab` (C, pinned to core 1) is the load generator, on 127.0.0.1 only.

- connection per request (ab's default) at c = 1, 16, 64: ours vs openssl
- keep-alive (`ab -k`) ours only (openssl answers one request per connection), vs openssl's
  connection-per-request figure
- with a nonce (a fresh signature per request on both sides) at c = 64
- ours only: a storm of malformed input, then a normal `openssl ocsp` query and an ab run
- ours only: latency while revocations re-sign a 100k-entry CRL in a worker thread

    python bench/ocsp.py [--quick] [--requests 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509 import ocsp

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._support import (
    SHARED_REASONS,
    AbResult,
    Daemon,
    decrypted_key_pem,
    free_port,
    index_line,
    insert_rows,
    make_ca,
    median,
    next_revocation_seq,
    pin_self,
    pinned,
    run_ab,
    write_secret,
)
from ca.config import CaConfig, load_ca_config
from ca.issuance import _build_client_certificate
from ca.runtime import open_hierarchy
from keys.hierarchy import IssuerGeneration

OCSP_TYPE = "application/ocsp-request"


# -- the population ------------------------------------------------------------------------


@dataclass
class Population:
    """The certificates both responders serve."""

    issuer: x509.Certificate
    good: list[x509.Certificate] = field(default_factory=list)
    revoked: list[tuple[x509.Certificate, str]] = field(default_factory=list)


def populate(config: CaConfig, generation: IssuerGeneration, count: int, workdir: Path,
             rng: random.Random) -> Population:
    """Sign `count` client certificates with g1, store them as issued, revoke 10%; write the
    matching OpenSSL index.txt."""
    now = datetime.now(UTC).replace(microsecond=0)
    issued_at = now - timedelta(days=60)
    population = Population(generation.certificate)
    rows, lines = [], []
    seq = next_revocation_seq(config.database)
    for index in range(count):
        user = f"u{index:06d}"
        spec = config.profile.client_certificate(user, generation.name, issued_at)
        key = ec.generate_private_key(ec.SECP256R1())
        serial = x509.random_serial_number()
        cert = _build_client_certificate(generation, key.public_key(), serial, spec.common_name,
                                         spec.not_before, spec.not_after, spec.crl_url,
                                         spec.ocsp_url)
        der = cert.public_bytes(serialization.Encoding.DER)
        not_before, not_after = int(spec.not_before.timestamp()), int(spec.not_after.timestamp())
        revoked_at = reason = revocation_seq = None
        if index % 10 == 9:
            reason = SHARED_REASONS[(index // 10) % len(SHARED_REASONS)]
            revoked_at = int(now.timestamp()) - rng.randrange(3600, 50 * 86400)
            revocation_seq, seq = seq, seq + 1
            population.revoked.append((cert, reason))
        else:
            population.good.append(cert)
        rows.append((format(serial, "x"), user, generation.name, "csr", not_before, not_after,
                     der, hashlib.sha256(der).hexdigest(), revoked_at, reason, revocation_seq,
                     not_before))
        lines.append(index_line(serial, not_after, revoked_at, reason, f"/CN={user}"))
    insert_rows(config.database, rows)
    (workdir / "index.txt").write_text("".join(lines))
    return population


def request_der(cert: x509.Certificate, issuer: x509.Certificate, nonce: bool = False) -> bytes:
    """A DER OCSP request for `cert` (SHA-1 CertID, as most clients send)."""
    builder = ocsp.OCSPRequestBuilder().add_certificate(cert, issuer, hashes.SHA1())  # noqa: S303
    if nonce:
        builder = builder.add_extension(x509.OCSPNonce(os.urandom(16)), critical=False)
    return builder.build().public_bytes(serialization.Encoding.DER)


# -- the servers ---------------------------------------------------------------------------


def post(url: str, body: bytes, content_type: str = OCSP_TYPE, timeout: float = 5
         ) -> tuple[int, bytes]:
    """POST `body`; returns (HTTP status, body)."""
    request = urllib.request.Request(url, data=body,  # noqa: S310 (loopback only)
                                     headers={"Content-Type": content_type})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


class OpensslResponder:
    """`openssl ocsp -index ... -port N` pinned to a core; stopped by its PID."""

    def __init__(self, workdir: Path, config: CaConfig, cpus: str = "0") -> None:
        keys = config.keys.directory
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/ocsp"
        key = write_secret(workdir / "responder.key",
                           decrypted_key_pem(keys / "g1-ocsp.key.pem", config.keys.passphrase_file))
        self._log = open(workdir / "openssl-ocsp.log", "ab")  # noqa: SIM115
        # -port listens on all addresses; we only ever send to 127.0.0.1. Never send it a
        # connection without a request: it spins forever (see BENCHMARKS.md).
        self.process = subprocess.Popen(
            pinned(["openssl", "ocsp", "-index", str(workdir / "index.txt"),
                    "-port", str(self.port), "-rsigner", str(keys / "g1-ocsp.crt.pem"),
                    "-rkey", str(key), "-CA", str(keys / "g1.crt.pem"), "-nmin", "60",
                    "-resp_key_id"], cpus),
            stdout=self._log, stderr=self._log)

    def wait_ready(self, probe: bytes, timeout: float = 15) -> None:
        """Poll with a real OCSP request until it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                post(self.url, probe, timeout=2)
                return
            except OSError:
                continue
        raise RuntimeError("openssl ocsp did not answer")

    def stop(self) -> None:
        """Stop it by its PID."""
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._log.close()


# -- ab --------------------------------------------------------------------------------------


def _ab(url: str, body_file: Path, requests: int, concurrency: int, *,
        keepalive: bool = False, time_limit: int = 15) -> AbResult:
    """POSTs of one OCSP request, bounded by count and time."""
    return run_ab(url, requests=requests, concurrency=concurrency, keepalive=keepalive,
                  time_limit=time_limit, socket_timeout=5, body_file=body_file,
                  content_type=OCSP_TYPE)


@dataclass
class Series:
    """Repeated measurements of one (server, mode, concurrency)."""

    runs: list[AbResult] = field(default_factory=list)

    def rps(self) -> float:
        """Median responses/s."""
        return median([r.rps for r in self.runs])

    def cell(self) -> str:
        """rps, p50, p99 (medians over runs) and any errors."""
        if not self.runs:
            return f"{'-':>8} {'-':>6} {'-':>6}"
        errors = sum(r.errors for r in self.runs)
        flag = f" ERR{errors}" if errors else ""
        return (f"{self.rps():8.0f} {median([r.p50 for r in self.runs]):6.2f} "
                f"{median([r.p99 for r in self.runs]):6.2f}{flag}")

    def p99(self) -> float:
        """Median p99 in ms."""
        return median([r.p99 for r in self.runs])


# -- checks ----------------------------------------------------------------------------------


def status_of(der: bytes) -> str:
    """'good' / 'revoked:reason' / 'unknown', or the OCSP response status if unsuccessful."""
    response = ocsp.load_der_ocsp_response(der)
    if response.response_status != ocsp.OCSPResponseStatus.SUCCESSFUL:
        return response.response_status.name
    status = response.certificate_status.name.lower()
    if status == "revoked":
        reason = response.revocation_reason
        status += f":{reason.name if reason else 'unspecified'}"
    return status


def agreement(ours: str, theirs: str, population: Population, rng: random.Random, sample: int
              ) -> tuple[int, int, Counter[str]]:
    """Ask both responders about the same serials; returns (agree, total, statuses)."""
    certs = rng.sample(population.good, sample) + [c for c, _ in
                                                     rng.sample(population.revoked, sample // 4)]
    agree, statuses = 0, Counter[str]()
    for cert in certs:
        body = request_der(cert, population.issuer)
        mine, other = status_of(post(ours, body)[1]), status_of(post(theirs, body)[1])
        agree += mine == other
        statuses[mine.split(":")[0]] += 1
    return agree, len(certs), statuses


# -- the malformed-input storm (ours only) ---------------------------------------------------


def raw_exchange(port: int, head: bytes, body: bytes = b"", *, chunk: int = 65536,
                 timeout: float = 10) -> str:
    """Send raw bytes, read the answer; returns 'HTTP <status> [<ocsp status>]' or 'closed'."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        try:
            sock.sendall(head)
            for start in range(0, len(body), chunk):
                sock.sendall(body[start : start + chunk])
        except OSError:
            pass  # the server may answer and close before reading everything
        data = b""
        try:
            while True:
                part = sock.recv(65536)
                if not part:
                    break
                data += part
                head_end = data.find(b"\r\n\r\n")
                if head_end >= 0:
                    match = re.search(rb"content-length: *(\d+)", data[:head_end], re.I)
                    if match and len(data) >= head_end + 4 + int(match.group(1)):
                        break
        except OSError:
            pass
    if not data.startswith(b"HTTP/"):
        return "closed without answer"
    status = data.split(b" ", 2)[1].decode()
    payload = data[data.find(b"\r\n\r\n") + 4 :]
    if status == "200" and b"application/ocsp-response" in data[: data.find(b"\r\n\r\n")]:
        return f"HTTP 200 {status_of(payload)}"
    return f"HTTP {status}"


def post_raw(port: int, body: bytes, content_type: str = OCSP_TYPE) -> str:
    """A POST /ocsp with an explicit Content-Length."""
    head = (f"POST /ocsp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    return raw_exchange(port, head, body)


def get_raw(port: int, path: str) -> str:
    """A GET with the given path."""
    return raw_exchange(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                              "Connection: close\r\n\r\n".encode())


def storm(port: int, valid: bytes, rng: random.Random, scale: int) -> list[tuple[str, Counter]]:
    """Throw malformed input at our responder; returns (case, outcome counts)."""
    cases: list[tuple[str, Counter[str]]] = []

    def case(name: str, outcomes: list[str]) -> None:
        cases.append((name, Counter(outcomes)))

    case("empty body", [post_raw(port, b"") for _ in range(scale)])
    case("random bytes (1 B-30 KiB)",
         [post_raw(port, rng.randbytes(rng.choice((1, 7, 64, 300, 4096, 30000))))
          for _ in range(4 * scale)])
    case("truncated DER (every prefix)",
         [post_raw(port, valid[:cut]) for cut in range(1, len(valid))])
    case("valid DER + trailing garbage", [post_raw(port, valid + b"\x00garbage")
                                          for _ in range(scale)])
    case("10 MB body", [post_raw(port, rng.randbytes(10 * 1024 * 1024)) for _ in range(3)])
    case("wrong content type", [post_raw(port, valid, "application/json") for _ in range(scale)]
         + [post_raw(port, valid, "text/plain") for _ in range(scale)])
    case("bad base64 GET", [get_raw(port, path) for path in
                            ["/ocsp/@@@@", "/ocsp/!!", "/ocsp/AAAA", "/ocsp/%ZZ", "/ocsp/a",
                             "/ocsp/AAA=AAAA"] * max(1, scale // 6)])
    case("100 KB GET path", [get_raw(port, "/ocsp/" + "A" * 100_000) for _ in range(5)])
    closed = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        sock.close()
        closed.append("connected and closed")
    case("200 clients connect + close, no request", closed)
    return cases


# -- the benchmark ---------------------------------------------------------------------------


def main() -> None:
    """Run everything and print the tables."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer requests, one round")
    parser.add_argument("--certificates", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=20_000, help="per ab run (c >= 16)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating ours/openssl rounds")
    parser.add_argument("--crl-entries", type=int, default=100_000)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.rounds = 3000, 1
    rng = random.Random(20260101)
    pin_self(1)
    print(f"load average before the run: {os.getloadavg()[0]:.2f} (other work skews the figures)")

    config_path = make_ca(kdf_rounds=2048)
    config = load_ca_config(config_path)
    workdir = Path(tempfile.mkdtemp(prefix="sekisho-bench-ocsp-"))
    base = f"http://127.0.0.1:{config.public_listen.port}"
    daemon: Daemon | None = None
    peer: OpensslResponder | None = None
    try:
        started = time.perf_counter()
        generation = open_hierarchy(config).load_generation("g1")
        population = populate(config, generation, args.certificates, workdir, rng)
        print(f"setup: {args.certificates} certificates signed and stored, "
              f"{len(population.revoked)} revoked ({', '.join(SHARED_REASONS)}), index.txt "
              f"written, in {time.perf_counter() - started:.1f} s")
        issuer = population.issuer
        bodies = {}
        for name, nonce in (("plain", False), ("nonce", True)):
            path = workdir / f"{name}.der"
            path.write_bytes(request_der(rng.choice(population.good), issuer, nonce))
            bodies[name] = path
        probe = bodies["plain"].read_bytes()

        plan = [("plain", c, False) for c in (1, 16, 64)]
        plan += [("plain", c, True) for c in (1, 16, 64)]
        plan += [("nonce", 64, False), ("nonce", 64, True)]
        results: dict[tuple[str, str, int, bool], Series] = {}

        def measure(server: str, url: str, body: str, concurrency: int, keepalive: bool) -> None:
            count = max(500, args.requests // 6) if concurrency == 1 else args.requests
            run = _ab(url, bodies[body], count, concurrency, keepalive=keepalive)
            results.setdefault((server, body, concurrency, keepalive), Series()).runs.append(run)

        # Both up (idle) once, to show they answer alike; measured below one at a time.
        daemon = Daemon(config_path, cpus="0", stderr=workdir / "daemon.log")
        daemon.wait_ready(f"{base}/health")
        peer = OpensslResponder(workdir, config)
        peer.wait_ready(probe)
        agree, total, statuses = agreement(f"{base}/ocsp", peer.url, population, rng, 200)
        print(f"agreement check: {agree}/{total} serials answered alike by both responders "
              f"({dict(statuses)})")
        peer.stop()
        peer = None
        hangs = 0
        for round_number in range(args.rounds):
            if daemon is None:
                daemon = Daemon(config_path, cpus="0", stderr=workdir / "daemon.log")
                daemon.wait_ready(f"{base}/health")
            for body, concurrency, keepalive in plan:
                measure("ours", f"{base}/ocsp", body, concurrency, keepalive)
            daemon.stop()
            daemon = None
            peer = OpensslResponder(workdir, config)
            peer.wait_ready(probe)
            for body, concurrency, keepalive in plan:
                if keepalive:  # openssl ocsp answers one request per connection
                    continue
                for _attempt in range(3):
                    try:
                        measure("openssl", peer.url, body, concurrency, False)
                        break
                    except RuntimeError:
                        # It now and then spins forever on a connection that ab closed
                        # without a request (read() = 0 in a loop, see BENCHMARKS.md):
                        # restart it and measure that run again.
                        hangs += 1
                        peer.stop()
                        peer = OpensslResponder(workdir, config)
                        peer.wait_ready(probe)
            peer.stop()
            peer = None
            print(f"round {round_number + 1}/{args.rounds} done "
                  f"({time.perf_counter() - started:.0f} s)")

        print()
        print(f"OCSP responders, {args.certificates} certificates, P-256 responder key, "
              f"server on core 0, ab on core 1; medians of {args.rounds} round(s); ms")
        header = f"{'request':<7} {'ours mode':<10} {'c':>3} | {'ours r/s':>8} {'p50':>6} " \
                 f"{'p99':>6} | {'openssl r/s':>11} {'p50':>6} {'p99':>6} | {'ours/openssl':>12}"
        print(header)
        print("-" * len(header))
        for body, concurrency, keepalive in plan:
            ours = results[("ours", body, concurrency, keepalive)]
            theirs = results[("openssl", body, concurrency, False)]
            mode = "keep-alive" if keepalive else "conn/req"
            print(f"{body:<7} {mode:<10} {concurrency:>3} | {ours.cell()} | "
                  f"{theirs.cell():>25} | {ours.rps() / theirs.rps():12.2f}")
        print("(openssl is always connection-per-request: it answers one request per "
              "connection; 'plain' = no nonce, our cached answer; 'nonce' = signed per request)")
        if hangs:
            print(f"(openssl ocsp hung {hangs} time(s) mid-run, spinning on read() = 0 of a "
                  "connection closed without a request; restarted and that run repeated)")
        cpr64 = results[("ours", "plain", 64, False)]
        ka64 = results[("ours", "plain", 64, True)]
        peer64 = results[("openssl", "plain", 64, False)]
        print()
        for label, value, target, ok in (
            ("c=64 conn/req ours/openssl", cpr64.rps() / peer64.rps(), ">= 1.00",
             cpr64.rps() >= peer64.rps()),
            ("c=64 keep-alive ours/openssl", ka64.rps() / peer64.rps(), ">= 2.00",
             ka64.rps() >= 2 * peer64.rps()),
            ("c=64 p99 ours conn/req (ms)", cpr64.p99(), "< 20", cpr64.p99() < 20),
            ("c=64 p99 ours keep-alive (ms)", ka64.p99(), "< 20", ka64.p99() < 20),
        ):
            print(f"target {label:<32} {value:7.2f}  ({target}): {'met' if ok else 'MISSED'}")

        # -- the storm, ours only ----------------------------------------------------------
        daemon = Daemon(config_path, cpus="0", stderr=workdir / "daemon.log")
        daemon.wait_ready(f"{base}/health")
        print()
        print("malformed-input storm against ours (never against openssl ocsp)")
        storm_started = time.perf_counter()
        cases = storm(config.public_listen.port, probe, rng, 10 if args.quick else 50)
        for name, outcomes in cases:
            text = ", ".join(f"{count} x {outcome}" for outcome, count in outcomes.most_common())
            print(f"  {name:<40} {text}")
        print(f"  storm took {time.perf_counter() - storm_started:.1f} s; daemon "
              f"{'still running' if daemon.process.poll() is None else 'EXITED'}")
        stalled = []
        for _ in range(50):  # half-sent requests held open while we check it still answers
            sock = socket.create_connection(("127.0.0.1", config.public_listen.port))
            sock.sendall(b"POST /ocsp HTTP/1.1\r\nHost: x\r\nContent-Type: application/ocsp-request"
                         b"\r\nContent-Length: 100\r\n\r\n0\x82")
            stalled.append(sock)
        try:
            keys = config.keys.directory
            for cert in (population.good[0], population.revoked[0][0]):
                query = subprocess.run(
                    ["openssl", "ocsp", "-issuer", str(keys / "g1.crt.pem"), "-serial",
                     f"0x{cert.serial_number:X}", "-url", f"{base}/ocsp",
                     "-CAfile", str(keys / "root.crt.pem")],
                    capture_output=True, text=True, timeout=20, check=False)
                lines = (query.stdout + query.stderr).splitlines()
                print(f"  after the storm, 50 stalled clients open: openssl ocsp query -> "
                      f"{' | '.join(line.strip() for line in lines[:3])}")
            after = _ab(f"{base}/ocsp", bodies["plain"], args.requests, 16)
            print(f"  after the storm: ab c=16 conn/req {after.complete} requests, "
                  f"{after.errors} errors, {after.rps:.0f} r/s, p99 {after.p99:.2f} ms")
        finally:
            for sock in stalled:
                sock.close()
        daemon.stop()
        daemon = None

        # -- latency while a big CRL is re-signed (ours only) ---------------------------------
        crl_under_load(config, config_path, workdir, population, bodies["plain"], args, rng)
    finally:
        for server in (daemon, peer):
            if server is not None:
                server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
        shutil.rmtree(config_path.parent, ignore_errors=True)


def crl_under_load(config: CaConfig, config_path: Path, workdir: Path, population: Population,
                   body: Path, args: argparse.Namespace, rng: random.Random) -> None:
    """p99 of OCSP answers while revocations re-sign a CRL of `args.crl_entries` entries."""
    now = int(time.time())
    seq = next_revocation_seq(config.database)
    insert_rows(config.database, [
        (format(rng.getrandbits(159) | 1 << 158, "x"), f"x{i:07d}", "g1", "csr", now - 86400,
         now + 300 * 86400, None, None, now - 3600, SHARED_REASONS[i % 5], seq + i, now - 86400)
        for i in range(args.crl_entries)
    ])
    base = f"http://127.0.0.1:{config.public_listen.port}"
    internal = f"http://127.0.0.1:{config.internal_listen.port}"
    token = config.api_token_file.read_text().strip()
    daemon = Daemon(config_path, cpus="0", stderr=workdir / "daemon.log")
    try:
        daemon.wait_ready(f"{base}/health")
        seconds = 4 if args.quick else 8
        print()
        print(f"ours while revocations re-sign a CRL of {args.crl_entries + 1000}+ entries "
              f"(ab conn/req c=16, {seconds} s each)")
        calm = _ab(f"{base}/ocsp", body, 10_000_000, 16, time_limit=seconds)
        targets = iter(population.good[1:])
        durations: list[float] = []
        visible: list[float] = []  # until our OCSP answers "revoked" for the revoked serial
        stop = time.monotonic() + seconds - 1.5

        def watch(cert: x509.Certificate, began: float) -> None:
            body = request_der(cert, population.issuer)
            while time.perf_counter() - began < 60:
                if status_of(post(f"{base}/ocsp", body)[1]).startswith("revoked"):
                    visible.append(time.perf_counter() - began)
                    return
                time.sleep(0.005)

        def revoke_loop() -> None:
            time.sleep(0.5)
            while time.monotonic() < stop:
                cert = next(targets)
                serial = format(cert.serial_number, "x")
                request = urllib.request.Request(  # noqa: S310 (loopback only)
                    f"{internal}/v1/revoke", method="POST",
                    data=f'{{"serial": "{serial}", "reason": "keyCompromise"}}'.encode(),
                    headers={"Content-Type": "application/json",
                             "Authorization": f"Bearer {token}"})
                began = time.perf_counter()
                watcher = threading.Thread(target=watch, args=(cert, began))
                watcher.start()
                with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
                    response.read()
                durations.append(time.perf_counter() - began)
                watcher.join()

        thread = threading.Thread(target=revoke_loop)
        thread.start()
        busy = _ab(f"{base}/ocsp", body, 10_000_000, 16, time_limit=seconds)
        thread.join()
        with urllib.request.urlopen(f"{base}/crl/g1.crl", timeout=10) as response:  # noqa: S310
            crl = x509.load_der_x509_crl(response.read())
        print(f"  {'':<26} {'r/s':>7} {'p50':>6} {'p99':>6} {'max':>6} {'errors':>6}")
        for label, run in (("no re-signing", calm), ("revocations + re-signing", busy)):
            print(f"  {label:<26} {run.rps:7.0f} {run.p50:6.2f} {run.p99:6.2f} {run.p100:6.0f} "
                  f"{run.errors:6d}")
        covered = sum(durations) / (seconds - 0.5)
        print(f"  {len(durations)} revocations via /v1/revoke, each answered after its CRL "
              f"re-sign: {', '.join(f'{d:.2f}' for d in durations)} s (re-signing ~"
              f"{min(covered, 1):.0%} of the loaded window); final CRL {len(crl)} entries")
        print(f"  our OCSP answered 'revoked' for the just-revoked serial after: "
              f"{', '.join(f'{v:.2f}' for v in visible)} s (it polls every 5 ms)")
    finally:
        daemon.stop()


if __name__ == "__main__":
    main()
