"""What aiohttp does on its own before our app sees a request, made safe (issue 10 item 14).

aiohttp answers a request its parser refuses (a bad header byte, an oversized line, a bad
method) itself, and its default page repeats the parser's message, which quotes request
bytes - a Cookie header among them. It also logs the exception, with the same text, through
the standard library's `aiohttp.server` logger. Here both are replaced for the gateway's
listener: the answer is a fixed page with our security headers that quotes nothing, and the
log line is one JSON event (through structlog, with its redaction) naming the exception's
class and the client address, never its message.
"""

from __future__ import annotations

from typing import Any

import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from gateway.proxy import SECURITY_HEADERS

_log = structlog.get_logger("gateway.http")

_PAGE = {400: "400 Bad Request\n", 413: "413 Request Entity Too Large\n",
         431: "431 Request Header Fields Too Large\n", 500: "500 Internal Server Error\n",
         504: "504 Gateway Timeout\n"}


class _QuietRequestHandler(RequestHandler):
    """aiohttp's protocol with `handle_error` that neither echoes nor logs request bytes."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("response already started; cannot send the error page")
        event = "http_request_refused" if status < 500 else "http_request_failed"
        _log.warning(event, status=status, remote=request.remote,
                     error=type(exc).__name__ if exc is not None else None)
        response = web.Response(status=status, text=_PAGE.get(status, f"{status}\n"),
                                content_type="text/plain",
                                headers={**SECURITY_HEADERS, "Cache-Control": "no-store"})
        response.force_close()
        return response


class _QuietServer(web.Server):
    """web.Server whose connections use `_QuietRequestHandler`."""

    def __call__(self) -> RequestHandler:
        return _QuietRequestHandler(self, loop=self._loop, **self._kwargs)


def quiet_parser_errors(runner: web.AppRunner) -> None:
    """Call after `runner.setup()`, before the site starts (as `serve_proxied_directly`)."""
    server: Any = runner.server
    assert server is not None, "call after runner.setup()"
    server.__class__ = _QuietServer
