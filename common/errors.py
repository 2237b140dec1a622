"""Error categories both processes share (STYLE 7): each carries its HTTP status and a stable
code; one middleware per process turns them into JSON (CA) or pages (gateway), and the CLIs
into one line and a non-zero exit."""

from __future__ import annotations


class ServiceError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(ServiceError):
    """The request cannot be understood (malformed input, a bad serial, CSR or reason)."""

    status = 400
    code = "bad_request"


class Unauthorized(ServiceError):
    """The caller or the secret it presented is not accepted."""

    status = 401
    code = "unauthorized"


class Forbidden(ServiceError):
    """The caller is known but the rules refuse the request."""

    status = 403
    code = "forbidden"


class NotFound(ServiceError):
    """No such certificate, user or generation."""

    status = 404
    code = "not_found"


class Conflict(ServiceError):
    """The request contradicts the current state (usable certificate exists, already revoked)."""

    status = 409
    code = "conflict"


class Locked(ServiceError):
    """Too many wrong passwords: the helpdesk unlocks, or an officer reissues the password."""

    status = 423
    code = "locked"


class Busy(ServiceError):
    """Other tries of the same secret are being checked right now; the caller may retry."""

    status = 429
    code = "busy"


class Unavailable(ServiceError):
    """The service cannot do this right now (its store is busy, full or read-only); the caller
    may retry after `retry_after` seconds. Never a 500: the cause is named by `code`."""

    status = 503
    code = "unavailable"
    retry_after = 1
