"""`gateway.workers = 2` with real processes (issue 12 "Processes"): a supervising parent and two
`sekisho-gateway serve` workers sharing one port (SO_REUSEPORT), the CA as a real process too.

Sessions are per process until the shared store lands, so nothing here needs a session to
cross workers: the requests are the gateway's own /health, /ready and /metrics.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from bench._support import descendants
from common.config import ConfigError
from gateway.cli import main as gateway_main
from gateway.config import parse_workers
from policy.clock import FakeClock
from tests.faults.conftest import make_ca_process
from tests.gateway.conftest import gateway_section
from tests.support.faults import CaProcess
from tests.support.servers import free_port


@dataclass
class Reply:
    status: int
    body: str


def _alive(pid: int) -> bool:
    """A process that exists and is not a zombie."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def tls_get(port: int, server_cert: Path, path: str, timeout: float = 5) -> Reply:
    """One GET to 127.0.0.1:`port` on a new TLS connection without a client certificate
    (each new connection may reach another worker); status 0 when refused."""
    context = ssl.create_default_context(cafile=str(server_cert))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw, \
                context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
            tls.sendall(f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                        "Connection: close\r\n\r\n".encode())
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    except OSError:
        return Reply(0, "")
    head, _, body = data.partition(b"\r\n\r\n")
    return Reply(int(head.split()[1]), body.decode(errors="replace"))


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one series of a Prometheus text (0 when absent)."""
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and ",".join(sorted(match.group(1).split(","))) == wanted:
            return float(match.group(2))
    return 0.0


def wait_for(condition: object, seconds: float, what: str, log: Path | None = None) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return
        time.sleep(0.05)
    raise AssertionError(what + (f"\n{log.read_text(errors='replace')}" if log else ""))


@dataclass
class Cluster:
    """The supervisor process and its log; the CA it follows."""

    ca: CaProcess
    config: Path
    port: int
    directory: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.directory / "gateway.log"

    def start(self, *extra: str) -> subprocess.Popen[bytes]:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "gateway", "--config", str(self.config), "serve",
                 *extra], stdout=out, stderr=subprocess.STDOUT, cwd=self.directory)
        return self.process

    def workers(self) -> list[int]:
        """PIDs of the supervisor's live worker processes."""
        assert self.process is not None
        return [pid for pid, _ in descendants(self.process.pid) if _alive(pid)]

    def starts(self) -> list[float]:
        """Starts of each worker slot (1, 2) that listened, as /metrics counts them."""
        text = self.get("/metrics").body
        return [metric(text, "sekisho_gateway_worker_starts_total", worker=slot)
                for slot in ("1", "2")]

    def wait_workers(self, count: int, starts: float = 2, seconds: float = 60) -> list[int]:
        """Wait until `count` workers run and, in all, `starts` worker starts listened;
        their PIDs."""
        def up() -> bool:
            assert self.process is not None
            assert self.process.poll() is None, self.log.read_text(errors="replace")
            return len(self.workers()) == count and sum(self.starts()) == starts
        wait_for(up, seconds, f"{count} workers did not come up", self.log)
        return self.workers()

    def get(self, path: str, timeout: float = 5) -> Reply:
        """One GET on a new TLS connection (no client certificate); status 0 when refused."""
        return tls_get(self.port, self.directory / "var" / "gateway" / "tls" / "server.crt.pem",
                       path, timeout)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            children = descendants(self.process.pid)
            self.process.kill()
            self.process.wait(10)
            for pid, _ in children:
                with contextlib.suppress(OSError):
                    os.kill(pid, signal.SIGKILL)


@pytest.fixture
def cluster(tmp_path: Path, clock: FakeClock) -> Iterator[Cluster]:
    """A running CA and a two-worker gateway config (not started)."""
    ca = make_ca_process(tmp_path, clock)
    port = free_port()
    text = ca.config_path.read_text() + gateway_section(
        port, free_port(), 'workers = 2\nready_revocation_max_age = "1s"')
    text = text.replace("#CA-URLS#", f'ca_public_url = "{ca.public_url}"\n'
                        f'ca_internal_url = "{ca.internal_url}"')
    ca.config_path.write_text(text.replace('level = "warning"', 'level = "info"'))
    ca.start()
    running = Cluster(ca, ca.config_path, port, tmp_path)
    try:
        yield running
    finally:
        running.stop()
        ca.kill9()


