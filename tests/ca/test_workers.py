"""The CA's PKCS#12 worker processes live and die with the daemon (issue 11 item 6)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.support.processes import REPO, demo_config, descendants, launched, wait_gone


@pytest.mark.parametrize("moment", ["after an acquisition", "during an acquisition"])
def test_kill_9_of_the_ca_takes_its_workers_and_resource_tracker_with_it(
    tmp_path: Path, moment: str,
) -> None:
    """kill -9 of `sekisho-ca serve`, once its PKCS#12 pool exists (after an acquisition, or
    while a worker is busy with a 600,000-round file), leaves none of its former children
    (workers, multiprocessing's resource tracker) alive."""
    config = demo_config(tmp_path, kdf_rounds=600_000)
    subprocess.run([sys.executable, "-m", "ca", "--config", str(config), "init",
                    "--generate-passphrase"], cwd=REPO, check=True, capture_output=True)
    with launched(config, "ca", "--config", str(config), "serve") as ca:
        ca.wait_internal_api()
        ca.acquire("200001")
        if moment == "during an acquisition":
            def acquire_again() -> None:
                with contextlib.suppress(Exception):  # the CA dies under it
                    ca.acquire("200002")

            threading.Thread(target=acquire_again, daemon=True).start()
            time.sleep(0.3)  # argon2, signing, then the worker's PBKDF2
        children = descendants(ca.process.pid)
        assert children, "the acquisition spawned no worker"
        os.kill(ca.process.pid, signal.SIGKILL)
        ca.process.wait(5)
        assert wait_gone(children, 2) == set(), ca.text()
