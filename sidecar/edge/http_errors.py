"""aiohttp's own refusals made like the sidecar's: JSON bodies, one quiet line, no traceback.

aiohttp answers a request its parser cannot read (a bad request line, a header with a control
character, a body whose chunked framing breaks) from `RequestHandler.handle_error`, which logs
it at ERROR with a traceback that quotes the bytes received (a query's auth_signature
included) and answers in plain text echoing them. `QuietRequestHandler` answers those with
`{"error": reason}`, the reason from a fixed set, and reports them as bad input
(sidecar/observe/bad_input.py: info, rate-limited, counted). A 500 is still a bug: it is
logged with its traceback, and answered in JSON without one.

aiohttp has no option for the handler class: `QuietAppRunner` makes its server a
`QuietServer`, whose connections get a `QuietRequestHandler`.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from sidecar.observe.bad_input import bad_input

# The most specific class first: each reason is a fixed string, never the bytes received.
REASONS: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.BadHttpMethod, "not an HTTP request (bad method)"),
    (http_exceptions.BadStatusLine, "malformed request line"),
    (http_exceptions.LineTooLong, "request line or header too long"),
    (http_exceptions.InvalidHeader, "malformed header"),
    (http_exceptions.InvalidURLError, "malformed URL"),
    (http_exceptions.DecompressSizeError, "body too large once decompressed"),
    (http_exceptions.ContentEncodingError, "body not in its Content-Encoding"),
    (http_exceptions.PayloadEncodingError, "malformed body (length or chunked framing)"),
)
MALFORMED = "malformed request"


def reason_for(exc: BaseException | None) -> str:
    for cls, reason in REASONS:
        if isinstance(exc, cls):
            return reason
    return MALFORMED


def json_body(message: str) -> bytes:
    return orjson.dumps({"error": message})


class QuietRequestHandler(RequestHandler):
    __slots__ = ()

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if isinstance(exc, http_exceptions.HttpProcessingError) or 400 <= status < 500:
            # The client's bytes (a handler reading a broken body gets here with 500).
            status = status if 400 <= status < 500 else 400
            text = reason_for(exc)
            bad_input("request", self.transport, text)
        elif status == 504:
            text = "the request took too long to handle"
        else:
            self.log_exception("Error handling request", exc_info=exc)  # a bug: its traceback
            text = "internal server error"
        if request.writer.output_size > 0:
            # Part of a response is out: no second one can follow (aiohttp closes).
            raise ConnectionError("a response was already under way")
        response = web.Response(
            status=status, body=json_body(text), content_type="application/json"
        )
        response.force_close()
        return response


class QuietServer(web.Server):
    def __call__(self) -> RequestHandler:
        return QuietRequestHandler(self, loop=self._loop, **self._kwargs)


class QuietAppRunner(web.AppRunner):
    """An AppRunner whose connections are answered by `QuietRequestHandler`."""

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        kwargs: dict[str, Any] = server._kwargs
        return QuietServer(
            server.request_handler,
            request_factory=server.request_factory,
            handler_cancellation=server.handler_cancellation,
            loop=server._loop,
            **kwargs,
        )
