"""Public, unauthenticated endpoints: issuer certificates and health."""

from __future__ import annotations

from aiohttp import web
from cryptography.hazmat.primitives import serialization

from ca.api.internal import RUNTIME
from ca.errors import NotFound


async def health(request: web.Request) -> web.Response:
    """GET /health: the daemon answers and its store is readable."""
    runtime = request.app[RUNTIME]
    await runtime.store.last_revocation_seq()
    return web.json_response(
        {"status": "ok", "generations": sorted(runtime.issuers.generations)}
    )


async def issuer_certificate(request: web.Request) -> web.Response:
    """GET /certs/{name}.crt: the root or an issuing generation, DER (application/pkix-cert)."""
    issuers = request.app[RUNTIME].issuers
    name = request.match_info["name"]
    if name == "root":
        certificate = issuers.root
    elif name in issuers.generations:
        certificate = issuers.generations[name].certificate
    else:
        raise NotFound(f"no issuer certificate {name!r}")
    return web.Response(
        body=certificate.public_bytes(serialization.Encoding.DER),
        content_type="application/pkix-cert",
        headers={"Cache-Control": "public, max-age=3600"},
    )


async def trust_bundle(request: web.Request) -> web.Response:
    """GET /certs/bundle.pem: every issuing generation and the root, PEM (for verifiers)."""
    issuers = request.app[RUNTIME].issuers
    pem = b"".join(
        g.certificate.public_bytes(serialization.Encoding.PEM)
        for g in issuers.generations.values()
    ) + issuers.root.public_bytes(serialization.Encoding.PEM)
    return web.Response(body=pem, content_type="application/x-pem-file")


def add_routes(app: web.Application) -> None:
    """Register the public endpoints (CRL and OCSP register their own)."""
    app.router.add_get("/health", health)
    app.router.add_get("/certs/bundle.pem", trust_bundle)
    app.router.add_get(r"/certs/{name:[a-z0-9]+}.crt", issuer_certificate)
