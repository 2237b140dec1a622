"""Test-only fault points: stop a real process at a named moment (tests/faults, bench/faults.py).

`SEKISHO_FAULT=<point>[:<action>[:<n>]]` in a daemon's environment makes the `n`-th (default
first) arrival at `reached(<point>)` write the process ID to `$SEKISHO_FAULT_MARKER` (when set)
and then either pause forever (`pause`, the default: the test sends the real SIGKILL) or kill
the process itself with SIGKILL (`kill`). Unset in production: then `reached` returns at once.
It cannot weaken a guarantee: whoever sets a daemon's environment can kill it anyway.

Points: `ca.after_intent` (intent committed, nothing signed), `ca.after_sign` (signed and
PKCS#12 built, not stored), `ca.after_issued` (stored, not answered), `ca.after_attempt_counted`
(acquisition try counted, password not checked), `ca.bulk_between_batches` (officer CLI),
`gateway.after_attempt_counted` (login try counted, password not checked).
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

ENV = "SEKISHO_FAULT"
MARKER_ENV = "SEKISHO_FAULT_MARKER"
_arrivals: dict[str, int] = {}


async def reached(point: str) -> None:
    """Apply the configured fault if `point` is the armed one (see the module docstring)."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, rest = spec.partition(":")
    if name != point:
        return
    action, _, count = rest.partition(":")
    _arrivals[point] = _arrivals.get(point, 0) + 1
    if _arrivals[point] != (int(count) if count else 1):
        return
    marker = os.environ.get(MARKER_ENV)
    if marker:
        Path(marker).write_text(str(os.getpid()))  # noqa: ASYNC240 (tests only, tiny)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    await asyncio.Event().wait()  # paused until the test's SIGKILL
