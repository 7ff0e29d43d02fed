"""Publishing on the Unix socket without a task per request.

The app's publishes are the one request that must be answered in microseconds while the loop
is busy fanning out: through aiohttp a request costs two loop turns (the parser schedules a
handler task, the task writes the reply), and under load every turn is long. Here a plain
`POST /apps/{id}/events` or `/batch_events` with a Content-Length is read, handed to the
broker and answered inside the same `data_received` call. Anything else (another path, a
chunked body, `Expect`, a body over the limit) is handed on to aiohttp with the bytes already
read, and aiohttp serves that connection from then on.

A request must arrive whole within `limits.publish_request_timeout` of its first byte: one
still incomplete then is answered 408 and the connection closed (a publisher that stopped
half-way would otherwise hold it, and its bytes, for good). Idle connections between requests
are the app's keep-alive pool, and stay.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import socket
from collections.abc import Callable
from typing import cast

import orjson
from aiohttp import web

from sidecar.accept import Acceptor
from sidecar.api.events import parse_batch, parse_events
from sidecar.api.handlers import PublishApi
from sidecar.config.model import DEFAULT_PUBLISH_REQUEST_TIMEOUT
from sidecar.http_glue import ApiError, hand_over
from sidecar.observe.probe import RequestCounter
from sidecar.protocol.http_head import HEAD_END, MAX_HEAD_BYTES, RequestHead, json_reply, read_head

log = logging.getLogger("sidecar.api")

# No percent-escapes: a path that needs decoding is aiohttp's, so both paths agree on it.
PUBLISH_PATH = re.compile(r"/apps/([^/%]+)/(events|batch_events)")
# Longer Content-Length values are no body this path could take (and int() refuses 4300+).
MAX_LENGTH_DIGITS = 18
OK_KEEP_ALIVE = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
# The route each fast-path request is counted under: aiohttp's pattern for the same request.
ROUTES = {
    "events": "/apps/{app_id}/events",
    "batch_events": "/apps/{app_id}/batch_events",
}


def wants_close(head: RequestHead) -> bool:
    connection = head.headers.get("connection", "").lower()
    if head.version == "HTTP/1.0":
        return "keep-alive" not in connection
    return "close" in connection


class FastPublishProtocol(asyncio.Protocol):
    """Serves publish requests itself; steps aside to aiohttp for anything else."""

    __slots__ = (
        "_api",
        "_body",
        "_buffer",
        "_chunks",
        "_http",
        "_needed",
        "_requests",
        "_size",
        "_timeout",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        api: PublishApi,
        http: Callable[[], asyncio.Protocol],
        requests: RequestCounter | None = None,
        timeout: float | None = None,
    ) -> None:
        """`timeout`: seconds a request has to arrive whole (None: no limit, for tests)."""
        assert not api.signed, "the Unix socket's API: trusted, never signed"
        self._api = api
        self._http = http
        self._requests = requests
        self._timeout = timeout
        self._timer: asyncio.TimerHandle | None = None  # runs while a request is incomplete
        # Bytes not yet answered: pieces as they came, joined once a request is complete, so a
        # large body is copied once, not once per piece.
        self._chunks: list[bytes] = []
        self._size = 0
        self._needed = 0  # bytes the request being read needs in all (0: its head is unread)
        self._buffer = b""
        self._body: memoryview | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size < self._needed:
            return
        chunks, self._chunks = self._chunks, []
        self._buffer = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        del chunks, data  # the pieces of a large body, now copied into the buffer
        self._size = self._needed = 0
        while self._transport is not None and self._buffer:
            if not self._serve_one():
                break
        if self._buffer:  # the start of a request still incomplete
            self._chunks, self._size = [self._buffer], len(self._buffer)
            self._buffer = b""
        self._time_request()

    def _time_request(self) -> None:
        """The clock runs from a request's first byte until it is whole (a request that comes
        whole in one read, the usual case, never starts it)."""
        if self._timeout is None:
            return
        if self._chunks and self._transport is not None:
            if self._timer is None:
                loop = asyncio.get_running_loop()
                self._timer = loop.call_later(self._timeout, self._too_slow)
        elif self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _too_slow(self) -> None:
        self._timer = None
        transport, self._transport = self._transport, None
        self._chunks, self._size, self._needed = [], 0, 0
        if transport is None:
            return
        reason = f"request not complete within {self._timeout} s"
        log.info("api request refused", extra={"listener": "unix", "status": 408, "reason": reason})
        transport.write(json_reply(408, orjson.dumps({"error": reason}), close=True))
        transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _serve_one(self) -> bool:
        """Answer the request at the head of the buffer; False when more bytes are needed."""
        buffer = self._buffer
        end = buffer.find(HEAD_END)
        if end < 0:
            if len(buffer) > MAX_HEAD_BYTES:
                self._hand_to_http()
            return False
        head = read_head(buffer[:end])
        route = PUBLISH_PATH.fullmatch(head.path) if head is not None else None
        length = self._content_length(head) if head is not None and route else None
        if head is None or route is None or length is None or end > MAX_HEAD_BYTES:
            self._hand_to_http()
            return False
        start = end + len(HEAD_END)
        stop = start + length
        if len(buffer) < stop:
            self._needed = stop
            return False
        # A view, not a copy; once the parser drops it, nothing holds a large body any more.
        self._body = memoryview(buffer)[start:stop]
        self._buffer = buffer[stop:]
        del buffer
        close = wants_close(head)
        assert self._transport is not None
        self._transport.write(self._publish(route[1], route[2], head.path, close))
        if close:
            self._transport.close()
            self._transport = None
        return True

    def _content_length(self, head: RequestHead) -> int | None:
        """The body length when this path can take the request, else None (aiohttp decides)."""
        if head.method != "POST" or "transfer-encoding" in head.headers:
            return None
        if "expect" in head.headers:
            return None
        value = head.headers.get("content-length", "")
        if not (value.isascii() and value.isdigit()) or len(value) > MAX_LENGTH_DIGITS:
            return None
        if int(value) > self._api.max_body:
            return None
        return int(value)

    def _take_body(self) -> memoryview:
        body, self._body = self._body, None
        assert body is not None
        return body

    def _publish(self, app_id: str, kind: str, path: str, close: bool) -> bytes:
        broker = self._api.broker
        try:
            app = self._api.app_by_id(app_id)
            # The body goes to the parser as a temporary, as in PublishApi's handlers.
            if kind == "events":
                broker.publish(parse_events(self._take_body(), app))
            else:
                # all valid, or none published
                for publication in parse_batch(self._take_body(), app):
                    broker.publish(publication)
        except ApiError as exc:
            self._body = None
            log.info(
                "api request refused",
                extra={
                    "listener": "unix",
                    "path": path[:200],
                    "status": exc.status,
                    "reason": exc.message,
                },
            )
            if self._requests is not None:
                self._requests.count("unix", ROUTES[kind], exc.status)
            return json_reply(exc.status, orjson.dumps({"error": exc.message}), close=close)
        if self._requests is not None:
            self._requests.count("unix", ROUTES[kind], 200)
        return json_reply(200, b"{}", close=True) if close else OK_KEEP_ALIVE

    # A publisher that pipelines without reading its replies is not read from either.
    def pause_writing(self) -> None:
        if self._transport is not None:
            self._transport.pause_reading()

    def resume_writing(self) -> None:
        if self._transport is not None:
            self._transport.resume_reading()

    def _hand_to_http(self) -> None:
        if self._timer is not None:  # aiohttp's from now on
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        buffer, self._buffer = self._buffer, b""
        assert transport is not None
        hand_over(transport, self._http(), buffer)


class FastPublishSite(web.UnixSite):
    """aiohttp's Unix site with `FastPublishProtocol` in front of its request handler."""

    def __init__(
        self,
        runner: web.BaseRunner,
        path: str,
        api: PublishApi,
        backlog: int,
        requests: RequestCounter | None = None,
        request_timeout: float = DEFAULT_PUBLISH_REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(runner, path, backlog=backlog)
        self._api = api
        self._requests = requests
        self._request_timeout = request_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        api, requests, timeout = self._api, self._requests, self._request_timeout
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(os.fspath(self._path))
            sock.listen(self._backlog)
        except OSError:
            sock.close()
            raise
        self._server = Acceptor(
            sock, lambda lease, cap: FastPublishProtocol(api, http, requests, timeout), "unix"
        )