def test_two_workers_share_the_port_and_metrics_add_up(cluster: Cluster) -> None:
    """Both workers answer on the one port (the per-worker request counters on /metrics,
    read through either worker, show both); /health and /ready answer without a client
    certificate; the metrics folder is private and a previous run's files are gone (this
    unreadable one would make every scrape fail)."""
    folder = cluster.directory / "var" / "gateway" / "metrics"
    folder.mkdir(parents=True, mode=0o755)
    (folder / "counter_1.db").write_bytes(b"left by a killed run")
    cluster.start()
    pids = cluster.wait_workers(2)
    assert len(set(pids)) == 2
    wait_for(lambda: cluster.get("/ready").status == 200, 30, "not ready", cluster.log)
    health = cluster.get("/health")
    assert health.status == 200 and json.loads(health.body) == {"status": "ok"}
    assert json.loads(cluster.get("/ready").body) == {"ready": True}
    for _ in range(60):  # new connections: the kernel spreads them over both accept queues
        assert cluster.get("/health").status == 200
    text = cluster.get("/metrics").body
    first = metric(text, "sekisho_gateway_requests_total", worker="1", status="2xx")
    second = metric(text, "sekisho_gateway_requests_total", worker="2", status="2xx")
    assert first > 0 and second > 0, text
    assert first + second >= 62
    for worker in ("1", "2"):
        assert metric(text, "sekisho_gateway_worker_starts_total", worker=worker) == 1
    assert (folder.stat().st_mode & 0o777) == 0o700
    assert not (folder / "counter_1.db").exists() and list(folder.glob("*.db"))


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(cluster: Cluster) -> None:
    """kill -9 of one worker: once it is gone, every new connection is answered by the other
    (a connection the kernel queued at the dying worker's socket is reset with it, unless
    net.ipv4.tcp_migrate_req = 1, see README); the parent starts a new worker in the dead
    one's slot (logged), and the slot counts two starts."""
    cluster.start()
    before = cluster.wait_workers(2)
    victim = before[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: not _alive(victim), 10, "the killed worker did not die")
    for _ in range(30):
        # While the slot restarts, a connection the kernel handed to the new worker's socket
        # before its loop accepts may be reset; a balancer retries such a connection once.
        assert cluster.get("/health").status == 200 or cluster.get("/health").status == 200
    after = cluster.wait_workers(2, starts=3)
    for _ in range(30):  # both workers up again: every connection is answered
        assert cluster.get("/health").status == 200
    assert victim not in after and len(set(after) & set(before)) == 1
    log = cluster.log.read_text(errors="replace")
    assert "worker_died" in log and "SIGKILL" in log and "restart_in_seconds" in log
    assert sorted(cluster.starts()) == [1, 2]


def test_sigterm_stops_parent_and_workers_within_seconds(cluster: Cluster) -> None:
    """SIGTERM to the parent: it and both workers are gone within a few seconds, status 0."""
    process = cluster.start()
    pids = cluster.wait_workers(2)
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(15) == 0
    wait_for(lambda: not any(_alive(pid) for pid in pids), 5, "workers outlived the parent")
    assert time.monotonic() - started < 10
    assert cluster.get("/health").status == 0


def test_kill_9_of_the_parent_leaves_no_orphans(cluster: Cluster) -> None:
    """The parent killed with -9 cannot stop anyone: its workers die with it (PDEATHSIG)."""
    process = cluster.start()
    pids = cluster.wait_workers(2)
    process.kill()
    process.wait(10)
    wait_for(lambda: not any(_alive(pid) for pid in pids), 10,
              f"workers {pids} outlived the parent killed with -9")


