"""`sekisho-ca serve`: both listeners in one process until SIGINT/SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import ssl
from datetime import timedelta

import structlog
from aiohttp import web

from ca.app import build_internal_app, build_public_app
from ca.config import CaConfig
from ca.public_listener import PublicListener
from ca.runtime import CaRuntime, read_api_token
from common.eventloop import until_stopped
from common.files import private_directory
from common.listener import ConnectionGuard, TlsListener, ensure_descriptors, serve_guarded
from common.tlsfiles import ensure_server_certificate, tls_server_context
from policy.clock import Clock

_log = structlog.get_logger("ca.daemon")


# The gateway pins the internal certificate itself (no CA vouches for it), so it lives as long
# as an issuing generation rather than a browser-facing certificate; replacing it means the
# gateway must be restarted to pin the new one.
INTERNAL_TLS_VALIDITY = timedelta(days=3650)


def internal_tls_context(config: CaConfig, clock: Clock) -> ssl.SSLContext | None:
    """The internal listener's TLS context when `ca.internal_tls` is on (else None); a
    self-signed certificate is made on first use for the gateway to pin."""
    if not config.internal_tls:
        return None
    internal = config.internal_listen
    if ensure_server_certificate(config.internal_tls_cert, config.internal_tls_key,
                                 f"https://{internal.host}:{internal.port}", clock,
                                 organization=f"{config.organization} CA internal API",
                                 validity=INTERNAL_TLS_VALIDITY):
        _log.info("internal_tls_certificate_created", path=str(config.internal_tls_cert))
    return tls_server_context(config.internal_tls_cert, config.internal_tls_key)


async def serve(config: CaConfig, clock: Clock) -> None:
    """Open the runtime, start both listeners, and stop cleanly on a signal."""
    private_directory(config.data_dir)  # a folder made 0755 by an older version is tightened
    ensure_descriptors(2 * config.connection_limits.max_connections)  # two listeners
    token = read_api_token(config.api_token_file)
    runtime = await CaRuntime.open(config, clock)
    public, internal = config.public_listen, config.internal_listen
    runners: list[PublicListener | web.AppRunner] = []
    internal_server: asyncio.Server | TlsListener | None = None
    internal_guard: ConnectionGuard | None = None
    try:
        runners.append(await PublicListener.start(build_public_app(runtime),
                                                  public.host, public.port,
                                                  limits=config.connection_limits))
        # Long-polls are answered at shutdown (ca.app); anything else in flight gets 5 s.
        internal_runner = web.AppRunner(build_internal_app(runtime, token), access_log=None,
                                        shutdown_timeout=5)
        runners.append(internal_runner)
        await internal_runner.setup()
        assert internal_runner.server is not None
        internal_server, internal_guard = await serve_guarded(
            internal_runner.server, internal.host, internal.port, config.connection_limits,
            name="ca-internal", ssl_context=internal_tls_context(config, clock))
        # Start-up objects (aiohttp, cryptography, argon2, zxcvbn's dictionaries) live for the
        # whole run: moving them out of the collector's generations cuts full collections
        # under load from ~30 ms to ~2 ms, which showed as OCSP p99 (bench/ocsp.py).
        gc.collect()
        gc.freeze()
        _log.info("ca_listening", public=f"{public.host}:{public.port}",
                  internal=f"{internal.host}:{internal.port}")
        await until_stopped()
    finally:
        if internal_server is not None:
            internal_server.close()
        if internal_guard is not None:
            await internal_guard.stop()
        for runner in reversed(runners):
            await runner.cleanup()
        await runtime.close()
        _log.info("ca_stopped")
