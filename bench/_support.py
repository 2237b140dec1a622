"""Shared helpers for the benchmarks: throwaway CA folders, a real daemon subprocess, stats."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    """An unused port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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


def make_ca(kdf_rounds: int = 600_000, extra: str = "") -> Path:
    """Initialise a CA in a temporary folder; returns its config path."""
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
        [certificate]
        pkcs12_kdf_rounds = {kdf_rounds}
    """) + textwrap.dedent(extra))
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], check=True, capture_output=True, cwd=ROOT)
    return config


class Daemon:
    """`sekisho-ca serve` as a real subprocess, optionally pinned to CPU cores."""

    def __init__(self, config: Path, cpus: str | None = "0") -> None:
        command = [sys.executable, "-m", "ca", "--config", str(config), "serve"]
        if cpus is not None and _has_taskset():
            command = ["taskset", "-c", cpus, *command]
        self.process = subprocess.Popen(command, cwd=ROOT, stderr=subprocess.PIPE)

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
        """Stop the daemon by its PID."""
        self.process.terminate()
        try:
            self.process.wait(15)
        except subprocess.TimeoutExpired:
            self.process.kill()


def _has_taskset() -> bool:
    return subprocess.run(["which", "taskset"], capture_output=True, check=False).returncode == 0


def pin_self(cpu: int) -> None:
    """Pin the current process (the load generator) to one core."""
    if hasattr(os, "sched_setaffinity") and os.cpu_count() and os.cpu_count() > cpu:  # type: ignore[operator]
        os.sched_setaffinity(0, {cpu})
