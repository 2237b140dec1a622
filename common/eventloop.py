"""The event loop the daemons run on."""

from __future__ import annotations

import asyncio
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
