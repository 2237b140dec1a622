"""The internal API the gateway calls (bearer token): acquire, renew, CSR issuance, revoke,
certificate status, acquisition passwords and the revocation feed."""

from __future__ import annotations

import base64
import re
from typing import Any

from aiohttp import web

from ca.api.views import certificate_view, revocation_view
from ca.errors import BadRequest
from ca.issuance import Delivery
from ca.middleware import read_json, required_str
from ca.runtime import CaRuntime

RUNTIME = web.AppKey("runtime", CaRuntime)
MAX_FEED_WAIT_SECONDS = 30.0
MAX_SEQUENCE = 2**63 - 1  # SQLite's INTEGER
# ASCII digits only: int() and float() would also take "+5", " 5", "5_0", Arabic-Indic
# digits, "nan" and "inf".
_FEED_AFTER = re.compile(r"[0-9]{1,19}|latest")
_FEED_WAIT = re.compile(r"[0-9]{1,3}(?:\.[0-9]{1,6})?")


def _actor(body: dict[str, Any]) -> str:
    actor = body.get("actor")
    return f"api:{actor}" if isinstance(actor, str) and actor.isprintable() else "api"


def _delivery(delivery: Delivery) -> web.Response:
    record = delivery.record
    return web.json_response(
        {
            "serial": record.serial,
            "user_id": record.user_id,
            "generation": record.generation,
            "not_before": record.not_before.isoformat(),
            "not_after": record.not_after.isoformat(),
            "pkcs12": base64.b64encode(delivery.pkcs12).decode(),
        },
        status=201,
    )


async def acquire(request: web.Request) -> web.Response:
    """POST /v1/acquire {user_id, acquisition_password[, ticket]} -> PKCS#12 (R-CERT-4,
    R-CERT-5); with a ticket from /v1/acquisition-tickets the password is not checked again."""
    body = await read_json(request)
    ticket = body.get("ticket")
    if ticket is not None and not isinstance(ticket, str):
        raise BadRequest("ticket must be a string", code="bad_field")
    delivery = await request.app[RUNTIME].authority.acquire(
        required_str(body, "user_id", max_length=64),
        required_str(body, "acquisition_password", max_length=256),
        actor=_actor(body), ticket=ticket[:128] if ticket else None,
    )
    return _delivery(delivery)


async def acquisition_ticket(request: web.Request) -> web.Response:
    """POST /v1/acquisition-tickets {user_id, acquisition_password}: the password checked
    (counted, locking), a single-use ticket for /v1/acquire returned (ca.tickets)."""
    body = await read_json(request)
    ticket, expires_at = await request.app[RUNTIME].authority.open_acquisition(
        required_str(body, "user_id", max_length=64),
        required_str(body, "acquisition_password", max_length=256),
        actor=_actor(body),
    )
    return web.json_response({"ticket": ticket, "expires_at": expires_at.isoformat()},
                             status=201)


async def renew(request: web.Request) -> web.Response:
    """POST /v1/renew {serial, password} -> PKCS#12 encrypted with that password (R-CERT-6)."""
    body = await read_json(request)
    delivery = await request.app[RUNTIME].authority.renew(
        required_str(body, "serial", max_length=64),
        required_str(body, "password", max_length=256),
        actor=_actor(body),
    )
    return _delivery(delivery)


async def issue_from_csr(request: web.Request) -> web.Response:
    """POST /v1/certificates {user_id, acquisition_password, csr (PEM)} (R-CERT-8)."""
    body = await read_json(request)
    runtime = request.app[RUNTIME]
    issued = await runtime.authority.issue_from_csr(
        required_str(body, "user_id", max_length=64),
        required_str(body, "csr", max_length=16384).encode(),
        acquisition_password=required_str(body, "acquisition_password", max_length=256),
        actor=_actor(body),
    )
    view = certificate_view(issued.record, runtime.authority.state_of(issued.record))
    view["certificate"] = _pem(issued.record.der or b"")
    view["chain"] = [_pem(der) for der in issued.chain_der]
    return web.json_response(view, status=201)


