"""Shared helpers for the benchmarks: throwaway CA folders, a real daemon subprocess, stats."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# The tests' port picker, re-exported: it avoids the ephemeral range, see its docstring.
from tests.support.servers import free_port as free_port  # noqa: E402


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The `fraction` percentile (nearest rank) of `samples`."""
    ordered = sorted(samples)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


def summary(samples: Sequence[float]) -> str:
    """p50/p99 in milliseconds."""
    return (f"p50 {percentile(samples, 0.5) * 1000:.1f} ms, "
            f"p99 {percentile(samples, 0.99) * 1000:.1f} ms, "
            f"mean {statistics.fmean(samples) * 1000:.1f} ms")


def make_ca(kdf_rounds: int = 600_000, extra: str = "", keys: str = "") -> Path:
    """Initialise a CA in a temporary folder; returns its config path. `keys` adds lines to
    [keys] (e.g. the pkcs11 backend's, bench/hsm.py)."""
    directory = Path(tempfile.mkdtemp(prefix="sekisho-bench-"))
    public, internal = free_port(), free_port()
    config = directory / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [logging]
        level = "warning"
        [ca]
        public_url = "http://127.0.0.1:{public}"
        public_listen = "127.0.0.1:{public}"
        internal_listen = "127.0.0.1:{internal}"
        max_body_bytes = 65536
        [keys]
        passphrase_env = "SEKISHO_BENCH_UNSET"
    """) + keys + textwrap.dedent(f"""
        [certificate]
        pkcs12_kdf_rounds = {kdf_rounds}
    """) + textwrap.dedent(extra))
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], check=True, capture_output=True, cwd=ROOT)
    return config


class Daemon:
    """`sekisho-ca serve` as a real subprocess, optionally pinned to CPU cores."""

    def __init__(self, config: Path, cpus: str | None = "0", stderr: Path | None = None) -> None:
        command = [sys.executable, "-m", "ca", "--config", str(config), "serve"]
        if cpus is not None:
            command = pinned(command, cpus)
        # A long run should log to a file: nobody reads the pipe, and a full one stalls the daemon.
        self._log = open(stderr, "ab") if stderr is not None else None  # noqa: SIM115
        self.process = subprocess.Popen(command, cwd=ROOT,
                                        stderr=self._log or subprocess.PIPE)

    def wait_ready(self, url: str, timeout: float = 30) -> None:
        """Poll `url` until it answers."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(url, timeout=1):  # noqa: S310 (loopback only)
                    return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"daemon did not answer at {url}")

    def stop(self) -> None:
        """Stop the daemon by its PID, then any of its worker processes it left behind.

        A daemon that does not stop within 15 s (a revocation long poll still parked in a
        handler holds aiohttp's graceful shutdown) is killed, which orphans its process-pool
        workers; they are stopped by their PIDs, recorded before the signal.
        """
        children = descendants(self.process.pid)
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        stop_processes(children)
        if self._log is not None:
            self._log.close()


def _start_time(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def descendants(pid: int) -> list[tuple[int, str]]:
    """(PID, start time) of every descendant of `pid` (Linux /proc; empty elsewhere)."""
    found: list[tuple[int, str]] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        try:
            tasks = Path(f"/proc/{parent}/task").iterdir()
            children = {int(c) for t in tasks
                        for c in (t / "children").read_text().split()}
        except OSError:
            continue
        for child in children:
            started = _start_time(child)
            if started is not None:
                found.append((child, started))
                pending.append(child)
    return found


def stop_processes(processes: Sequence[tuple[int, str]], grace: float = 5.0) -> None:
    """SIGTERM, then SIGKILL, the (PID, start time) processes still alive (same start time:
    never a reused PID)."""
    import signal

    alive = [(pid, started) for pid, started in processes if _start_time(pid) == started]
    for pid, _ in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [(pid, started) for pid, started in alive if _start_time(pid) == started]
    for pid, _ in alive:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)


def pinned(command: list[str], cpus: str) -> list[str]:
    """`command` run on the given cores (taskset), or as it is where taskset is missing."""
    return ["taskset", "-c", cpus, *command] if shutil.which("taskset") else command


@dataclass
class AbResult:
    """What one ab run measured (times in ms, percentiles from ab's -e CSV)."""

    rps: float
    p50: float
    p99: float
    p100: float
    complete: int
    non2xx: int
    errors: int  # non-2xx + connect/receive/exception failures (length differences are fine)
    keepalive: int
    tls: str  # "-" for plain HTTP


