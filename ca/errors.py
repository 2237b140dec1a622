"""The CA's error categories (STYLE 7): the shared ones, plus what only the CA raises."""

from __future__ import annotations

from common.errors import (
    BadRequest,
    Busy,
    Conflict,
    Forbidden,
    Locked,
    NotFound,
    ServiceError,
    Unauthorized,
)

CaError = ServiceError


class TooLarge(ServiceError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "too_large"


__all__ = [
    "BadRequest",
    "Busy",
    "CaError",
    "Conflict",
    "Forbidden",
    "Locked",
    "NotFound",
    "TooLarge",
    "Unauthorized",
]