def test_a_startup_error_exits_non_zero_without_a_restart_loop(cluster: Cluster) -> None:
    """The port held by another program: the first worker cannot listen, the supervisor
    stops everything and exits 1 (named in the log), instead of restarting forever."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", cluster.port))
        squatter.listen()
        process = cluster.start()
        assert process.wait(90) == 1
    log = cluster.log.read_text(errors="replace")
    assert "worker_failed_at_startup" in log
    assert log.count("worker_started") <= 2  # the first start of each slot, no more


def test_ready_turns_503_when_the_ca_is_gone_and_health_stays_200(cluster: Cluster) -> None:
    """The CA stops: within ready_revocation_max_age (1 s here) /ready says 503
    revocation_stale on every worker; /health (liveness) stays 200; back when the CA is."""
    cluster.start()
    cluster.wait_workers(2)
    wait_for(lambda: cluster.get("/ready").status == 200, 30, "not ready", cluster.log)
    cluster.ca.kill9()
    wait_for(lambda: all(cluster.get("/ready").status == 503 for _ in range(10)), 20,
              "/ready did not turn 503 on every worker")
    reply = cluster.get("/ready")
    assert json.loads(reply.body)["reason"] == "revocation_stale"

    def both_workers_said_503() -> bool:
        assert cluster.get("/ready").status == 503
        text = cluster.get("/metrics").body
        return all(metric(text, "sekisho_gateway_requests_total", worker=w, status="5xx") > 0
                   for w in ("1", "2"))

    wait_for(both_workers_said_503, 20, "not every worker answered 503")
    assert cluster.get("/health").status == 200
    cluster.ca.start()
    wait_for(lambda: all(cluster.get("/ready").status == 200 for _ in range(10)), 30,
              "/ready did not recover with the CA", cluster.log)


def test_a_second_supervisor_on_the_same_host_is_refused(cluster: Cluster) -> None:
    """Two gateways would silently split one port (SO_REUSEPORT): the second one's parent
    finds the metrics folder locked and exits 1 at once."""
    cluster.start()
    cluster.wait_workers(2)
    second = subprocess.run(
        [sys.executable, "-m", "gateway", "--config", str(cluster.config), "serve"],
        capture_output=True, text=True, timeout=60, cwd=cluster.directory, check=False)
    assert second.returncode == 1
    assert "another gateway supervisor" in second.stderr
    assert len(cluster.workers()) == 2


def test_worker_count_is_a_number_or_auto() -> None:
    assert parse_workers(1) == 1 and parse_workers("3") == 3
    assert parse_workers("auto") == len(os.sched_getaffinity(0))
    for wrong in (0, -1, 257, "two", True, 1.5, ""):
        with pytest.raises(ConfigError, match=r"gateway\.workers"):
            parse_workers(wrong)


def test_serve_refuses_a_bad_workers_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gateway_main(["serve", "--workers", "0"])
    assert exit_info.value.code == 2
    assert "--workers must be a number from 1 to 256" in capsys.readouterr().err


def test_a_slot_that_keeps_failing_at_startup_stops_the_supervisor(cluster: Cluster) -> None:
    """The config is broken while the cluster runs, then a worker dies: its restarts fail at
    start-up with a growing, bounded backoff (logged), and after 5 in a row the supervisor
    stops the other worker too and exits 1 instead of looping."""
    process = cluster.start()
    pids = cluster.wait_workers(2)
    cluster.config.write_text(cluster.config.read_text() + "\n[gateway\n")  # invalid TOML
    os.kill(pids[0], signal.SIGKILL)
    assert process.wait(120) == 1
    wait_for(lambda: not any(_alive(pid) for pid in pids), 10, "a worker outlived the parent")
    log = cluster.log.read_text(errors="replace")
    delays = [float(found) for found in re.findall(r'"restart_in_seconds": ([\d.]+)', log)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 8.0][:len(delays)] and len(delays) >= 4, log
    assert "worker_keeps_failing_at_startup" in log
