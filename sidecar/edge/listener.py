"""The browser-facing port: each connection's first request decides who serves it.

A WebSocket upgrade is answered here and the socket is handed to the relay's own small
protocol object, or, with an `upstream` and a path that is not the relay's, spliced to the app
(sidecar/edge/passthrough.py). A request for any other upgrade (`Upgrade: h2c`) is refused
here (400): aiohttp's C parser takes it for a switch of protocol and neither answers it nor
reads the connection as HTTP any more.
Anything else (the signed HTTP API, the reverse proxy, errors) goes to aiohttp with the bytes
already read. aiohttp then owns that connection for good, so an
upgrade sent later on a keep-alive HTTP connection is refused there with a clear message
(browsers and pusher-js open a new connection for each WebSocket).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from ssl import SSLContext
from typing import Protocol, cast

from aiohttp import web

from sidecar.http_glue import hand_over
from sidecar.observe.bad_input import bad_input
from sidecar.relay.handshake import (
    HEAD_END,
    MAX_HEAD_BYTES,
    RequestHead,
    http_response,
    read_head,
)
from sidecar.relay.websocket import WebSocketEndpoint, refuse_http

# A client has this long to send its first request head (after TLS, which has its own limit).
HEAD_TIMEOUT = 15.0
NOT_WEBSOCKET = "the only upgrade served here is Upgrade: websocket"


class Passthrough(Protocol):
    """Who takes the upgrades the relay does not serve (sidecar/edge/passthrough.py)."""

    def wants(self, head: RequestHead) -> bool: ...

    def upgrade(
        self, transport: asyncio.Transport, head: RequestHead, raw_head: bytes, rest: bytes
    ) -> None: ...


class EdgeProtocol(asyncio.Protocol):
    """Reads a connection's first request head, then steps aside for whoever serves it."""

    __slots__ = ("_buffer", "_http", "_passthrough", "_timer", "_transport", "_websockets")

    def __init__(
        self,
        http: Callable[[], asyncio.Protocol],
        websockets: WebSocketEndpoint,
        passthrough: Passthrough | None = None,
    ) -> None:
        self._http = http
        self._websockets = websockets
        self._passthrough = passthrough
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(HEAD_TIMEOUT, self._too_slow)

    def data_received(self, data: bytes) -> None:
        self._buffer += data
        end = self._buffer.find(HEAD_END)
        if end < 0 and len(self._buffer) <= MAX_HEAD_BYTES:
            return
        if end < 0 or end > MAX_HEAD_BYTES:
            # However the network split it, a head this long is aiohttp's to refuse.
            self._hand_to_http()
            return
        head = read_head(self._buffer[:end])
        if head is not None and head.asks_other_upgrade:
            transport = self._step_aside()
            bad_input("upgrade", transport, NOT_WEBSOCKET)
            refuse_http(transport, http_response(400, {"error": NOT_WEBSOCKET}))
            return
        if head is None or not head.is_websocket_upgrade:
            self._hand_to_http()
            return
        raw_head, rest = self._buffer[:end], self._buffer[end + len(HEAD_END) :]
        if self._passthrough is not None and self._passthrough.wants(head):
            self._passthrough.upgrade(self._step_aside(), head, raw_head, rest)
        else:
            self._websockets.upgrade(self._step_aside(), head, rest)

    def _step_aside(self) -> asyncio.Transport:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport, self._transport = self._transport, None
        self._buffer = b""
        assert transport is not None
        return transport

    def _hand_to_http(self) -> None:
        buffer = self._buffer
        hand_over(self._step_aside(), self._http(), buffer)

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            refuse_http(self._transport, http_response(408, {"error": "request head too slow"}))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


class EdgeSite(web.SockSite):
    """aiohttp's socket site, with `EdgeProtocol` in front of aiohttp's request handler."""

    def __init__(
        self,
        runner: web.BaseRunner,
        sock: socket.socket,
        websockets: WebSocketEndpoint,
        *,
        ssl_context: SSLContext | None,
        handshake_timeout: float,
        backlog: int,
        passthrough: Passthrough | None = None,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._websockets = websockets
        self._passthrough = passthrough
        self._handshake_timeout = handshake_timeout

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        websockets, passthrough = self._websockets, self._passthrough
        # aiohttp's own sites do not pass a handshake deadline on; the loop's default is 60 s,
        # during which a client that connects and says nothing holds a socket.
        extra = {}
        if self._ssl_context is not None:
            extra["ssl_handshake_timeout"] = self._handshake_timeout
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: EdgeProtocol(http, websockets, passthrough),
            sock=self._sock,
            ssl=self._ssl_context,
            backlog=self._backlog,
            **extra,
        )
