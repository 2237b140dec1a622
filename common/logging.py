"""structlog JSON logging, configured once per process for the CA and the gateway (R-OPS-2)."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

_SECRET_KEYS = frozenset(
    {"password", "new_password", "acquisition_password", "passphrase", "token", "private_key",
     "authorization", "cookie", "csrf", "pkcs12"}
)


def _redact_secrets(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Last line of defence: a secret passed to a log call by mistake is never written."""
    for key in list(event):
        if key.lower() in _SECRET_KEYS:
            event[key] = "[redacted]"
    return event


# Secrets inside free text (an exception message quoting request bytes, a third-party log
# line): a header or field named like a secret keeps its name, loses its value.
_SECRET_TEXT = re.compile(
    r"(?i)(\b(?:set-cookie|cookie|authorization|proxy-authorization|x[-_]sekisho[-_][\w-]*"
    r"|[\w-]*password[\w-]*|[\w-]*token[\w-]*|passphrase)[\"']?\s*[:=]\s*)[^\r\n'\"]*")
_OWN_COOKIE = re.compile(r"(?i)(__Host-sekisho-[\w-]+=)[^;\s'\"\\]*")


def scrub_text(text: str) -> str:
    """`text` with the values of secret-named headers/fields and of our cookies replaced."""
    return _OWN_COOKIE.sub(r"\1[redacted]", _SECRET_TEXT.sub(r"\1[redacted]", text))


def _scrub_free_text(
    _logger: Any, _method: str, event: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """The same redaction for the message and a formatted traceback (run after
    format_exc_info)."""
    for key in ("event", "exception"):
        value = event.get(key)
        if isinstance(value, str):
            event[key] = scrub_text(value)
    return event


def configure_logging(level: str = "info", *, process: str) -> None:
    """Send JSON lines to stderr with ISO UTC timestamps, the process name and redaction."""
    numeric = logging.getLevelNamesMapping().get(level.upper())
    if numeric is None:
        raise ValueError(f"logging.level must be debug, info, warning or error, not {level!r}")
    # The standard library's records (aiohttp's server errors and tracebacks, asyncio) are
    # rendered by the same chain as ours: JSON, with the same redaction (issue 10 item 14).
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        _redact_secrets,
        structlog.processors.format_exc_info,
        _scrub_free_text,
    ]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(structlog.stdlib.ProcessorFormatter(
        foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
        processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    structlog.processors.JSONRenderer(ensure_ascii=False)],
    ))
    logging.basicConfig(handlers=[handler], level=numeric, force=True)
    # aiohttp's access log is replaced by our own request log lines.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    structlog.configure(
        processors=[*shared, structlog.processors.JSONRenderer(ensure_ascii=False)],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    structlog.contextvars.bind_contextvars(process=process)
