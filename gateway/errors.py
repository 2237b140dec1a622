"""The gateway's error categories (STYLE 7); the middleware and the CLI translate them once."""

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

GatewayError = ServiceError
TooManyAttempts = Busy


class CertificateRequired(GatewayError):
    """R-GW-3: this page needs a client certificate and the connection presented none."""

    status = 401
    code = "cert_required"


class CertificateRefused(GatewayError):
    """R-GW-1: the presented certificate is not acceptable (usage, validity, revocation)."""

    status = 403
    code = "cert_refused"


class RevocationUnavailable(GatewayError):
    """R-GW-2: no fresh revocation answer and the CA cannot be asked: fail closed."""

    status = 503
    code = "revocation_unavailable"


class SessionRequired(Unauthorized):
    """No session: log in first."""

    code = "session_required"


class SessionExpired(Unauthorized):
    """R-SES-1: 30 minutes without an operation ended the session (§2.8)."""

    code = "session_timeout"


class SessionEnded(Unauthorized):
    """The session was ended by something else than its user: re-login in another window,
    a lock, a helpdesk action or a revocation; `code` is `session_ended_<reason>`."""

    code = "session_ended"


class SessionCertificateMismatch(Forbidden):
    """R-GW-4: the session was created with another certificate."""

    code = "session_cert_mismatch"


class CsrfFailed(Forbidden):
    """R-SES-3: a form arrived without the right CSRF token."""

    code = "csrf_failed"


class RoleForbidden(Forbidden):
    """R-PX-2: the path is for another role (admin-only prefixes)."""

    code = "role_forbidden"


class BackendUnavailable(GatewayError):
    """R-PX-1: the trading backend cannot be reached."""

    status = 502
    code = "backend_unavailable"


class BackendTimeout(GatewayError):
    """R-PX-1: the trading backend did not answer in time."""

    status = 504
    code = "backend_timeout"


class MustChangePassword(Forbidden):
    """R-PW-2: a temporary or expired password leads only to the change page."""

    code = "must_change_password"


__all__ = [
    "BackendTimeout",
    "BackendUnavailable",
    "BadRequest",
    "Busy",
    "CertificateRefused",
    "CertificateRequired",
    "Conflict",
    "CsrfFailed",
    "Forbidden",
    "GatewayError",
    "Locked",
    "MustChangePassword",
    "NotFound",
    "RevocationUnavailable",
    "RoleForbidden",
    "SessionCertificateMismatch",
    "SessionEnded",
    "SessionExpired",
    "SessionRequired",
    "TooManyAttempts",
    "Unauthorized",
]
