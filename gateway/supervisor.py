"""`gateway.workers = N > 1`: one supervising parent and N worker processes (README "Processes").

The parent serves nothing itself. It starts N copies of `sekisho-gateway serve` (slots 1..N);
each worker builds the whole gateway and listens on the same address with SO_REUSEPORT, so
the kernel spreads new connections over the workers' own accept queues, and a worker that
dies takes its queue (and only its connections) with it while the others keep serving.

* Ready: a worker writes one byte on an inherited pipe once it listens.
* A dead worker is restarted in the same slot after a backoff that doubles from 0.5 s to at
  most 10 s while it keeps dying young (it lived less than `STABLE_SECONDS` after it became
  ready), logged with its exit status and the delay.
* Start-up failures are not a restart loop: a worker that dies before it was ever ready while
  no worker of this run has been ready yet (a config error, a port taken, the store missing)
  stops everything with status 1 at once; after the cluster was up, a slot whose worker dies
  before ready `MAX_STARTUP_FAILURES` times in a row does the same.
* SIGTERM / SIGINT: every worker gets SIGTERM (each closes its listener and finishes its
  requests, aiohttp's 5 s shutdown timeout), whatever is left after `STOP_SECONDS` gets
  SIGKILL; status 0.
* No orphans: each worker is started with PR_SET_PDEATHSIG = SIGTERM (Linux), so a parent
  killed with -9 still takes its workers along; the parent is checked after arming (it may
  have died between fork and prctl).
* Metrics: a private 0700 folder (`gateway.metrics_dir`) for prometheus_client's multiprocess
  files, emptied at start and locked (flock) so that two supervisors never share it (two
  gateways on one port would, with SO_REUSEPORT, silently split the traffic).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import os
import select
import signal
import stat
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import structlog

from common.config import ConfigError
from gateway.metrics import MULTIPROC_ENV, WORKER_ENV

_log = structlog.get_logger("gateway.supervisor")

# The worker's side of the contract (gateway/cli.py reads them).
SUPERVISOR_ENV = "SEKISHO_SUPERVISOR_PID"
READY_FD_ENV = "SEKISHO_READY_FD"

FIRST_BACKOFF = 0.5
MAX_BACKOFF = 10.0
STABLE_SECONDS = 30.0
MAX_STARTUP_FAILURES = 5
STOP_SECONDS = 8.0
_POLL_SECONDS = 0.2
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def is_worker() -> bool:
    """Whether this process is a worker started by a running supervisor (its parent)."""
    return os.environ.get(SUPERVISOR_ENV) == str(os.getppid())


def notify_ready() -> None:
    """Tell the supervisor this worker listens (no-op when the gateway runs alone)."""
    fd = os.environ.pop(READY_FD_ENV, None)
    if fd is None or not is_worker():
        return
    with contextlib.suppress(OSError):
        os.write(int(fd), b"1")
        os.close(int(fd))


def _die_with_parent(parent: int) -> Callable[[], None]:
    """The child's pre-exec step: SIGTERM when the parent goes (kept across exec)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):  # not Linux: the parent's SIGTERM handler still works
        prctl = None

    def arm() -> None:
        if prctl is not None:
            prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the parent died before the signal was armed
            os._exit(1)

    return arm


