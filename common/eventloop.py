"""The event loop the daemons run on, and how they wait to be stopped."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable


def loop_factory(command: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop for a daemon's `serve` when installed, else asyncio's default loop.

    uvloop's TCP and TLS transports cost about half of asyncio's per connection, which is
    most of what the OCSP responder and the gateway spend (bench/ocsp.py, bench/gateway.py).
    The one-shot CLI commands keep the default loop: they open no listeners.
    """
    if command != "serve":
        return None
    try:
        import uvloop  # a dependency except on Windows, where uvloop does not exist
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


async def until_stopped() -> None:
    """Return once the process gets SIGINT or SIGTERM (a daemon's `serve` then cleans up)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
