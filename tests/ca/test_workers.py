"""The CA's PKCS#12 worker processes live and die with the daemon (issue 11 item 6)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO, demo_config, descendants, launched, wait_gone


def test_kill_9_of_the_ca_takes_its_workers_and_resource_tracker_with_it(
    tmp_path: Path,
) -> None:
    """After an acquisition has spawned the PKCS#12 pool, kill -9 of `sekisho-ca serve`
    leaves none of its former children (workers, multiprocessing's resource tracker) alive."""
    config = demo_config(tmp_path)
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], cwd=REPO, check=True, capture_output=True)
    with launched(config, "ca", "--config", str(config), "serve") as ca:
        ca.wait_internal_api()
        ca.acquire("200001")
        children = descendants(ca.process.pid)
        assert children, "the acquisition spawned no worker"
        os.kill(ca.process.pid, signal.SIGKILL)
        ca.process.wait(5)
        assert wait_gone(children, 2) == set(), ca.text()
