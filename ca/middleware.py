"""One place where errors become HTTP answers (STYLE 7): handlers have no `try`."""

from __future__ import annotations

import hashlib
import hmac
import json
import math
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

import structlog
from aiohttp import web

from ca.errors import BadRequest, CaError, Unauthorized
from common.errors import Unavailable
from common.sqlite import store_error
from keys.errors import KeyCustodyError
from policy import errors as policy_errors

_log = structlog.get_logger("ca.http")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_POLICY_STATUS: dict[type[policy_errors.PolicyViolation], int] = {
    policy_errors.InvalidUserId: 400,
    policy_errors.UnsupportedKey: 400,
}


def json_error(status: int, code: str, message: str, **details: Any) -> web.Response:
    """A JSON error body: {"error": code, "message": text, ...details}."""
    body = {"error": code, "message": message, **details}
    return web.json_response(body, status=status, dumps=lambda o: json.dumps(o, default=_jsonable))


def _jsonable(value: object) -> str:
    return value.isoformat() if isinstance(value, datetime) else str(value)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Map CA and policy errors to JSON; an unexpected exception is a 500 with a request ID."""
    try:
        return await handler(request)
    except Unavailable as exc:
        return _unavailable(exc, request)
    except CaError as exc:
        return json_error(exc.status, exc.code, str(exc), **exc.details)
    except policy_errors.PolicyViolation as exc:
        status = _POLICY_STATUS.get(type(exc), 409)
        details = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
        return json_error(status, exc.code, str(exc), **details)
    except KeyCustodyError as exc:
        # R-KEY-1: the token (or key file) cannot sign now; nothing was issued (fail-closed).
        _log.error("signing_unavailable", error=str(exc))
        return json_error(503, "signing_unavailable",
                          "the CA cannot sign right now; try again later")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = "too_large" if exc.status == 413 else exc.reason.lower().replace(" ", "_")
        return json_error(exc.status, code, exc.reason)
    except Exception as exc:
        named = store_error(exc, "CA database")
        if named is not None:
            return _unavailable(named, request)
        request_id = uuid.uuid4().hex
        _log.exception("unhandled_error", request_id=request_id, path=request.path)
        return json_error(500, "internal_error", "internal error", request_id=request_id)


def _unavailable(exc: Unavailable, request: web.Request) -> web.Response:
    """503 + Retry-After + the stable code naming the cause (R-FAULT-4/5), one log line."""
    _log.error("store_unavailable", error=exc.code, message=str(exc), path=request.path)
    response = json_error(503, exc.code, str(exc), retry_after=exc.retry_after)
    response.headers["Retry-After"] = str(exc.retry_after)
    return response


def token_middleware(token: str) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Bearer-token authentication for the internal API (constant-time comparison)."""
    expected = hashlib.sha256(token.encode()).digest()

    @web.middleware
    async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
        header = request.headers.get("Authorization", "")
        presented = header.removeprefix("Bearer ").strip() if header.startswith("Bearer ") else ""
        if not hmac.compare_digest(hashlib.sha256(presented.encode()).digest(), expected):
            _log.warning("internal_api_unauthenticated", path=request.path,
                         peer=request.remote)
            raise Unauthorized("a valid API token is required", code="unauthenticated")
        return await handler(request)

    return authenticate


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON (RFC 8259)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object without repeated names: with duplicates, parsers disagree on which wins."""
    body = dict(pairs)
    if len(body) != len(pairs):
        raise ValueError("a name appears twice in one object")
    return body


async def read_json(request: web.Request) -> dict[str, Any]:
    """The JSON object body of a request, or a 400 that says why not.

    Strict RFC 8259: no NaN/Infinity, no numbers that overflow to infinity, no repeated names,
    no lone surrogates (they cannot be encoded later), and nesting too deep for Python's
    recursive parser is bad JSON, not a 500.
    """
    if request.content_type != "application/json":
        raise BadRequest("send the body as application/json", code="bad_content_type")
    try:
        body = json.loads(await request.read(), parse_constant=_refuse_constant,
                          parse_float=_finite_float, object_pairs_hook=_unique_keys)
        json.dumps(body, ensure_ascii=False).encode()
    except (ValueError, UnicodeError, RecursionError):
        raise BadRequest("the body is not valid JSON", code="bad_json") from None
    if not isinstance(body, dict):
        raise BadRequest("the body must be a JSON object", code="bad_json")
    return body


def required_str(body: dict[str, Any], key: str, *, max_length: int = 4096) -> str:
    """A required non-empty string field."""
    value = body.get(key)
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise BadRequest(f"field {key!r} must be a non-empty string", code="bad_field", field=key)
    return value
