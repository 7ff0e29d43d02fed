"""Fakes for the browser port's edge (no sockets): a transport that records what the socket would
have done, aiohttp's request handler, the WebSocket endpoint and the upgrade passthrough, with
the raw upgrade and API requests they are fed; shared by the WebSocket and listener tests and
the listener's fuzz tests."""

from __future__ import annotations

import asyncio
from typing import Any

from sidecar.protocol.http_head import RequestHead


class FakeTransport:
    """Records what the socket would have done."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.aborted = False
        self.protocol: Any = None
        self.limits: tuple[int | None, int | None] | None = None
        self.peername: tuple[str, int] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self.peername if name == "peername" else default

    def write(self, data: bytes | memoryview) -> None:
        self.data += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_protocol(self) -> Any:
        return self.protocol

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.limits = (high, low)


KEY = "dGhlIHNhbXBsZSBub25jZQ=="

UPGRADE = (
    b"GET /app/key-one?protocol=7&client=js HTTP/1.1\r\n"
    b"Host: relay.example.com\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: " + KEY.encode() + b"\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"\r\n"
)
API_REQUEST = (
    b"POST /apps/1/events?auth_key=k HTTP/1.1\r\n"
    b"Host: relay.example.com\r\n"
    b"Content-Type: application/json\r\n"
    b"Content-Length: 13\r\n"
    b"\r\n"
    b'{"name":"ev"}'
)


class FakeHttp(asyncio.Protocol):
    """Stands in for aiohttp's request handler: records what it was handed."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received: list[bytes] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.append(data)


class FakeEndpoint:
    """Stands in for WebSocketEndpoint: records each upgrade."""

    def __init__(self) -> None:
        self.upgrades: list[tuple[Any, RequestHead, bytes]] = []

    def upgrade(self, transport: Any, head: RequestHead, rest: bytes) -> None:
        self.upgrades.append((transport, head, rest))


class FakePassthrough:
    """Stands in for UpgradePassthrough: wants every path but the relay's."""

    def __init__(self) -> None:
        self.upgrades: list[tuple[Any, bytes, bytes]] = []

    def wants(self, head: RequestHead) -> bool:
        return not head.path.startswith("/app/")

    def upgrade(self, transport: Any, head: RequestHead, raw_head: bytes, rest: bytes) -> None:
        self.upgrades.append((transport, raw_head, rest))
