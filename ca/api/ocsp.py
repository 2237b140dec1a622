"""The OCSP responder over HTTP (R-REV-2): POST (application/ocsp-request) and GET with the
base64 request in the path (RFC 6960 Appendix A, RFC 5019 §5 caching headers).

Malformed OCSP input gets a 200 with an OCSP `malformedRequest`; HTTP-level faults (wrong
content type, a body over 64 KiB, a request line over 8 KiB) get a plain 4xx.
"""

from __future__ import annotations

from datetime import datetime
from email.utils import format_datetime

from aiohttp import web

from ca.api.internal import RUNTIME
from ca.ocsp import MAX_REQUEST_BYTES, MalformedRequest, malformed_response, request_from_get_path
from ca.ocsp_service import OcspAnswer

OCSP_RESPONSE = "application/ocsp-response"


def answer_headers(answer: OcspAnswer, now: datetime, *, cacheable: bool) -> dict[str, str]:
    """HTTP caching headers for an answer (RFC 5019 §6): a GET answer without a nonce may be
    cached until its nextUpdate; everything else is not stored."""
    if not cacheable or answer.this_update is None or answer.next_update is None:
        return {"Cache-Control": "no-store"}
    max_age = max(0, int((answer.next_update - now).total_seconds()))
    return {
        "Cache-Control": f"max-age={max_age}, public, no-transform, must-revalidate",
        "Last-Modified": format_datetime(answer.this_update, usegmt=True),
        "Expires": format_datetime(answer.next_update, usegmt=True),
        "ETag": answer.etag,
    }


def _render(request: web.Request, answer: OcspAnswer, *, cacheable: bool) -> web.Response:
    headers = answer_headers(answer, request.app[RUNTIME].clock.now(), cacheable=cacheable)
    return web.Response(body=answer.der, content_type=OCSP_RESPONSE, headers=headers)


async def ocsp_post(request: web.Request) -> web.Response:
    """POST /ocsp with a DER OCSPRequest body."""
    if request.content_type != "application/ocsp-request":
        raise web.HTTPUnsupportedMediaType(text="send the request as application/ocsp-request")
    if (request.content_length or 0) > MAX_REQUEST_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES,
                                            actual_size=request.content_length or 0)
    body = b""
    # The whole body (a chunked one may arrive in pieces), refused as soon as it grows too big.
    async for chunk in request.content.iter_any():
        body += chunk
        if len(body) > MAX_REQUEST_BYTES:
            raise web.HTTPRequestEntityTooLarge(max_size=MAX_REQUEST_BYTES,
                                                actual_size=len(body))
    answer = await request.app[RUNTIME].ocsp.respond(body)
    return _render(request, answer, cacheable=False)


async def ocsp_get(request: web.Request) -> web.Response:
    """GET /ocsp/{base64 request}: cacheable by HTTP caches when the request has no nonce."""
    try:
        der = request_from_get_path(request.match_info["encoded"])
    except MalformedRequest:
        answer = OcspAnswer(malformed_response())  # no-store, as on the fast path
    else:
        answer = await request.app[RUNTIME].ocsp.respond(der)
    return _render(request, answer, cacheable=True)


def add_routes(app: web.Application) -> None:
    """Register the responder at /ocsp (the AIA URL in every certificate)."""
    app.router.add_post("/ocsp", ocsp_post)
    app.router.add_post("/ocsp/", ocsp_post)
    app.router.add_get("/ocsp/{encoded:.*}", ocsp_get)