def run_ab(url: str, *, requests: int, concurrency: int, keepalive: bool = False,
           time_limit: int | None = None, socket_timeout: int = 30,
           body_file: Path | None = None, content_type: str | None = None,
           cert: Path | None = None, headers: dict[str, str] | None = None,
           cpus: str = "1") -> AbResult:
    """ApacheBench pinned to the load core, bounded by count (and time, when given); a POST of
    `body_file` when given, else GET; `cert` is a PEM with the client certificate and key."""
    with tempfile.NamedTemporaryFile(suffix=".csv") as csv:
        command = ["ab", "-q"]
        if time_limit is not None:
            command += ["-t", str(time_limit)]  # before -n: -t alone implies -n 50000
        command += ["-n", str(requests), "-c", str(concurrency), "-s", str(socket_timeout),
                    "-e", csv.name]
        if body_file is not None:
            command += ["-p", str(body_file), "-T", content_type or "application/octet-stream"]
        if keepalive:
            command.append("-k")
        if cert is not None:
            command += ["-E", str(cert)]
        for name, value in (headers or {}).items():
            command += ["-H", f"{name}: {value}"]
        done = subprocess.run(pinned([*command, url], cpus), capture_output=True, text=True,
                              timeout=(time_limit or 540) + 60, check=False)
        out = done.stdout
        if done.returncode != 0 or "Requests per second" not in out:
            raise RuntimeError(f"ab failed: {done.stderr.strip()} {out[-500:]}")
        percent = dict(line.split(",") for line in Path(csv.name).read_text().splitlines()[1:])

    def number(label: str) -> float:
        match = re.search(rf"^{label}:\s+([\d.]+)", out, re.MULTILINE)
        return float(match.group(1)) if match else 0.0

    failed = re.search(r"\(Connect: (\d+), Receive: (\d+), Length: \d+, Exceptions: (\d+)\)", out)
    non2xx = int(number("Non-2xx responses"))
    tls = re.search(r"SSL/TLS Protocol:\s+(\S+)", out)
    return AbResult(number("Requests per second"), float(percent["50"]), float(percent["99"]),
                    float(percent["100"]), int(number("Complete requests")), non2xx,
                    non2xx + (sum(map(int, failed.groups())) if failed else 0),
                    int(number("Keep-Alive requests")), tls.group(1) if tls else "-")


def pin_self(cpu: int) -> None:
    """Pin the current process (the load generator) to one core."""
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        os.sched_setaffinity(0, {cpu})


# -- helpers shared by the revocation benchmarks (bench/ocsp.py, bench/crl.py) ----------------

# Revocation reasons that both we and OpenSSL's index.txt understand (OpenSSL 3.0's `ca` has no
# privilegeWithdrawn), so both sides answer from the same data.
SHARED_REASONS = ("keyCompromise", "affiliationChanged", "superseded", "cessationOfOperation",
                  "unspecified")

CERT_ROW_SQL = (
    "INSERT INTO certificates (serial, user_id, generation, kind, state, not_before, not_after,"
    " der, fingerprint_sha256, revoked_at, revocation_reason, revocation_seq, created_at)"
    " VALUES (?, ?, ?, ?, 'issued', ?, ?, ?, ?, ?, ?, ?, ?)"
)


def insert_rows(database: Path, rows: Sequence[tuple[object, ...]]) -> None:
    """Insert certificate rows (12 values each, see CERT_ROW_SQL) in one transaction.

    Benchmark setup only: it bypasses the audit log and must run while no daemon is up.
    """
    with sqlite3.connect(database) as db:
        db.executemany(CERT_ROW_SQL, rows)


def next_revocation_seq(database: Path) -> int:
    """The next unused revocation_seq of a store."""
    with sqlite3.connect(database) as db:
        (seq,) = db.execute("SELECT COALESCE(MAX(revocation_seq), 0) FROM certificates").fetchone()
    return int(seq) + 1


def openssl_time(epoch: int) -> str:
    """OpenSSL index.txt time: YYMMDDHHMMSSZ (UTC)."""
    return time.strftime("%y%m%d%H%M%SZ", time.gmtime(epoch))


def index_line(serial: int, not_after: int, revoked_at: int | None, reason: str | None,
               subject: str) -> str:
    """One index.txt line (OpenSSL CA database): V or R, serial in even-length uppercase hex."""
    text = format(serial, "X")
    text = "0" * (len(text) % 2) + text
    if revoked_at is None:
        return f"V\t{openssl_time(not_after)}\t\t{text}\tunknown\t{subject}\n"
    return (f"R\t{openssl_time(not_after)}\t{openssl_time(revoked_at)},{reason}\t{text}"
            f"\tunknown\t{subject}\n")


def decrypted_key_pem(key_file: Path, passphrase_file: Path) -> bytes:
    """A bench CA's key file as unencrypted PKCS#8 PEM, for the OpenSSL peers (temp files only)."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_pem_private_key(key_file.read_bytes(),
                                             passphrase_file.read_bytes().strip())
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def write_secret(path: Path, data: bytes) -> Path:
    """Write `data` to `path` with mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    return path


def median(values: Sequence[float]) -> float:
    """The median, NaN for no values."""
    return statistics.median(values) if values else float("nan")
