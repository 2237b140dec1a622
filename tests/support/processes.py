"""The real daemons as separate processes: `make run`'s launcher, or `sekisho-ca serve` alone.

For what only a real process shows: the files it creates (umask), what its signals do, and
which processes it leaves behind. Ports come from `free_port()`; the data folder is a test's
temporary folder, empty at start.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.tlsfiles import tls_client_context
from tests.support.servers import free_port

REPO = Path(__file__).resolve().parents[2]


def demo_config(directory: Path, *, kdf_rounds: int = 2048, extra: str = "",
                both: str = "") -> Path:
    """The shipped config.toml with free ports and cheap PKCS#12 rounds, in `directory`
    (its relative paths, `var/` among them, resolve there); `both` is added to the [ca] and
    the [gateway] tables (replacing the shipped value of each key it sets)."""
    text = (REPO / "config.toml").read_text()
    for line in filter(str.strip, both.splitlines()):
        key = line.partition("=")[0].strip()
        text, found = re.subn(rf"^{re.escape(key)} = .*$", line, text, flags=re.MULTILINE)
        if not found:
            for table in ("[ca]\n", "[gateway]\n"):
                text = text.replace(table, table + line + "\n")
    for port in ("8080", "8081", "8443", "8090"):
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    text = text.replace("pkcs12_kdf_rounds = 600000", f"pkcs12_kdf_rounds = {kdf_rounds}")
    path = directory / "config.toml"
    path.write_text(text + extra)
    return path


def _stat_fields(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return text[text.rindex(")") + 2:].split()


def alive(pid: int) -> bool:
    """Whether `pid` is a process that still runs (a zombie waiting to be reaped is not)."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] != "Z"


def descendants(root: int) -> set[int]:
    """Every living process below `root` (children, their children, ...)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z":
                parents[int(entry.name)] = int(fields[1])
    found: set[int] = set()
    frontier = {root}
    while frontier:
        frontier = {pid for pid, parent in parents.items() if parent in frontier} - found
        found |= frontier
    return found


def group_members(pgid: int) -> set[int]:
    """Every living process of process group `pgid`."""
    members = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and fields[0] != "Z" and int(fields[2]) == pgid:
                members.add(int(entry.name))
    return members


def wait_gone(pids: set[int], seconds: float) -> set[int]:
    """Wait up to `seconds` for every process of `pids` to end; returns those still alive."""
    deadline = time.monotonic() + seconds
    left = {pid for pid in pids if alive(pid)}
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = {pid for pid in left if alive(pid)}
    return left


@dataclass
class Daemons:
    """Processes started from one config: their data folder and the CA's internal API."""

    config_path: Path
    process: subprocess.Popen[bytes]
    output: list[bytes] = field(default_factory=list)

    def text(self) -> str:
        """What the processes printed so far."""
        return b"".join(self.output).decode(errors="replace")

    @property
    def var(self) -> Path:
        """The data folder."""
        return self.config_path.parent / "var"

    def address(self, key: str) -> tuple[str, int]:
        """host, port of a `*listen` key of the config."""
        host, _, port = self._address(key).rpartition(":")
        return host, int(port)

    def _address(self, key: str) -> str:
        for line in self.config_path.read_text().splitlines():
            if line.startswith(f"{key} "):
                return line.split('"')[1]
        raise KeyError(key)

    @property
    def internal_tls_cert(self) -> Path:
        """The internal listener's certificate (`ca.internal_tls_cert`; each node of a
        cluster may have its own)."""
        try:
            return self.config_path.parent / self._address("internal_tls_cert")
        except KeyError:
            return self.var / "ca" / "internal-tls.crt.pem"

    def internal_api(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """Call the CA's internal API over TLS, pinning its certificate, with the token."""
        token = (self.var / "secrets" / "ca-api-token").read_text().strip()
        request = urllib.request.Request(
            f"https://{self._address('internal_listen')}{path}", method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        context = tls_client_context(self.internal_tls_cert)
        try:
            with urllib.request.urlopen(request, timeout=30, context=context) as response:  # noqa: S310
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def acquire(self, user_id: str) -> bytes:
        """Issue an acquisition password and acquire a PKCS#12 (uses the CA's worker pool)."""
        status, body = self.internal_api("POST", f"/v1/users/{user_id}/acquisition-password",
                                         {})
        assert status == 201, body
        status, body = self.internal_api("POST", "/v1/acquire", {
            "user_id": user_id, "acquisition_password": body["acquisition_password"]})
        assert status == 201, body
        return bytes(body["pkcs12"], "ascii")

    def wait_internal_api(self, seconds: float = 60) -> None:
        """Wait until the internal API answers (401 without a token is an answer)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.process.poll() is None, "the process stopped while starting"
            with contextlib.suppress(OSError):
                if (self.var / "secrets" / "ca-api-token").exists():
                    self.internal_api("GET", "/v1/revocations?after=latest")
                    return
            time.sleep(0.1)
        raise AssertionError("the CA's internal API did not answer")


@contextlib.contextmanager
def launched(config_path: Path, *command: str, ready: bytes | None = None,
             seconds: float = 120) -> Iterator[Daemons]:
    """Run `python -m <command...>` from the repository in its own process group (as make
    run from a terminal is); wait for `ready` in its output; kill the group afterwards."""
    process = subprocess.Popen(
        [sys.executable, "-m", *command], cwd=REPO, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, start_new_session=True)
    daemons = Daemons(config_path, process)
    seen = threading.Event()

    def drain() -> None:  # a pipe nobody reads would block the daemons' logging
        assert process.stdout is not None
        for line in process.stdout:
            daemons.output.append(line)
            if ready is not None and ready in line:
                seen.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if ready is not None:
            deadline = time.monotonic() + seconds
            while not seen.wait(0.1):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(daemons.text())
        yield daemons
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)
        reader.join(10)
