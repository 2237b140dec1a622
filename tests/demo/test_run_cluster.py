"""`make run-cluster` (demo/launch.py --cluster) as a real process tree: PostgreSQL under var/pg,
the CA, the demo backend and the gateway's supervisor with 2 workers; Ctrl-C (SIGINT to the
terminal's process group) stops all of it, PostgreSQL included."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import write_config
from tests.gateway.conftest import gateway_section
from tests.gateway.test_workers import metric, tls_get, wait_for
from tests.support.servers import free_port

pytestmark = pytest.mark.skipif(not list(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl")),
                                reason="PostgreSQL server binaries are not installed")


def _session_processes(sid: int) -> list[int]:
    """Live (non-zombie) processes of session `sid`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _pg_status(folder: Path) -> int:
    return subprocess.run([sys.executable, "-m", "common.pgdev", "--folder", str(folder),
                           "status"], capture_output=True, timeout=60, check=False).returncode


def test_run_cluster_starts_postgres_ca_and_two_workers_and_ctrl_c_stops_all() -> None:
    # Not under pytest's tmp_path (0700, root's): PostgreSQL's own user must reach var/pg.
    directory = Path(tempfile.mkdtemp(prefix="sekisho-run-cluster-"))
    directory.chmod(0o711)
    port, backend = free_port(), free_port()
    config = write_config(directory, public_port=free_port(), internal_port=free_port(),
                          extra=gateway_section(port, backend) + f"""
        [demo]
        listen = "127.0.0.1:{backend}"
    """)
    public = config.read_text().split('public_listen = "')[1].split('"')[0]
    internal = config.read_text().split('internal_listen = "')[1].split('"')[0]
    config.write_text(config.read_text().replace(
        "#CA-URLS#", f'ca_public_url = "http://{public}"\nca_internal_url = "http://{internal}"'))
    log = directory / "launch.log"
    pg = directory / "var" / "pg"
    with log.open("wb") as out:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "demo.launch", "--config", str(config), "--cluster"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=directory)
    try:
        wait_for(lambda: "Ctrl-C stops everything" in log.read_text(errors="replace")
                 or launcher.poll() is not None, 180, "the cluster did not start", log)
        assert launcher.poll() is None, log.read_text(errors="replace")
        text = log.read_text(errors="replace")
        assert "PostgreSQL (var/pg) holds the gateway's store: postgresql://" in text
        assert "2 worker processes" in text
        assert _pg_status(pg) == 0
        # The workers' store is the PostgreSQL database (the demo user was created there).
        cluster_config = config.with_name(f"{config.stem}.cluster.toml")
        assert 'database = "postgresql://' in cluster_config.read_text()
        assert cluster_config.stat().st_mode & 0o777 == 0o600
        shown = subprocess.run(
            [sys.executable, "-m", "gateway", "--config", str(cluster_config), "db", "status"],
            capture_output=True, text=True, timeout=60, check=False, cwd=directory)
        assert "backend        postgresql" in shown.stdout, shown.stdout + shown.stderr
        assert "users          1 " in shown.stdout, shown.stdout
        assert "Demo user (the welcome letter" in text
        server_cert = directory / "var" / "gateway" / "tls" / "server.crt.pem"

        def both_workers_listen() -> bool:
            body = tls_get(port, server_cert, "/metrics").body
            return all(metric(body, "sekisho_gateway_worker_starts_total", worker=slot) == 1
                       for slot in ("1", "2"))

        wait_for(both_workers_listen, 60, "two gateway workers did not start", log)
        started = time.monotonic()
        os.killpg(launcher.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        assert launcher.wait(60) == 0, log.read_text(errors="replace")
        wait_for(lambda: not _session_processes(launcher.pid), 15,
                 f"left running: {_session_processes(launcher.pid)}", log)
        assert time.monotonic() - started < 45
        assert _pg_status(pg) == 3, "PostgreSQL still runs"
        assert "PostgreSQL stopped" in log.read_text(errors="replace")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        subprocess.run([sys.executable, "-m", "common.pgdev", "--folder", str(pg), "stop"],
                       capture_output=True, timeout=60, check=False)
        shutil.rmtree(directory, ignore_errors=True)
