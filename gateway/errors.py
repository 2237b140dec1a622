"""The gateway's error categories (STYLE 7); the middleware and the CLI translate them once."""

from __future__ import annotations


class GatewayError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(GatewayError):
    """The request cannot be understood (malformed form, bad user ID)."""

    status = 400
    code = "bad_request"


class Unauthorized(GatewayError):
    """No certificate, no session, or credentials that are not accepted."""

    status = 401
    code = "unauthorized"


class Forbidden(GatewayError):
    """The caller is known but the rules refuse the request (role, CSRF)."""

    status = 403
    code = "forbidden"


class NotFound(GatewayError):
    """No such user (helpdesk commands) or page."""

    status = 404
    code = "not_found"


class Conflict(GatewayError):
    """The request contradicts the current state (the user already exists)."""

    status = 409
    code = "conflict"


class Locked(GatewayError):
    """The login password is locked after three wrong tries (R-LOCK-1, §2.7)."""

    status = 423
    code = "locked"
