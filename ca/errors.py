"""The CA's error categories (STYLE 7): the shared ones, plus what only the CA raises."""

from __future__ import annotations

from common.errors import (  # re-exported: the categories of this package
    BadRequest as BadRequest,
)
from common.errors import (
    Busy as Busy,
)
from common.errors import (
    Conflict as Conflict,
)
from common.errors import (
    Forbidden as Forbidden,
)
from common.errors import (
    Locked as Locked,
)
from common.errors import (
    NotFound as NotFound,
)
from common.errors import (
    ServiceError as ServiceError,
)
from common.errors import (
    Unauthorized as Unauthorized,
)

CaError = ServiceError


class TooLarge(ServiceError):
    """The request body exceeds the configured limit."""

    status = 413
    code = "too_large"
