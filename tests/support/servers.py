"""Run the real aiohttp apps in a background event loop so tests can use blocking clients
(openssl, curl, Playwright's sync API) while the servers keep answering."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from aiohttp import web

from common.eventloop import loop_factory

T = TypeVar("T")


_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections and to bind(0)."""
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_port() -> int:
    """An unused TCP port on 127.0.0.1, for URLs that must be known before the server binds.

    It is drawn from below the kernel's ephemeral range: a port from bind(0) is free only
    for the moment, and any outgoing connection (a test's own client, openssl, curl) may be
    given it before the server binds it, which fails that test with "address in use".
    """
    high = min(_ephemeral_low(), 65536) - 1
    low = max(1024, min(high - 4096, 20000))
    for _ in range(200):
        port = random.randint(low, high)
        if port in _handed_out:
            continue
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.add(port)
        return port
    raise RuntimeError(f"no free TCP port found in {low}-{high}")


class LoopThread:
    """An event loop running in a daemon thread: the one the daemons' `serve` runs on."""

    def __init__(self) -> None:
        self.loop = (loop_factory("serve") or asyncio.new_event_loop)()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run a coroutine on the loop and wait for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start_app(
        self, app: web.Application, port: int = 0, ssl_context: ssl.SSLContext | None = None,
        prepare: Callable[[web.AppRunner], None] | None = None,
    ) -> tuple[web.AppRunner, int]:
        """Serve `app` on 127.0.0.1 and return the runner and the bound port; `prepare` runs
        between the runner's set-up and the site's start, as in the daemons."""

        async def start() -> tuple[web.AppRunner, int]:
            runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
            await runner.setup()
            if prepare is not None:
                prepare(runner)
            site = web.TCPSite(runner, "127.0.0.1", port, ssl_context=ssl_context)
            await site.start()
            server = site._server
            assert server is not None
            bound = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
            return runner, int(bound)

        return self.run(start())

    def stop(self) -> None:
        """Stop the loop and join the thread."""
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


def http_get(url: str, headers: dict[str, str] | None = None,
             ) -> tuple[int, dict[str, str], bytes]:
    """A plain urllib GET: status, headers and body, for error statuses too."""
    request = urllib.request.Request(url, headers=headers or {})  # noqa: S310 (loopback)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()
