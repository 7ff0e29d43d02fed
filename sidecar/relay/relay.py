"""The relay core: connections, their subscriptions, and fan-out of published events.

It knows nothing of TLS, HTTP routing or aiohttp: the WebSocket edge hands it connections and
text frames, the broker hands it publications.
"""

from __future__ import annotations

import asyncio
import itertools
import secrets
import time
from dataclasses import dataclass

import orjson

from sidecar.apps import AppRegistry
from sidecar.broker.base import Publication
from sidecar.config import LimitsConfig
from sidecar.relay.channels import ChannelRegistry
from sidecar.relay.connection import Connection, ConnectionState
from sidecar.relay.fanout import FanoutQueue, FlushScheduler
from sidecar.relay.frames import broadcast_frame
from sidecar.relay.heartbeat import HeartbeatAction
from sidecar.relay.protocol import (
    PING_FRAME,
    PONG_FRAME,
    ClientEvent,
    ClientMessage,
    CloseCode,
    ErrorCode,
    Ping,
    Pong,
    ProtocolError,
    Subscribe,
    Unsubscribe,
    encode_connection_established,
    encode_error,
    encode_event,
    encode_subscription_succeeded,
    event_prefix,
    parse_client_frame,
)

# How often liveness is checked across all connections; pings go out at most this late.
HEARTBEAT_SWEEP_INTERVAL = 1.0
PUBLIC_PREFIXES_REFUSED = ("private-", "presence-")


@dataclass(slots=True)
class RelayStats:
    connections_opened: int = 0
    connections_closed: int = 0
    publications: int = 0
    slow_client_closes: int = 0


class Relay:
    def __init__(self, apps: AppRegistry, limits: LimitsConfig) -> None:
        self.apps = apps
        self.limits = limits
        self.channels: dict[str, ChannelRegistry] = {app.id: ChannelRegistry() for app in apps}
        self.connections: dict[str, Connection] = {}
        self.stats = RelayStats()
        self._socket_counter = itertools.count(1)
        self._socket_prefix = secrets.randbelow(10**9)
        self._sweeper: asyncio.TimerHandle | None = None
        self._emptied: asyncio.Event | None = None
        self.scheduler: FlushScheduler | None = None
        self.fanout: FanoutQueue | None = None

    # Lifecycle -----------------------------------------------------------------------------

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.scheduler = FlushScheduler(loop)
        self.fanout = FanoutQueue(loop)
        self._schedule_sweep()

    def stop(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None

    def new_socket_id(self) -> str:
        return f"{self._socket_prefix}.{next(self._socket_counter)}"

    def open(self, conn: Connection) -> None:
        self.connections[conn.socket_id] = conn
        self.stats.connections_opened += 1
        conn.send_json(encode_connection_established(conn.socket_id, self.limits.activity_timeout))

    def forget(self, conn: Connection) -> None:
        """The socket is gone: drop every trace of the connection."""
        if self.connections.pop(conn.socket_id, None) is None:
            return
        conn.closed()
        self.stats.connections_closed += 1
        registry = self.channels[conn.app_id]
        for channel in conn.subscriptions:
            registry.unsubscribe(channel, conn)
        conn.subscriptions.clear()
        if conn.close_code == CloseCode.OVER_CAPACITY:
            self.stats.slow_client_closes += 1
        if not self.connections and self._emptied is not None:
            self._emptied.set()

    async def wait_until_empty(self) -> None:
        if self.connections:
            if self._emptied is None or self._emptied.is_set():
                self._emptied = asyncio.Event()
            await self._emptied.wait()

    # Frames from clients -------------------------------------------------------------------

    def on_text(self, conn: Connection, text: str) -> None:
        conn.heartbeat.on_activity(time.monotonic())
        try:
            message = parse_client_frame(text)
            self._handle(conn, message)
        except ProtocolError as exc:
            conn.send_json(encode_error(exc.message, exc.code))
            if exc.close is not None:
                conn.close(exc.close)

    def on_binary(self, conn: Connection) -> None:
        conn.heartbeat.on_activity(time.monotonic())
        conn.send_json(
            encode_error(
                "binary frames are not supported: send JSON text", ErrorCode.INVALID_MESSAGE
            )
        )

    def _handle(self, conn: Connection, message: ClientMessage) -> None:
        match message:
            case Ping():
                conn.send_json(PONG_FRAME)
            case Pong():
                pass
            case Subscribe(channel=channel):
                self._subscribe(conn, channel)
            case Unsubscribe(channel=channel):
                if channel in conn.subscriptions:
                    conn.subscriptions.discard(channel)
                    self.channels[conn.app_id].unsubscribe(channel, conn)
                    conn.heartbeat.on_subscriptions_changed(
                        time.monotonic(), len(conn.subscriptions)
                    )
            case ClientEvent(channel=channel):
                raise ProtocolError(
                    f"client events are only allowed on private and presence channels; "
                    f"{channel!r} is public"
                    if not channel.startswith(PUBLIC_PREFIXES_REFUSED)
                    else f"not subscribed to {channel!r}"
                )

    def _subscribe(self, conn: Connection, channel: str) -> None:
        if channel.startswith(PUBLIC_PREFIXES_REFUSED):
            data = {
                "type": "AuthError",
                "error": "private and presence channels are not supported by this relay yet",
                "status": 403,
            }
            conn.send_json(
                encode_event("pusher:subscription_error", orjson.dumps(data).decode(), channel)
            )
            return
        if channel not in conn.subscriptions:
            if len(conn.subscriptions) >= self.limits.max_subscriptions:
                raise ProtocolError(
                    f"over the limit of {self.limits.max_subscriptions} subscriptions "
                    "per connection"
                )
            conn.subscriptions.add(channel)
            self.channels[conn.app_id].subscribe(channel, conn)
            conn.heartbeat.on_subscriptions_changed(time.monotonic(), len(conn.subscriptions))
        conn.send_json(encode_subscription_succeeded(channel))

    # Fan-out -------------------------------------------------------------------------------

    def deliver(self, pub: Publication) -> None:
        """Send a publication to every local subscriber: one encoding per channel, shared bytes."""
        registry = self.channels.get(pub.app_id)
        if registry is None:
            return
        assert self.fanout is not None, "Relay.start() first"
        self.stats.publications += 1
        for channel in pub.channels:
            subscribers = registry.subscribers(channel)
            if subscribers:
                frame = broadcast_frame(event_prefix(pub.name, channel), pub.data_json, b"}")
                self.fanout.broadcast(channel, frame, subscribers, pub.socket_id)

    # Liveness ------------------------------------------------------------------------------

    def _schedule_sweep(self) -> None:
        loop = asyncio.get_running_loop()
        self._sweeper = loop.call_later(HEARTBEAT_SWEEP_INTERVAL, self._sweep)

    def _sweep(self) -> None:
        now = time.monotonic()
        for conn in list(self.connections.values()):
            if conn.state is not ConnectionState.OPEN:
                continue
            action = conn.heartbeat.poll(now)
            if action is HeartbeatAction.SEND_PING:
                conn.send_json(PING_FRAME)
            elif action is not None:
                conn.close(action)
        self._schedule_sweep()

    def close_all(self, code: int) -> None:
        for conn in list(self.connections.values()):
            conn.close(code)
