"""HTTP glue shared by every listener (the browser port, the Unix socket, the admin port).

A leaf: it imports nothing from sidecar, so the API, the edge and the admin listener can all
use it without importing each other.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import orjson
from aiohttp import web

log = logging.getLogger("sidecar.api")

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


class ApiError(Exception):
    """A request refused with an HTTP status and a message naming the field."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Which listener an application serves ("unix" or "tls"), for the log lines of its refusals.
LISTENER = web.AppKey("listener", str)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(status=status, body=orjson.dumps(data), content_type="application/json")


def json_error(status: int, message: str) -> web.Response:
    return json_response({"error": message}, status)


@web.middleware
def json_errors(request: web.Request, handler: Handler) -> Awaitable[web.StreamResponse]:
    """Every refusal is JSON with a message, aiohttp's own (404, 405, 413) included.

    Not a coroutine itself: a WebSocket upgrade gets its handler's coroutine back untouched, so
    a connection that lives for hours does not also keep this middleware's frame alive.
    """
    if request.headers.get("Upgrade", "").lower() == "websocket":
        return handler(request)
    return _json_errors(request, handler)


async def _json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        refused(request, exc.status, exc.message)
        return json_error(exc.status, exc.message)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        message = exc.reason
        if exc.status == 413:
            message = "request body too large for this app's payload limit"
        refused(request, exc.status, message)
        response = json_error(exc.status, message)
        for name, value in exc.headers.items():  # Allow on a 405, for one
            if name not in ("Content-Type", "Content-Length"):
                response.headers[name] = value
        return response


def refused(request: web.Request, status: int, reason: str) -> None:
    """One line per refused API request: the path (never the query, which carries the
    signature), the status and why; never the body."""
    log.info(
        "api request refused",
        extra={
            "listener": request.app.get(LISTENER, "tls"),
            "method": request.method,
            "path": request.path[:200],
            "status": status,
            "reason": reason,
        },
    )


def hand_over(transport: asyncio.Transport, protocol: asyncio.Protocol, read: bytes) -> None:
    """Give a connection to `protocol` as if it had been its own from the start."""
    if transport.is_closing():
        # Gone already (a reply to an earlier request failed): connection_lost is scheduled
        # and would reach `protocol` before it started (aiohttp asserts, and logs a traceback).
        return
    transport.set_protocol(protocol)
    protocol.connection_made(transport)
    protocol.data_received(read)


def host_name(host: str) -> str:
    """A Host header's name, without its port, lower-case: `[::1]:8080` is `[::1]`."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    name = host.rsplit(":", 1)[0] if ":" in host else host
    return name.rstrip(".")
