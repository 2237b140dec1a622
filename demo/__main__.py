"""`python -m demo --listen 127.0.0.1:8090`: run the demo trading backend until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import sys

from aiohttp import web

from common.config import ConfigError, parse_address
from common.eventloop import until_stopped
from demo.backend import build_app


def parse_listen(value: str) -> tuple[str, int]:
    """`host:port` (or `[v6]:port`) on a loopback address.

    The backend trusts the gateway's identity headers, so it must not be reachable from
    anywhere but this machine.
    """
    try:
        address = parse_address(value, "--listen")
    except ConfigError:
        raise argparse.ArgumentTypeError(f"expected host:port, got {value!r}") from None
    host, port = address.host, address.port
    if host != "localhost":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise argparse.ArgumentTypeError(
                f"{host} is not a loopback address; the backend trusts X-Sekisho-* headers, "
                "so listen on 127.0.0.1 or ::1 and let the gateway proxy to it")
    return host, port


async def serve(host: str, port: int) -> None:
    """Serve the backend on host:port and stop cleanly on SIGINT or SIGTERM."""
    runner = web.AppRunner(build_app(), access_log=None, shutdown_timeout=5.0)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        print(f"demo backend listening on http://{host}:{port}/", file=sys.stderr, flush=True)
        await until_stopped()
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Parse arguments and run the backend; 0 after a clean shutdown."""
    parser = argparse.ArgumentParser(prog="python -m demo", description=__doc__)
    parser.add_argument("--listen", type=parse_listen, default=("127.0.0.1", 8090),
                        metavar="HOST:PORT", help="loopback address (default 127.0.0.1:8090)")
    args = parser.parse_args(argv)
    host, port = args.listen
    asyncio.run(serve(host, port))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