def prepare_metrics_dir(folder: Path) -> int:
    """Create or take over the private metrics folder; return the held lock's descriptor."""
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    info = folder.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise ConfigError(f"gateway.metrics_dir {folder} must be a folder owned by this user")
    folder.chmod(0o700)
    lock = os.open(folder / "supervisor.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(lock)
        raise ConfigError(f"another gateway supervisor runs with gateway.metrics_dir {folder}; "
                          "stop it first (two would share the listen port)") from None
    for leftover in folder.glob("*.db"):  # a previous run's workers' values
        leftover.unlink()
    return lock


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    ready_fd: int | None = None
    ready_at: float | None = None
    start_at: float = 0.0  # when to (re)start; 0 = now
    young_deaths: int = 0  # consecutive deaths soon after ready, or before it
    startup_failures: int = 0  # consecutive deaths before ready


def _describe(returncode: int) -> str:
    if returncode < 0:
        return signal.Signals(-returncode).name
    return f"exit status {returncode}"


class Supervisor:
    """Runs `command` in N worker slots until SIGTERM/SIGINT (see the module docstring)."""

    def __init__(self, command: Sequence[str], workers: int, metrics_dir: Path) -> None:
        self._command = list(command)
        self._slots = [_Slot(number) for number in range(1, workers + 1)]
        self._metrics_dir = metrics_dir
        self._stopping = False
        self._ever_ready = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True

    def _spawn(self, slot: _Slot) -> None:
        read_fd, write_fd = os.pipe()
        env = {**os.environ, SUPERVISOR_ENV: str(os.getpid()), WORKER_ENV: str(slot.number),
               READY_FD_ENV: str(write_fd), MULTIPROC_ENV: str(self._metrics_dir)}
        try:
            slot.process = subprocess.Popen(
                self._command, env=env, pass_fds=(write_fd,),
                preexec_fn=_die_with_parent(os.getpid()))  # one thread: safe here
        except OSError:
            os.close(read_fd)
            raise
        finally:
            os.close(write_fd)
        slot.ready_fd, slot.ready_at = read_fd, None
        _log.info("worker_started", worker=slot.number, pid=slot.process.pid)

    def _close_ready(self, slot: _Slot) -> None:
        if slot.ready_fd is not None:
            os.close(slot.ready_fd)
            slot.ready_fd = None

    def _check_ready(self) -> None:
        waiting = {s.ready_fd: s for s in self._slots if s.ready_fd is not None}
        if not waiting:
            time.sleep(_POLL_SECONDS)
            return
        try:
            readable, _, _ = select.select(list(waiting), [], [], _POLL_SECONDS)
        except InterruptedError:
            return
        for fd in readable:
            slot = waiting[fd]
            if os.read(fd, 1) and slot.process is not None:
                slot.ready_at = time.monotonic()
                slot.startup_failures = 0
                self._ever_ready = True
                _log.info("worker_ready", worker=slot.number, pid=slot.process.pid)
            self._close_ready(slot)  # ready, or EOF: the worker died (poll() will tell)

    def _reap(self, slot: _Slot) -> int | None:
        """Handle a dead worker; returns an exit status when the supervisor must give up."""
        process = slot.process
        assert process is not None
        returncode = process.returncode
        self._close_ready(slot)
        slot.process = None
        with contextlib.suppress(Exception):
            from prometheus_client import multiprocess
            multiprocess.mark_process_dead(process.pid, str(self._metrics_dir))
        if self._stopping:
            return None
        now = time.monotonic()
        if slot.ready_at is None:
            slot.startup_failures += 1
            if not self._ever_ready:
                _log.error("worker_failed_at_startup", worker=slot.number, pid=process.pid,
                           status=_describe(returncode),
                           hint="see the worker's message above; not restarting")
                return 1
            if slot.startup_failures >= MAX_STARTUP_FAILURES:
                _log.error("worker_keeps_failing_at_startup", worker=slot.number,
                           failures=slot.startup_failures, status=_describe(returncode))
                return 1
        if slot.ready_at is None or now - slot.ready_at < STABLE_SECONDS:
            slot.young_deaths += 1
        else:
            slot.young_deaths = 0
        delay = min(FIRST_BACKOFF * 2 ** max(slot.young_deaths - 1, 0), MAX_BACKOFF) \
            if slot.young_deaths else 0.0
        slot.start_at = now + delay
        _log.warning("worker_died", worker=slot.number, pid=process.pid,
                     status=_describe(returncode), restart_in_seconds=delay)
        return None

    def _stop_all(self) -> None:
        live = [s.process for s in self._slots if s.process is not None]
        for process in live:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_SECONDS
        for process in live:
            try:
                process.wait(max(deadline - time.monotonic(), 0.01))
            except subprocess.TimeoutExpired:
                _log.warning("worker_killed", pid=process.pid, after_seconds=STOP_SECONDS)
                process.kill()
                process.wait()
        for slot in self._slots:
            self._close_ready(slot)
            slot.process = None

    def run(self) -> int:
        """Supervise until stopped; 0 after a requested stop, 1 after start-up failures."""
        previous = {sig: signal.signal(sig, self._on_signal)
                    for sig in (signal.SIGTERM, signal.SIGINT)}
        status = 0
        try:
            while not self._stopping:
                now = time.monotonic()
                for slot in self._slots:
                    if slot.process is None and slot.start_at <= now and not self._stopping:
                        self._spawn(slot)
                self._check_ready()
                for slot in self._slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        outcome = self._reap(slot)
                        if outcome is not None:
                            status = outcome
                            self._stopping = True
        finally:
            self._stopping = True
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        _log.info("supervisor_stopped", status=status)
        return status
