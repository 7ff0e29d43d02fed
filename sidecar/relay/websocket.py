"""The WebSocket edge of the relay: aiohttp's upgrade and reader, the relay's own writer.

aiohttp completes the upgrade, parses incoming frames and enforces the inbound size limit.
Outgoing data frames bypass aiohttp's writer: they are prebuilt bytes shared by every
subscriber, written straight to the transport by the connection's send queue. Pongs for
WebSocket pings go through the same queue, so a control frame never lands inside a large data
frame that is still being written.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import WSMsgType, web

from sidecar.edge.origin import OriginPolicy
from sidecar.relay.connection import WRITE_BUDGET, Connection
from sidecar.relay.frames import pong_frame
from sidecar.relay.heartbeat import Heartbeat
from sidecar.relay.protocol import CLOSE_REASONS, CloseCode, check_handshake, encode_error
from sidecar.relay.relay import Relay

log = logging.getLogger("sidecar.connections")

# How long a close handshake may take before the socket is simply dropped.
CLOSE_TIMEOUT = 5.0


class TransportSink:
    """A connection's view of its transport: write, back-pressure, drain."""

    __slots__ = ("_protocol", "_transport", "write")

    def __init__(self, transport: asyncio.Transport, protocol: Any) -> None:
        self._transport = transport
        self._protocol = protocol
        # Pause (and queue in our SendQueue, by reference) once the transport holds this much.
        transport.set_write_buffer_limits(high=WRITE_BUDGET, low=WRITE_BUDGET // 4)
        # Called once per delivery: the transport's own method, no wrapper. A closed transport
        # raises (uvloop) or drops the bytes (asyncio); either way the handler cleans up.
        self.write = transport.write

    def is_paused(self) -> bool:
        return self._protocol.writing_paused

    async def wait_drained(self) -> None:
        # aiohttp's protocol receives pause_writing/resume_writing from the transport; its
        # drain helper is the one place that turns them into something awaitable.
        await self._protocol._drain_helper()

    def abort(self) -> None:
        self._transport.abort()


class WebSocketEndpoint:
    """`GET /app/{key}`: one Pusher connection per WebSocket."""

    def __init__(self, relay: Relay, origins: OriginPolicy) -> None:
        self.relay = relay
        self.origins = origins

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if not self.origins.allows(request.headers.get("Origin")):
            # Refused before the upgrade: a browser reports it and pusher-js does not loop.
            raise web.HTTPForbidden(
                text='{"error": "Origin not allowed"}', content_type="application/json"
            )
        limits = self.relay.limits
        ws = web.WebSocketResponse(
            autoping=False,
            max_msg_size=limits.max_client_message_bytes,
            timeout=CLOSE_TIMEOUT,
            compress=False,
        )
        await ws.prepare(request)
        key = request.match_info.get("key")
        app = self.relay.apps.by_key(key) if key is not None else None
        if key is None:
            code = CloseCode.PATH_NOT_FOUND
        else:
            code = check_handshake(key, app is not None, request.query.get("protocol"))
        if code is not None or app is None:
            code = code or CloseCode.APP_NOT_FOUND
            reason = CLOSE_REASONS.get(code, "")
            await ws.send_str(encode_error(reason, int(code)).decode())
            await ws.close(code=code, message=reason.encode())
            return ws
        transport = request.transport
        assert transport is not None
        assert self.relay.scheduler is not None
        closing: list[asyncio.Task[bool]] = []

        def close_ready(code: int, reason: str) -> None:
            closing.append(asyncio.ensure_future(ws.close(code=code, message=reason.encode())))

        conn = Connection(
            socket_id=self.relay.new_socket_id(),
            app_id=app.id,
            sink=TransportSink(transport, request.protocol),
            scheduler=self.relay.scheduler,
            heartbeat=Heartbeat(
                time.monotonic(), limits.activity_timeout, limits.pong_timeout, limits.idle_timeout
            ),
            queue_limit=limits.send_queue_bytes,
            close_ready=close_ready,
        )
        self.relay.open(conn)
        try:
            async for msg in ws:
                if msg.type is WSMsgType.TEXT:
                    self.relay.on_text(conn, msg.data)
                elif msg.type is WSMsgType.BINARY:
                    self.relay.on_binary(conn)
                elif msg.type is WSMsgType.PING:
                    conn.heartbeat.on_activity(time.monotonic())
                    conn.send(pong_frame(msg.data))
                elif msg.type is WSMsgType.PONG:
                    conn.heartbeat.on_activity(time.monotonic())
                elif msg.type is WSMsgType.ERROR:
                    break
            if closing:
                await asyncio.gather(*closing, return_exceptions=True)
        finally:
            self.relay.forget(conn)
            code = conn.close_code or ws.close_code
            log.info(
                "connection closed",
                extra={
                    "socket_id": conn.socket_id,
                    "app_id": conn.app_id,
                    "close_code": code,
                    "duration_s": round(time.monotonic() - conn.opened_at, 3),
                },
            )
        return ws
