"""A relay with real Connections over recording sinks, and the clients that read what they were
sent (no sockets): the `relay` and `make_client` fixtures (registered in tests/conftest.py) and
their helpers, shared by the relay, lifecycle and reloader tests."""

from __future__ import annotations

import asyncio
import json
import struct
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.engine.connection import Connection
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.relay import Relay
from sidecar.protocol.frame_writer import OP_TEXT
from tests.support.local_relay import local_relay, start_local

APP = AppConfig(id="1", key="key-one", secret="secret-one")
OTHER_APP = AppConfig(id="2", key="key-two", secret="secret-two")
LIMITS = LimitsConfig(activity_timeout=30, pong_timeout=10, max_subscriptions=3)


class Sink:
    """A transport that takes everything at once and records it."""

    paused = False  # takes everything: never paused

    def __init__(self) -> None:
        self.writes: list[bytes | memoryview] = []
        self.aborted = False

    batched = None  # its writes go straight out (FrameSink)

    def direct(self, data: bytes) -> None:  # the fan-out's write: the same here
        self.write(data)

    def write(self, data: bytes | memoryview) -> None:
        self.writes.append(data)

    async def wait_drained(self) -> None:  # never called: never paused
        raise AssertionError("not paused")

    def abort(self) -> None:
        self.aborted = True


def parse_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Split unmasked server frames (RFC 6455 5.2) into (opcode, payload)."""
    frames = []
    i = 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert second & 0x80 == 0, "server frames are never masked"
        length = second & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, i)
            i += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, i)
            i += 8
        frames.append((first & 0x0F, data[i : i + length]))
        i += length
    return frames


class Client:
    """A Connection on a recording sink, plus helpers to read what it was sent."""

    def __init__(self, conn: Connection, sink: Sink, closes: list[tuple[int, str]]) -> None:
        self.conn = conn
        self.sink = sink
        self.closes = closes
        self._read = 0

    def all_messages(self) -> list[dict[str, Any]]:
        data = b"".join(bytes(w) for w in self.sink.writes)
        out = []
        for opcode, payload in parse_frames(data):
            assert opcode == OP_TEXT
            out.append(json.loads(payload))
        return out

    def new_messages(self) -> list[dict[str, Any]]:
        """Messages not returned by an earlier call."""
        messages = self.all_messages()
        fresh = messages[self._read :]
        self._read = len(messages)
        return fresh

    def text(self, relay: Relay, event: str, data: Any = None, **fields: Any) -> None:
        frame: dict[str, Any] = {"event": event, **fields}
        if data is not None:
            frame["data"] = data
        relay.on_text(self.conn, json.dumps(frame))


MakeClient = Callable[..., Client]


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = local_relay(AppRegistry((APP, OTHER_APP)), LIMITS)
    start_local(r)
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


@pytest.fixture
def make_client(relay: Relay) -> MakeClient:
    def make(app_id: str = APP.id, heartbeat: Heartbeat | None = None, open_: bool = True):
        sink = Sink()
        closes: list[tuple[int, str]] = []
        assert relay.scheduler is not None
        conn = Connection(
            socket_id=relay.new_socket_id(),
            app_id=app_id,
            sink=sink,
            scheduler=relay.scheduler,
            heartbeat=heartbeat
            or Heartbeat(
                time.monotonic(), LIMITS.activity_timeout, LIMITS.pong_timeout, LIMITS.idle_timeout
            ),
            queue_limit=LIMITS.send_queue_bytes,
            close_ready=lambda code, reason: closes.append((code, reason)),
        )
        client = Client(conn, sink, closes)
        if open_:
            relay.open(conn)
        return client

    return make


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


async def subscribed(relay: Relay, client: Client, *channels: str) -> None:
    for channel in channels:
        client.text(relay, "pusher:subscribe", {"channel": channel})
    await turns()
    client.new_messages()
