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

from sidecar.accept import OVER_CAP, Acceptor, AddressCap, Lease
from sidecar.config.model import DEFAULT_REQUEST_HEAD_TIMEOUT
from sidecar.edge.websocket import WebSocketEndpoint, refuse_http
from sidecar.http_glue import hand_over
from sidecar.observe.bad_input import bad_input
from sidecar.protocol.http_head import (
    HEAD_END,
    MAX_HEAD_BYTES,
    RequestHead,
    http_response,
    read_head,
)

NOT_WEBSOCKET = "the only upgrade served here is Upgrade: websocket"


class Passthrough(Protocol):
    """Who takes the upgrades the relay does not serve (sidecar/edge/passthrough.py)."""

    def wants(self, head: RequestHead) -> bool: ...

    def upgrade(
        self, transport: asyncio.Transport, head: RequestHead, raw_head: bytes, rest: bytes
    ) -> None: ...


class CountedProtocol(asyncio.Protocol):
    """Whoever serves a connection after its head, with the connection's lease on its address
    (limits.max_connections_per_ip) released when it closes. The served protocol's own bound
    methods stand in this object's slots: reading costs no extra call."""

    __slots__ = (
        "_inner",
        "_lease",
        "data_received",
        "eof_received",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, inner: asyncio.Protocol, lease: Lease) -> None:
        self._inner = inner
        self._lease = lease
        # The inner protocol's bound methods in this object's slots (see the docstring).
        self.data_received = inner.data_received  # type: ignore[method-assign]
        self.eof_received = inner.eof_received  # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lease.release()
        self._inner.connection_lost(exc)


class CountedBufferedProtocol(asyncio.BufferedProtocol):
    """CountedProtocol for a protocol that reads into its own buffer."""

    __slots__ = (
        "_inner",
        "_lease",
        "buffer_updated",
        "eof_received",
        "get_buffer",
        "pause_writing",
        "resume_writing",
    )

    def __init__(self, inner: asyncio.BufferedProtocol, lease: Lease) -> None:
        self._inner = inner
        self._lease = lease
        # The inner protocol's bound methods in this object's slots (see CountedProtocol).
        self.get_buffer = inner.get_buffer  # type: ignore[method-assign]
        self.buffer_updated = inner.buffer_updated  # type: ignore[method-assign]
        self.eof_received = inner.eof_received  # type: ignore[method-assign]
        self.pause_writing = inner.pause_writing  # type: ignore[method-assign]
        self.resume_writing = inner.resume_writing  # type: ignore[method-assign]

    def connection_lost(self, exc: Exception | None) -> None:
        self._lease.release()
        self._inner.connection_lost(exc)


def counted(inner: asyncio.BaseProtocol, lease: Lease) -> CountedProtocol | CountedBufferedProtocol:
    if isinstance(inner, asyncio.BufferedProtocol):
        return CountedBufferedProtocol(inner, lease)
    return CountedProtocol(inner, lease)  # type: ignore[arg-type]  # not buffered: a Protocol


class EdgeProtocol(asyncio.Protocol):
    """Reads a connection's first request head, then steps aside for whoever serves it."""

    __slots__ = (
        "_buffer",
        "_cap_at_head",
        "_head_timeout",
        "_http",
        "_lease",
        "_passthrough",
        "_timer",
        "_transport",
        "_websockets",
    )

    def __init__(
        self,
        http: Callable[[], asyncio.Protocol],
        websockets: WebSocketEndpoint,
        passthrough: Passthrough | None = None,
        lease: Lease | None = None,
        cap_at_head: AddressCap | None = None,
        head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT,
    ) -> None:
        self._http = http
        self._websockets = websockets
        self._passthrough = passthrough
        # The connection's count against its address, handed on to whoever serves it; or,
        # from a trusted proxy, the cap to count the client against once the head names it.
        self._lease = lease
        self._cap_at_head = cap_at_head
        self._head_timeout = head_timeout  # limits.request_head_timeout when accepted
        self._buffer = b""
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._head_timeout, self._too_slow)

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
        if head is not None and self._cap_at_head is not None and not self._count_client(head):
            self._over_cap(head)
            return
        if head is None or not head.is_websocket_upgrade:
            self._hand_to_http()
            return
        raw_head, rest = self._buffer[:end], self._buffer[end + len(HEAD_END) :]
        transport = self._step_aside()
        if self._passthrough is not None and self._passthrough.wants(head):
            self._passthrough.upgrade(transport, head, raw_head, rest)
        else:
            self._websockets.upgrade(transport, head, rest)
        self._hand_lease_to(transport)

    def _count_client(self, head: RequestHead) -> bool:
        """From a trusted proxy: the client its X-Forwarded-For names is counted from now on
        (a keep-alive connection counts as its first request's client); False: over the cap."""
        cap, self._cap_at_head = self._cap_at_head, None
        assert cap is not None and self._transport is not None
        peer = self._transport.get_extra_info("peername")
        peer_address = peer[0] if isinstance(peer, tuple) else None
        forwarded = head.headers.get("x-forwarded-for")
        client = cap.trusted.client(peer_address, (forwarded,) if forwarded else ())
        if client is None:
            return True
        self._lease = cap.admit(client)
        return self._lease is not None

    def _over_cap(self, head: RequestHead) -> None:
        """Over limits.max_connections_per_ip: a Pusher upgrade is told 4004 (as over
        limits.max_connections), anything else 429."""
        transport = self._step_aside()
        wanted = self._passthrough is not None and self._passthrough.wants(head)
        if head.is_websocket_upgrade and not wanted:
            self._websockets.upgrade(transport, head, b"", over_quota=True)
        else:
            refuse_http(transport, http_response(429, {"error": OVER_CAP}))

    def _hand_lease_to(self, transport: asyncio.Transport) -> None:
        """The lease goes with the connection to whoever took it over, and is released when
        the connection closes; a connection refused on the spot stays ours until it closes."""
        lease = self._lease
        taker = transport.get_protocol()
        if lease is not None and taker is not self:
            self._lease = None
            transport.set_protocol(counted(taker, lease))

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
        transport = self._step_aside()
        hand_over(transport, self._http(), buffer)
        self._hand_lease_to(transport)

    def _too_slow(self) -> None:
        self._timer = None
        if self._transport is not None:
            refuse_http(self._transport, http_response(408, {"error": "request head too slow"}))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lease is not None:
            self._lease.release()
            self._lease = None


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
        cap: AddressCap | None = None,
    ) -> None:
        super().__init__(runner, sock, ssl_context=ssl_context, backlog=backlog)
        self._websockets = websockets
        self._passthrough = passthrough
        self._handshake_timeout = handshake_timeout
        self._cap = cap

    async def start(self) -> None:
        await web.BaseSite.start(self)
        http = self._runner.server
        assert http is not None
        websockets, passthrough = self._websockets, self._passthrough
        # aiohttp's own sites do not pass a handshake deadline on; the loop's default is 60 s,
        # during which a client that connects and says nothing holds a socket.
        self._server = Acceptor(
            self._sock,
            lambda lease, cap: EdgeProtocol(
                http,
                websockets,
                passthrough,
                lease,
                cap,
                websockets.relay.limits.request_head_timeout,  # read at each accept: live
            ),
            "tls",
            ssl=self._ssl_context,
            handshake_timeout=self._handshake_timeout,
            cap=self._cap,
        )
