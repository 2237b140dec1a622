"""Fixtures of the fault tests: a CA initialised with our own code, run as a real process."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ca.config import load_ca_config
from policy.clock import FakeClock
from tests.conftest import init_ca
from tests.support.faults import CaProcess


def make_ca_process(directory: Path, clock: FakeClock, ca_settings: str = "") -> CaProcess:
    """Initialise a CA in `directory` (cheap PKCS#12 rounds) without starting it;
    `ca_settings` are extra lines of its [ca] table."""
    config_path = init_ca(directory, clock)
    config_path.write_text(config_path.read_text().replace("[ca]\n", "[ca]\n" + ca_settings, 1))
    config = load_ca_config(config_path)
    return CaProcess(
        config_path=config_path,
        public_url=f"http://127.0.0.1:{config.public_listen.port}",
        internal_url=f"http://127.0.0.1:{config.internal_listen.port}",
        database=config.database, token=config.api_token_file.read_text().strip(),
        directory=directory,
    )


@pytest.fixture
def ca_process(tmp_path: Path, clock: FakeClock) -> Iterator[CaProcess]:
    """An initialised CA, not started; killed at the end whatever happened."""
    process = make_ca_process(tmp_path, clock)
    yield process
    process.kill9()


@pytest.fixture
def ca_process_factory(tmp_path: Path, clock: FakeClock,
                       ) -> Iterator[Callable[..., CaProcess]]:
    """Like `ca_process`, with extra [ca] settings (e.g. request_deadline)."""
    made: list[CaProcess] = []

    def make(ca_settings: str = "", name: str = "ca") -> CaProcess:
        directory = tmp_path / name
        directory.mkdir()
        made.append(make_ca_process(directory, clock, ca_settings))
        return made[-1]

    yield make
    for process in made:
        process.kill9()


@pytest.fixture
def mounted(tmp_path: Path) -> Iterator[Callable[..., Path]]:
    """mount(2) for real: a small tmpfs, or a read-only bind mount; unmounted afterwards."""
    mounts: list[Path] = []

    def mount(kind: str, source: Path | None = None) -> Path:
        target = tmp_path / f"mnt-{len(mounts)}"
        target.mkdir()
        commands = ([["mount", "-t", "tmpfs", "-o", "size=3m,mode=0700", "tmpfs", str(target)]]
                    if kind == "tmpfs" else
                    [["mount", "--bind", str(source), str(target)],
                     ["mount", "-o", "remount,bind,ro", str(target)]])
        for command in commands:
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                if mounts or target.is_mount():
                    subprocess.run(["umount", str(target)], check=False)
                pytest.skip(f"cannot mount here ({' '.join(command[:3])}: "
                            f"{done.stderr.strip() or 'not permitted'}); needs root")
        mounts.append(target)
        return target

    yield mount
    for target in reversed(mounts):
        subprocess.run(["umount", "-l", str(target)], check=False)
