"""`make run`'s launcher with the real daemons as processes: the files they create and how
Ctrl-C stops them (issue 10 items 4 and "Also")."""

from __future__ import annotations

import os
import signal
import stat
import time
from pathlib import Path

import pytest

from tests.support.processes import Daemons, demo_config, descendants, group_members, launched
from tests.support.processes import wait_gone as wait_processes_gone

READY = b"Sekisho is running"
DEMO_USER = "100001"


@pytest.fixture
def running(tmp_path: Path) -> Daemons:
    """`python -m demo.launch` on an empty data folder, up and with the demo user made."""
    config = demo_config(tmp_path)
    assert not (tmp_path / "var").exists()
    with launched(config, "demo.launch", "--config", str(config), ready=READY) as daemons:
        yield daemons  # type: ignore[misc]


def _modes(var: Path) -> dict[str, int]:
    modes = {".": stat.S_IMODE(var.stat().st_mode)}
    for path in var.rglob("*"):
        modes[str(path.relative_to(var))] = stat.S_IMODE(path.lstat().st_mode)
    return modes


class TestDataFolderModes:
    """Every folder the daemons and CLIs create is 0700, every file 0600 (issue 10 item 4)."""

    def test_every_file_is_owner_only_including_wal_and_shm(self, running: Daemons) -> None:
        """On an empty data folder, after writes to both stores (an acquisition at the CA, the
        demo user at the gateway), every folder is 0700 and every file 0600, the SQLite
        write-ahead logs and shared-memory files of both databases among them."""
        running.acquire(DEMO_USER)
        modes = _modes(running.var)
        for name in ("ca/ca.sqlite3", "gateway/gateway.sqlite3"):
            for suffix in ("", "-wal", "-shm"):
                assert name + suffix in modes, f"{name}{suffix} missing: {sorted(modes)}"
        wrong = {name: f"{mode:04o}" for name, mode in modes.items()
                 if mode != (0o700 if (running.var / name).is_dir() else 0o600)}
        assert wrong == {}

    def test_an_existing_open_data_folder_is_tightened(self, tmp_path: Path) -> None:
        """A data folder and database left 0755/0644 by an older version are tightened at the
        next start, before the daemons write to them."""
        config = demo_config(tmp_path)
        with launched(config, "demo.launch", "--config", str(config), ready=READY):
            pass
        (tmp_path / "var").chmod(0o755)
        for database in ("ca/ca.sqlite3", "gateway/gateway.sqlite3"):
            (tmp_path / "var" / database).chmod(0o644)
        with launched(config, "demo.launch", "--config", str(config), ready=READY) as daemons:
            modes = _modes(daemons.var)
        assert modes["."] == 0o700
        assert modes["ca/ca.sqlite3"] == modes["gateway/gateway.sqlite3"] == 0o600


class TestCtrlC:
    """Ctrl-C stops everything `make run` started, quickly and cleanly (issue 10 "Also")."""

    def test_sigint_to_the_group_stops_every_process_with_status_0(
        self, running: Daemons
    ) -> None:
        """With the PKCS#12 workers spawned and the gateway's 25 s revocation long-poll open,
        SIGINT to the launcher's process group (what a terminal's Ctrl-C does) ends the
        launcher with status 0 within a few seconds and leaves no process behind."""
        running.acquire(DEMO_USER)  # spawns the CA's PKCS#12 workers
        time.sleep(0.5)  # the gateway's long-poll is open again after the acquisition
        started = descendants(running.process.pid)
        assert len(started) >= 5, started  # CA, its workers, demo backend, gateway
        began = time.monotonic()
        os.killpg(running.process.pid, signal.SIGINT)
        status = running.process.wait(15)
        took = time.monotonic() - began
        left = wait_processes_gone(started | group_members(running.process.pid), 2)
        assert (status, left, took < 5) == (0, set(), True), f"{took:.1f} s\n{running.text()}"

    @pytest.mark.parametrize("after", [0.5, 2.0, 4.0])
    def test_sigint_while_starting_also_stops_cleanly(self, tmp_path: Path,
                                                      after: float) -> None:
        """Ctrl-C while the CA is being initialised or the daemons are starting: status 0,
        nothing left behind."""
        config = demo_config(tmp_path)
        with launched(config, "demo.launch", "--config", str(config)) as daemons:
            deadline = time.monotonic() + after
            seen: set[int] = set()
            while time.monotonic() < deadline:
                seen |= descendants(daemons.process.pid)
                time.sleep(0.05)
            os.killpg(daemons.process.pid, signal.SIGINT)
            status = daemons.process.wait(15)
            left = wait_processes_gone(seen | group_members(daemons.process.pid), 3)
            assert (status, left) == (0, set()), daemons.text()
