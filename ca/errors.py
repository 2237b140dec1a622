"""The CA's error categories (STYLE 7); the middleware and the CLI translate them once."""

from __future__ import annotations


class CaError(Exception):
    """Base class: `status` is the HTTP status, `code` a stable machine-readable name."""

    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None, **details: object) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.details = details


class BadRequest(CaError):
    """The request cannot be understood (malformed JSON, bad serial, bad CSR, wrong reason)."""

    status = 400
    code = "bad_request"


class Unauthorized(CaError):
    """The caller or the secret it presented is not accepted."""

    status = 401
    code = "unauthorized"


class Forbidden(CaError):
    """The caller is known but the rules refuse the request."""

    status = 403
    code = "forbidden"


class NotFound(CaError):
    """No such certificate, user or generation."""

    status = 404
    code = "not_found"


class Conflict(CaError):
    """The request contradicts the current state (usable certificate exists, already revoked)."""

    status = 409
    code = "conflict"


class Locked(CaError):
    """Too many wrong acquisition passwords; an officer must reissue it (R-CERT-5)."""

    status = 423
    code = "locked"


class Busy(CaError):
    """Other tries of the same secret are still being checked; the caller may retry."""

    status = 429
    code = "attempt_in_progress"


class TooLarge(CaError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "too_large"