async def revoke(request: web.Request) -> web.Response:
    """POST /v1/revoke {serial | user_id, reason} (R-CERT-7)."""
    body = await read_json(request)
    authority = request.app[RUNTIME].authority
    reason = required_str(body, "reason", max_length=64)
    if isinstance(body.get("serial"), str):
        revoked = await authority.revoke_serial(body["serial"], reason, actor=_actor(body))
    elif isinstance(body.get("user_id"), str):
        revoked = await authority.revoke_user(body["user_id"], reason, actor=_actor(body))
    else:
        raise BadRequest("give either 'serial' or 'user_id'", code="bad_field")
    return web.json_response({"revoked": [revocation_view(r) for r in revoked]})


async def certificate(request: web.Request) -> web.Response:
    """GET /v1/certificates/{serial}: status of one certificate."""
    authority = request.app[RUNTIME].authority
    record = await authority.certificate(request.match_info["serial"])
    return web.json_response(certificate_view(record, authority.state_of(record)))


async def user_certificates(request: web.Request) -> web.Response:
    """GET /v1/users/{user_id}/certificates: a user's certificates, oldest first."""
    authority = request.app[RUNTIME].authority
    records = await authority.certificates_of(request.match_info["user_id"])
    return web.json_response(
        {"certificates": [certificate_view(r, authority.state_of(r)) for r in records]}
    )


async def acquisition_password(request: web.Request) -> web.Response:
    """POST /v1/users/{user_id}/acquisition-password: issue or reissue; returned once."""
    body = await read_json(request) if request.can_read_body else {}
    password = await request.app[RUNTIME].authority.issue_acquisition_password(
        request.match_info["user_id"], actor=_actor(body)
    )
    return web.json_response({"acquisition_password": password}, status=201)


async def revocations(request: web.Request) -> web.Response:
    """GET /v1/revocations?after=N&wait=S: revocations after N, long-polling up to S seconds.

    `after=latest` answers at once with the current position and no revocations, so a new
    follower does not download every revocation ever made.
    """
    feed = request.app[RUNTIME].feed
    wait = float(_query_param(request, "wait", _FEED_WAIT, "0"))
    if wait > MAX_FEED_WAIT_SECONDS:
        raise BadRequest(f"wait must be at most {MAX_FEED_WAIT_SECONDS:g}", code="bad_query")
    after_text = _query_param(request, "after", _FEED_AFTER, "0")
    if after_text == "latest":
        return web.json_response({"last_seq": feed.last_seq, "revocations": []})
    after = int(after_text)
    if after > MAX_SEQUENCE:
        raise BadRequest("after is beyond any sequence number", code="bad_query")
    records = await feed.wait_after(after, wait)
    last = max([after, *(r.revocation_seq or 0 for r in records)])
    return web.json_response(
        {"last_seq": last, "revocations": [revocation_view(r) for r in records]}
    )


def _query_param(request: web.Request, name: str, pattern: re.Pattern[str], default: str) -> str:
    """A query parameter given at most once and matching `pattern` exactly, else 400."""
    values = request.query.getall(name, [default])
    if len(values) != 1 or pattern.fullmatch(values[0]) is None:
        raise BadRequest("after must be an integer from 0 or 'latest', wait a number of seconds "
                         f"from 0 to {MAX_FEED_WAIT_SECONDS:g}, each given once",
                         code="bad_query")
    return str(values[0])


def _pem(der: bytes) -> str:
    body = base64.encodebytes(der).decode().replace("\n", "")
    lines = [body[i : i + 64] for i in range(0, len(body), 64)]
    return "-----BEGIN CERTIFICATE-----\n" + "\n".join(lines) + "\n-----END CERTIFICATE-----\n"


def add_routes(app: web.Application) -> None:
    """Register the internal API."""
    app.router.add_post("/v1/acquire", acquire)
    app.router.add_post("/v1/acquisition-tickets", acquisition_ticket)
    app.router.add_post("/v1/renew", renew)
    app.router.add_post("/v1/certificates", issue_from_csr)
    app.router.add_get("/v1/certificates/{serial}", certificate)
    app.router.add_post("/v1/revoke", revoke)
    app.router.add_get("/v1/users/{user_id}/certificates", user_certificates)
    app.router.add_post("/v1/users/{user_id}/acquisition-password", acquisition_password)
    app.router.add_get("/v1/revocations", revocations)
