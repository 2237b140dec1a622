"""GET /crl/{generation}.crl: the full CRL as DER with HTTP caching headers (R-REV-1)."""

from __future__ import annotations

from aiohttp import web

from ca.api.internal import RUNTIME
from ca.errors import NotFound


async def crl(request: web.Request) -> web.Response:
    """The current CRL, re-signed first if the store has revocations it does not list yet
    (R-FAULT-1); 304 when the client's ETag still matches."""
    runtime = request.app[RUNTIME]
    # The store's own sequence (one indexed read), not the feed's: the officer CLI's
    # revocations reach the feed only at its next poll.
    published = await runtime.crls.covering(request.match_info["generation"],
                                            await runtime.store.last_revocation_seq())
    if published is None:
        raise NotFound(f"no CRL for generation {request.match_info['generation']!r}")
    headers = published.headers(runtime.clock.now())
    if request.headers.get("If-None-Match") == headers["ETag"]:
        return web.Response(status=304, headers=headers)
    return web.Response(body=published.der, content_type="application/pkix-crl",
                        headers=headers)


def add_routes(app: web.Application) -> None:
    """Register the CRL distribution point."""
    app.router.add_get(r"/crl/{generation:g[0-9]+}.crl", crl)
