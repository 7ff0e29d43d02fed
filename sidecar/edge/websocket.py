"""The WebSocket edge of the relay: the upgrade, and one small protocol object per connection.

A connection costs what it holds for its lifetime, and there are tens of thousands of them: so
after the upgrade a socket is served by `PusherSocket` alone (a frame reader, the relay's
`Connection`, the transport), not by an HTTP server's request, response, reader and handler
task. The same object is the connection's sink: data frames are prebuilt bytes shared by every
subscriber, written straight to the transport by the connection's send queue; pongs and the
close frame go through that queue too, so a control frame never lands inside a large data frame
that is still being written.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from sidecar.batched_tls import BatchedTLSProtocol
from sidecar.config.apps import AppConfig
from sidecar.config.model import LimitsConfig
from sidecar.config.origins import OriginPolicy
from sidecar.engine.connection import WRITE_BUDGET, Connection, ConnectionState
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.relay import Relay
from sidecar.observe.bad_input import bad_input
from sidecar.protocol.frame_reader import FrameError, FrameReader, Message, Opcode, parse_close
from sidecar.protocol.frame_writer import close_frame, pong_frame, text_frame
from sidecar.protocol.http_head import (
    HandshakeError,
    RequestHead,
    accept_response,
    check_upgrade,
    http_response,
)
from sidecar.protocol.pusher import CLOSE_REASONS, CloseCode, check_handshake, encode_error

log = logging.getLogger("sidecar.connections")

# How long a close handshake may take before the socket is simply dropped.
CLOSE_TIMEOUT = 5.0
APP_PATH = "/app/"
NO_STATUS = 1005
# Until a connection holds a channel the app signed, its messages are subscriptions, sign-ins
# and pings: a few hundred bytes, a presence channel_data with its user_info the largest. Client
# events (up to limits.max_client_message_bytes) come after a private or presence subscription.
# So an unfinished frame from anyone else pins at most this much, not 64 KiB.
UNTRUSTED_MESSAGE_BYTES = 8 * 1024
# Read per client message: an Enum member read costs 50-140 ns on Python 3.11, a global ~10.
_CLOSE, _TEXT, _BINARY, _PING = Opcode.CLOSE, Opcode.TEXT, Opcode.BINARY, Opcode.PING
_OPEN = ConnectionState.OPEN


def untrusted_message_limit(limits: LimitsConfig) -> int:
    """The largest message from a connection the app has not signed anything for yet."""
    largest = max(UNTRUSTED_MESSAGE_BYTES, 4 * limits.max_presence_user_info_bytes)
    return min(limits.max_client_message_bytes, largest)


class WebSocketEndpoint:
    """`GET /app/{key}` upgrades: one Pusher connection per WebSocket."""

    def __init__(self, relay: Relay, origins: OriginPolicy) -> None:
        self.relay = relay
        self.origins = origins
        # Stopping: the listener is closed, but a connection accepted just before may still
        # finish its upgrade. It is told 4200 at once, as everyone else, and reconnects to
        # whoever serves next.
        self.closing = False

    def upgrade(
        self,
        transport: asyncio.Transport,
        head: RequestHead,
        rest: bytes,
        over_quota: bool = False,
    ) -> None:
        """Answer the upgrade request `head` and take the connection over; `over_quota`: its
        address holds limits.max_connections_per_ip already (4004, as over max_connections)."""
        if not self.origins.allows(head.header("origin")):
            # Refused before the upgrade: a browser reports it and pusher-js does not loop.
            refuse_http(transport, http_response(403, {"error": "Origin not allowed"}))
            return
        try:
            key = check_upgrade(head)
        except HandshakeError as exc:
            bad_input("upgrade", transport, exc.message)
            refuse_http(transport, exc.response())
            return
        transport.write(accept_response(key))
        socket = PusherSocket(self.relay, transport)
        transport.set_protocol(socket)
        app, code = self._resolve(head)
        if app is None:
            socket.refuse(code or CloseCode.APP_NOT_FOUND)
        elif self.closing:
            socket.refuse(CloseCode.RECONNECT)
        elif over_quota or len(self.relay.connections) >= self.relay.limits.max_connections:
            socket.refuse(CloseCode.OVER_QUOTA)
        else:
            socket.open(app)
        if rest:
            socket.data_received(rest)

    def _resolve(self, head: RequestHead) -> tuple[AppConfig | None, CloseCode | None]:
        key = head.path[len(APP_PATH) :] if head.path.startswith(APP_PATH) else ""
        if not key or "/" in key:
            return None, CloseCode.PATH_NOT_FOUND
        app = self.relay.apps.by_key(key)
        code = check_handshake(key, app is not None, head.query.get("protocol"))
        return (app, None) if code is None else (None, code)


def refuse_http(transport: asyncio.Transport, response: bytes) -> None:
    transport.write(response)
    transport.close()


class PusherSocket(asyncio.Protocol):
    """One upgraded connection: frames in to the relay, and the sink its Connection writes to."""

    __slots__ = (
        "_close_received",
        "_close_sent",
        "_close_timer",
        "_drained",
        "_failed",
        "_reader",
        "_relay",
        "_transport",
        "_trusted",
        "batched",
        "conn",
        "direct",
        "paused",
        "write",
    )

    def __init__(self, relay: Relay, transport: asyncio.Transport) -> None:
        self._relay = relay
        self._transport = transport
        self._reader = FrameReader(untrusted_message_limit(relay.limits))
        self.paused = False
        self._drained: asyncio.Future[None] | None = None
        self._close_sent = False
        self._close_received = False
        self._failed = False
        self._trusted = False
        self._close_timer: asyncio.TimerHandle | None = None
        self.conn: Connection | None = None
        # Called once per delivery: the transport's own method, no wrapper; over TLS, the TLS
        # protocol's (sidecar/batched_tls.py), which skip the transport's checks. A closed
        # transport raises (uvloop) or drops the bytes (asyncio); the connection treats both as
        # gone.
        tls: BatchedTLSProtocol | None = getattr(transport, "tls_protocol", None)
        self.write: Callable[[bytes | memoryview], None]
        self.direct: Callable[[bytes], object]  # FrameSink's: the fan-out's
        if tls is None:
            self.write = self.direct = transport.write
        else:
            self.write, self.direct = tls.write_record, tls.direct
        self.batched = tls

    def open(self, app: AppConfig) -> None:
        relay = self._relay
        limits = relay.limits
        assert relay.scheduler is not None, "Relay.start() first"
        # Pause (and queue in our SendQueue, by reference) once the transport holds this much.
        self._transport.set_write_buffer_limits(high=WRITE_BUDGET, low=WRITE_BUDGET // 4)
        self.conn = Connection(
            socket_id=relay.new_socket_id(),
            app_id=app.id,
            sink=self,
            scheduler=relay.scheduler,
            heartbeat=Heartbeat(
                time.monotonic(), limits.activity_timeout, limits.pong_timeout, limits.idle_timeout
            ),
            queue_limit=limits.send_queue_bytes,
            close_ready=self.send_close,
        )
        relay.open(self.conn)
        if self.batched is not None:
            # The batch that sends what the fan-out's direct writes leave in the TLS records'
            # buffers (one per loop: the same at every connection).
            assert relay.fanout is not None
            relay.fanout.written = self.batched.batch.add_written
        # Debug: at thousands of connections a second the close line (below) says enough.
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "connection opened",
                extra={"socket_id": self.conn.socket_id, "app_id": app.id},
            )

    def refuse(self, code: int) -> None:
        """The handshake named no usable app: say why in Pusher's terms, then close."""
        reason = CLOSE_REASONS.get(code, "")
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.write(text_frame(encode_error(reason, code)))
        self.send_close(code, reason)

    # FrameSink -----------------------------------------------------------------------------

    async def wait_drained(self) -> None:
        if not self.paused:
            return
        if self._transport.is_closing():
            raise ConnectionResetError("connection lost")
        self._drained = asyncio.get_running_loop().create_future()
        await self._drained

    def abort(self) -> None:
        self._transport.abort()

    def send_close(self, code: int, reason: str) -> None:
        """Write the close frame (after everything queued) and end the connection."""
        if self._close_sent:
            return
        self._close_sent = True
        with contextlib.suppress(ConnectionError, RuntimeError):
            self.write(close_frame(code, reason))
        if self._close_received or self._failed:
            self._transport.close()
        else:
            # The client answers with its own close frame; one that does not is cut off.
            loop = asyncio.get_running_loop()
            self._close_timer = loop.call_later(CLOSE_TIMEOUT, self._transport.abort)

    # asyncio.Protocol ----------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        if self._failed or self._close_received:
            return
        if not self._trusted and self.conn is not None and self.conn.trusted:
            self._trust()
        try:
            messages = self._reader.feed(data)
        except FrameError as exc:
            # What the client sent before the broken frame is handled first, as sent.
            self._handle(exc.messages)
            if not (self._close_received or self._failed):
                self._fail(exc.code, exc.reason)
            return
        self._handle(messages)

    def _handle(self, messages: list[Message]) -> None:
        conn = self.conn
        # Message does not tie the payload's type to the opcode: TEXT's is str (decoded by the
        # reader), every other's bytes; hence the three ignores below.
        for opcode, payload in messages:
            if opcode is _CLOSE:
                self._on_close(payload)  # type: ignore[arg-type]
                return
            if conn is None or conn.state is not _OPEN:
                continue  # closing: only the client's close frame matters now
            if opcode is _TEXT:
                self._relay.on_text(conn, payload)  # type: ignore[arg-type]
            elif opcode is _BINARY:
                self._relay.on_binary(conn)
            else:
                conn.heartbeat.on_activity(time.monotonic())
                if opcode is _PING:
                    conn.reply(pong_frame(payload))  # type: ignore[arg-type]

    def _trust(self) -> None:
        """The connection holds a channel the app signed: messages up to the configured limit."""
        self._trusted = True
        self._reader.max_message = self._relay.limits.max_client_message_bytes

    def _on_close(self, payload: bytes) -> None:
        try:
            code = parse_close(payload)
        except FrameError as exc:
            self._fail(exc.code, exc.reason)
            return
        self._close_received = True
        if self._close_sent:
            self._transport.close()
            return
        echo = CloseCode.NORMAL if code == NO_STATUS else code
        if self.conn is not None:
            self.conn.close(echo, "")
        else:
            self.send_close(echo, "")

    def _fail(self, code: int, reason: str) -> None:
        """A framing error: nothing more is read; the close frame goes out, then the socket."""
        bad_input("frame", self._transport, reason)
        self._failed = True
        if self._close_sent:
            self._transport.close()
        elif self.conn is not None:
            self.conn.close(code, reason)
        else:
            self.send_close(code, reason)

    def pause_writing(self) -> None:
        self.paused = True
        if self.conn is not None:
            self.conn.sink_paused()

    def resume_writing(self) -> None:
        self.paused = False
        if self.conn is not None:
            self.conn.sink_resumed()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        if self._drained is not None and not self._drained.done():
            self._drained.set_exception(ConnectionResetError("connection lost"))
        self._drained = None
        # The connection points back at this object (its sink, close_ready): let go of it, so
        # that both are freed now by reference counting, not by a later full collection.
        conn, self.conn = self.conn, None
        if conn is None:
            return
        self._relay.forget(conn)
        log.info(
            "connection closed",
            extra={
                "socket_id": conn.socket_id,
                "app_id": conn.app_id,
                "close_code": conn.close_code or 1006,
                "duration_s": round(time.monotonic() - conn.opened_at, 3),
            },
        )
