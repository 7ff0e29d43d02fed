"""sidecar.edge.websocket: the upgrade and PusherSocket over a fake transport and a real Relay."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import hmac
import json
import logging
import random
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.config.origins import OriginPolicy
from sidecar.edge import websocket as websocket_module
from sidecar.edge.websocket import (
    UNTRUSTED_MESSAGE_BYTES,
    PusherSocket,
    WebSocketEndpoint,
    untrusted_message_limit,
)
from sidecar.engine.bad_frames import BAD_FRAME_BURST
from sidecar.engine.connection import REPLY_BACKLOG_BYTES, WRITE_BUDGET, ConnectionState
from sidecar.engine.relay import Relay
from sidecar.protocol.http_head import RequestHead, read_head
from sidecar.protocol.pusher import CLOSE_REASONS, CloseCode
from tests.support.edge_fakes import FakeTransport
from tests.support.local_relay import local_relay, start_local

APP = AppConfig(id="1", key="key-one", secret="secret-one")
LIMITS = LimitsConfig(activity_timeout=30, pong_timeout=10, max_client_message_bytes=1024)
ORIGIN = "https://app.example.com"
KEY = "dGhlIHNhbXBsZSBub25jZQ=="
ACCEPT = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
RNG = random.Random(7)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def client_frame(
    opcode: int, payload: bytes = b"", *, fin: bool = True, masked: bool = True
) -> bytes:
    first = (0x80 if fin else 0) | opcode
    bit = 0x80 if masked else 0
    n = len(payload)
    if n < 126:
        header = bytes((first, bit | n))
    elif n < 1 << 16:
        header = struct.pack("!BBH", first, bit | 126, n)
    else:
        header = struct.pack("!BBQ", first, bit | 127, n)
    if not masked:
        return header + payload
    mask = RNG.randbytes(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_text(event: str, data: Any = None, **fields: Any) -> bytes:
    frame: dict[str, Any] = {"event": event, **fields}
    if data is not None:
        frame["data"] = data
    return client_frame(OP_TEXT, json.dumps(frame).encode())


def client_close(code: int | None = None, reason: str = "") -> bytes:
    payload = b"" if code is None else struct.pack("!H", code) + reason.encode()
    return client_frame(OP_CLOSE, payload)


def server_frames(data: bytes) -> list[tuple[int, bytes]]:
    """Unmasked, final server frames, checked as a client would."""
    frames = []
    i = 0
    while i < len(data):
        first, second = data[i], data[i + 1]
        assert first & 0x80, "server frames are final"
        assert first & 0x70 == 0
        assert not second & 0x80, "server frames are never masked"
        length = second & 0x7F
        i += 2
        if length == 126:
            (length,) = struct.unpack_from("!H", data, i)
            i += 2
        elif length == 127:
            (length,) = struct.unpack_from("!Q", data, i)
            i += 8
        assert i + length <= len(data), "truncated frame"
        frames.append((first & 0x0F, bytes(data[i : i + length])))
        i += length
    return frames


class Client:
    """One upgraded connection: the fake transport and what the server wrote to it."""

    def __init__(self, transport: FakeTransport) -> None:
        self.transport = transport
        self._seen = 0

    @property
    def http(self) -> bytes:
        head, sep, _ = bytes(self.transport.data).partition(b"\r\n\r\n")
        assert sep
        return head + sep

    @property
    def socket(self) -> PusherSocket:
        assert isinstance(self.transport.protocol, PusherSocket)
        return self.transport.protocol

    def frames(self) -> list[tuple[int, bytes]]:
        return server_frames(bytes(self.transport.data)[len(self.http) :])

    def new_frames(self) -> list[tuple[int, bytes]]:
        frames = self.frames()
        fresh = frames[self._seen :]
        self._seen = len(frames)
        return fresh

    def messages(self) -> list[dict[str, Any]]:
        return [json.loads(p) for op, p in self.frames() if op == OP_TEXT]

    def close_frame(self) -> tuple[int, str]:
        closes = [p for op, p in self.frames() if op == OP_CLOSE]
        assert len(closes) == 1, self.frames()
        (code,) = struct.unpack("!H", closes[0][:2])
        return code, closes[0][2:].decode()

    def send(self, data: bytes) -> None:
        self.socket.data_received(data)


def head_for(
    path: str = f"/app/{APP.key}?protocol=7&client=js&version=8.4.0",
    *,
    origin: str | None = ORIGIN,
    key: str | None = KEY,
    version: str | None = "13",
) -> RequestHead:
    lines = [f"GET {path} HTTP/1.1", "Host: relay.example.com:443", "Upgrade: websocket"]
    lines.append("Connection: keep-alive, Upgrade")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    head = read_head("\r\n".join(lines).encode())
    assert head is not None and head.is_websocket_upgrade
    return head


async def turns(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = local_relay(AppRegistry((APP,)), LIMITS)
    start_local(r)
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


@pytest.fixture
def endpoint(relay: Relay) -> WebSocketEndpoint:
    return WebSocketEndpoint(relay, OriginPolicy([ORIGIN]))


def upgrade(
    endpoint: WebSocketEndpoint, head: RequestHead | None = None, rest: bytes = b""
) -> Client:
    transport = FakeTransport()
    endpoint.upgrade(transport, head or head_for(), rest)  # type: ignore[arg-type]
    return Client(transport)


async def opened(endpoint: WebSocketEndpoint) -> Client:
    client = upgrade(endpoint)
    await turns()
    assert client.new_frames()[0][0] == OP_TEXT  # connection_established
    return client


# The upgrade --------------------------------------------------------------------------------


async def test_good_upgrade_gives_101_and_connection_established(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    client = upgrade(endpoint)
    status, *lines = client.http.decode().split("\r\n")
    assert status == "HTTP/1.1 101 Switching Protocols"
    assert f"Sec-WebSocket-Accept: {ACCEPT}" in lines
    assert isinstance(client.transport.protocol, PusherSocket)
    assert not client.transport.closed and not client.transport.aborted
    # The reply is written at once, not after a loop turn.
    (message,) = client.messages()
    assert message["event"] == "pusher:connection_established"
    data = json.loads(message["data"])
    assert data["activity_timeout"] == 30
    conn = relay.connections[data["socket_id"]]
    assert conn.app_id == APP.id
    assert client.socket.conn is conn
    assert client.transport.limits == (WRITE_BUDGET, WRITE_BUDGET // 4)


async def test_accept_is_computed_from_the_clients_key(endpoint: WebSocketEndpoint) -> None:
    key = base64.b64encode(b"sixteen byte key").decode()
    client = upgrade(endpoint, head_for(key=key))
    expected = base64.b64encode(
        hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
    ).decode()
    assert f"Sec-WebSocket-Accept: {expected}".encode() in client.http


async def test_no_origin_header_is_allowed(relay: Relay, endpoint: WebSocketEndpoint) -> None:
    client = upgrade(endpoint, head_for(origin=None))
    assert client.http.startswith(b"HTTP/1.1 101 ")
    assert len(relay.connections) == 1


def refused(transport: FakeTransport) -> tuple[str, str, dict[str, Any]]:
    head, _, body = bytes(transport.data).partition(b"\r\n\r\n")
    status, *lines = head.decode().split("\r\n")
    return status, "\r\n".join(lines), json.loads(body)


@pytest.mark.parametrize(
    "origin", ["https://evil.example.com", "http://app.example.com", "null", "garbage"]
)
async def test_refused_origin_gets_403_and_no_upgrade(
    relay: Relay, endpoint: WebSocketEndpoint, origin: str
) -> None:
    transport = FakeTransport()
    endpoint.upgrade(transport, head_for(origin=origin), client_text("pusher:ping"))  # type: ignore[arg-type]
    status, headers, body = refused(transport)
    assert status == "HTTP/1.1 403 Forbidden"
    assert "Connection: close" in headers
    assert body == {"error": "Origin not allowed"}
    assert b"101" not in transport.data
    assert transport.closed
    assert transport.protocol is None
    assert relay.connections == {}


@pytest.mark.parametrize("key", [None, "short", "dGhlIHNhbXBsZSBub25jZQ"])
async def test_bad_key_gets_400(relay: Relay, endpoint: WebSocketEndpoint, key: str | None) -> None:
    transport = FakeTransport()
    endpoint.upgrade(transport, head_for(key=key), b"")  # type: ignore[arg-type]
    status, _headers, body = refused(transport)
    assert status == "HTTP/1.1 400 Bad Request"
    assert "Sec-WebSocket-Key" in body["error"]
    assert transport.closed and transport.protocol is None
    assert relay.connections == {}


@pytest.mark.parametrize("version", [None, "8"])
async def test_bad_version_gets_426(
    relay: Relay, endpoint: WebSocketEndpoint, version: str | None
) -> None:
    transport = FakeTransport()
    endpoint.upgrade(transport, head_for(version=version), b"")  # type: ignore[arg-type]
    status, headers, _body = refused(transport)
    assert status == "HTTP/1.1 426 Upgrade Required"
    assert "Sec-WebSocket-Version: 13" in headers
    assert transport.closed and transport.protocol is None
    assert relay.connections == {}


async def test_an_upgrade_finishing_while_stopping_is_told_4200_and_never_opened(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    endpoint.closing = True
    client = upgrade(endpoint)
    assert client.http.startswith(b"HTTP/1.1 101 ")
    (message,) = client.messages()
    assert (message["event"], message["data"]["code"]) == ("pusher:error", 4200)
    assert client.close_frame() == (4200, CLOSE_REASONS[CloseCode.RECONNECT])
    assert relay.connections == {}


async def test_over_max_connections_is_told_4004_and_never_opened(relay: Relay) -> None:
    relay.limits = dataclasses.replace(LIMITS, max_connections=1)
    endpoint = WebSocketEndpoint(relay, OriginPolicy([ORIGIN]))
    await opened(endpoint)
    client = upgrade(endpoint)
    (message,) = client.messages()
    assert (message["event"], message["data"]["code"]) == ("pusher:error", 4004)
    assert client.close_frame() == (4004, CLOSE_REASONS[CloseCode.OVER_QUOTA])
    assert len(relay.connections) == 1


# Refused after the upgrade, in Pusher's terms -----------------------------------------------


@pytest.mark.parametrize(
    ("path", "code"),
    [
        ("/app/no-such-key?protocol=7", CloseCode.APP_NOT_FOUND),
        ("/app/KEY-ONE?protocol=7", CloseCode.APP_NOT_FOUND),
        ("/apps/key-one?protocol=7", CloseCode.PATH_NOT_FOUND),
        ("/app/?protocol=7", CloseCode.PATH_NOT_FOUND),
        ("/app/key-one/extra?protocol=7", CloseCode.PATH_NOT_FOUND),
        ("/?protocol=7", CloseCode.PATH_NOT_FOUND),
        ("/app/key-one", CloseCode.NO_PROTOCOL),
        ("/app/key-one?protocol=", CloseCode.NO_PROTOCOL),
        ("/app/key-one?protocol=6", CloseCode.UNSUPPORTED_PROTOCOL),
        ("/app/key-one?protocol=seven", CloseCode.UNSUPPORTED_PROTOCOL),
    ],
)
async def test_refused_connection_gets_101_then_error_then_close(
    relay: Relay, endpoint: WebSocketEndpoint, path: str, code: int
) -> None:
    client = upgrade(endpoint, head_for(path))
    assert client.http.startswith(b"HTTP/1.1 101 ")
    (message,) = client.messages()
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == code
    assert message["data"]["message"] == CLOSE_REASONS[code]
    assert client.close_frame() == (code, CLOSE_REASONS[code])
    assert [op for op, _ in client.frames()] == [OP_TEXT, OP_CLOSE]
    assert relay.connections == {}
    assert client.socket.conn is None
    # The close handshake: the server waits for the client's close frame.
    assert not client.transport.closed
    client.send(client_close(code))
    assert client.transport.closed
    assert len(client.frames()) == 2  # no second close frame
    client.socket.connection_lost(None)


async def test_refused_client_that_never_answers_the_close_is_cut_off(
    endpoint: WebSocketEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket_module, "CLOSE_TIMEOUT", 0.01)
    client = upgrade(endpoint, head_for("/app/unknown?protocol=7"))
    assert not client.transport.aborted
    await asyncio.sleep(0.05)
    assert client.transport.aborted


async def test_refused_client_frames_other_than_close_are_ignored(
    endpoint: WebSocketEndpoint,
) -> None:
    client = upgrade(endpoint, head_for("/app/unknown?protocol=7"))
    before = len(client.frames())
    client.send(client_text("pusher:ping") + client_frame(OP_PING, b"x"))
    await turns()
    assert len(client.frames()) == before
    client.socket.connection_lost(None)


async def test_close_timer_is_cancelled_when_the_connection_goes(
    endpoint: WebSocketEndpoint, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(websocket_module, "CLOSE_TIMEOUT", 0.01)
    client = upgrade(endpoint, head_for("/app/unknown?protocol=7"))
    client.socket.connection_lost(None)
    await asyncio.sleep(0.05)
    assert not client.transport.aborted


# Bytes after the head -----------------------------------------------------------------------


async def test_bytes_after_the_head_are_processed(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    rest = client_text("pusher:subscribe", {"channel": "news"}) + client_text("pusher:ping", {})
    client = upgrade(endpoint, rest=rest)
    await turns()
    events = [m["event"] for m in client.messages()]
    assert events == [
        "pusher:connection_established",
        "pusher_internal:subscription_succeeded",
        "pusher:pong",
    ]
    assert client.socket.conn is not None
    assert client.socket.conn.subscriptions == {"news"}


async def test_partial_frame_after_the_head_is_completed_later(
    endpoint: WebSocketEndpoint,
) -> None:
    frame = client_text("pusher:ping", {})
    client = upgrade(endpoint, rest=frame[:3])
    await turns()
    assert [m["event"] for m in client.messages()] == ["pusher:connection_established"]
    client.send(frame[3:])
    await turns()
    assert [m["event"] for m in client.messages()][-1] == "pusher:pong"


async def test_close_frame_after_the_head_of_a_refused_connection(
    endpoint: WebSocketEndpoint,
) -> None:
    client = upgrade(endpoint, head_for("/app/nope?protocol=7"), rest=client_close(1000))
    assert client.close_frame()[0] == CloseCode.APP_NOT_FOUND
    assert client.transport.closed
    client.socket.connection_lost(None)


# Frames from the client ---------------------------------------------------------------------


async def test_text_frames_reach_the_relay(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.send(client_text("pusher:ping", {}))
    await turns()
    (frame,) = client.new_frames()
    assert json.loads(frame[1]) == {"event": "pusher:pong", "data": "{}"}


async def test_fragmented_text_reaches_the_relay(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    payload = json.dumps({"event": "pusher:ping", "data": {}}).encode()
    client.send(client_frame(OP_TEXT, payload[:5], fin=False))
    client.send(client_frame(OP_PING, b"in between"))
    client.send(client_frame(OP_CONT, payload[5:]))
    await turns()
    frames = client.new_frames()
    assert (OP_PONG, b"in between") in frames
    assert (OP_TEXT, b'{"event":"pusher:pong","data":"{}"}') in frames


async def test_binary_frame_gets_a_pusher_error(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_BINARY, b"\x00\x01"))
    await turns()
    (frame,) = client.new_frames()
    message = json.loads(frame[1])
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == 4300
    assert not client.transport.closed


async def test_ping_frame_gets_a_pong(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_PING, b"are you there"))
    await turns()
    assert client.new_frames() == [(OP_PONG, b"are you there")]
    client.send(client_frame(OP_PING, b""))
    await turns()
    assert client.new_frames() == [(OP_PONG, b"")]


async def test_control_frames_count_as_activity(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    for opcode in (OP_PING, OP_PONG):
        conn.heartbeat.last_activity = 0.0
        client.send(client_frame(opcode, b""))
        assert conn.heartbeat.last_activity > 0.0


async def test_client_close_is_echoed_then_the_transport_closed(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    client = await opened(endpoint)
    client.send(client_close(4000, "bye"))
    await turns()
    assert client.new_frames() == [(OP_CLOSE, struct.pack("!H", 4000))]
    assert client.transport.closed
    assert not client.transport.aborted
    # Anything after the close frame is not read.
    client.send(client_text("pusher:ping", {}) + client_close(1000))
    await turns()
    assert client.new_frames() == []
    client.socket.connection_lost(None)
    assert relay.connections == {}


async def test_client_close_without_a_code_is_answered_with_1000(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_close())
    await turns()
    assert client.new_frames() == [(OP_CLOSE, struct.pack("!H", 1000))]
    assert client.transport.closed
    client.socket.connection_lost(None)


async def test_frames_after_a_close_in_the_same_read_are_ignored(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_close(1000) + client_text("pusher:ping", {}))
    await turns()
    assert client.new_frames() == [(OP_CLOSE, struct.pack("!H", 1000))]
    client.socket.connection_lost(None)


async def test_server_initiated_close_waits_for_the_clients_close(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    conn.close(CloseCode.PONG_NOT_RECEIVED)
    await turns()
    assert client.new_frames() == [
        (OP_CLOSE, struct.pack("!H", 4201) + CLOSE_REASONS[4201].encode())
    ]
    assert not client.transport.closed
    # Frames still in flight from the client are not answered once the close is sent.
    client.send(client_frame(OP_PING, b"late") + client_text("pusher:ping", {}))
    await turns()
    assert client.new_frames() == []
    client.send(client_close(4201))
    await turns()
    assert client.transport.closed
    assert client.new_frames() == []  # no second close frame
    client.socket.connection_lost(None)


async def test_close_with_a_one_byte_payload_is_a_protocol_error(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_CLOSE, b"\x03"))
    await turns()
    assert client.close_frame()[0] == 1002
    assert client.transport.closed
    client.socket.connection_lost(None)


# Framing errors -----------------------------------------------------------------------------


async def test_unmasked_frame_closes_with_1002_and_nothing_more_is_read(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_TEXT, b'{"event":"pusher:ping","data":{}}', masked=False))
    await turns()
    code, reason = client.close_frame()
    assert code == 1002
    assert "mask" in reason
    assert client.transport.closed  # a failed connection does not wait for the client's close
    conn = client.socket.conn
    assert conn is not None and conn.close_code == 1002
    client.send(client_text("pusher:ping", {}) + client_frame(OP_PING, b"x") + client_close(1000))
    await turns()
    assert [op for op, _ in client.new_frames()] == [OP_CLOSE]
    client.socket.connection_lost(None)


async def closing_client(endpoint: WebSocketEndpoint, refused: bool) -> Client:
    """A connection whose close frame the server has sent, still waiting for the client's."""
    if refused:
        client = upgrade(endpoint, head_for("/app/nope?protocol=7"))
    else:
        client = await opened(endpoint)
        assert client.socket.conn is not None
        client.socket.conn.close(CloseCode.PONG_NOT_RECEIVED)
        await turns()
    assert [op for op, _ in client.frames()][-1] == OP_CLOSE
    assert not client.transport.closed
    return client


@pytest.mark.parametrize("refused", [True, False], ids=["refused", "server-closing"])
async def test_framing_error_after_the_close_was_sent_closes_at_once(
    endpoint: WebSocketEndpoint, refused: bool
) -> None:
    client = await closing_client(endpoint, refused)
    client.send(client_frame(OP_TEXT, b"x", masked=False))
    await turns()
    assert client.transport.closed or client.transport.aborted
    client.socket.connection_lost(None)


@pytest.mark.parametrize("refused", [True, False], ids=["refused", "server-closing"])
async def test_framing_error_after_the_close_was_sent_is_cut_off_by_the_close_timeout(
    endpoint: WebSocketEndpoint, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    monkeypatch.setattr(websocket_module, "CLOSE_TIMEOUT", 0.01)
    client = await closing_client(endpoint, refused)
    frames = client.frames()
    client.send(client_frame(OP_TEXT, b"x", masked=False))
    await asyncio.sleep(0.05)
    assert client.transport.closed or client.transport.aborted
    assert client.frames() == frames  # no second close frame
    client.socket.connection_lost(None)


async def test_over_size_message_closes_with_1009(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    header_only = client_frame(OP_TEXT, b"x" * 70_000)[:14]
    client.send(header_only)
    await turns()
    assert client.close_frame()[0] == 1009
    assert client.transport.closed
    client.socket.connection_lost(None)


async def test_message_of_the_limit_is_fine(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    payload = json.dumps({"event": "pusher:ping", "data": {"pad": ""}})
    payload = payload.replace('""', '"' + "x" * (1024 - len(payload)) + '"')
    assert len(payload) == LIMITS.max_client_message_bytes
    client.send(client_frame(OP_TEXT, payload.encode()))
    await turns()
    assert [json.loads(p)["event"] for _, p in client.new_frames()] == ["pusher:pong"]


async def test_invalid_utf8_closes_with_1007(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_TEXT, b"\xff\xfe"))
    await turns()
    assert client.close_frame()[0] == 1007
    assert client.transport.closed
    client.socket.connection_lost(None)


# Connection lost ----------------------------------------------------------------------------


async def test_connection_lost_forgets_the_connection_and_logs_the_close_code(
    relay: Relay, endpoint: WebSocketEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    client.send(client_close(1001))
    await turns()
    with caplog.at_level(logging.INFO, logger="sidecar.connections"):
        client.socket.connection_lost(None)
    assert relay.connections == {}
    assert conn.state is ConnectionState.CLOSED
    (record,) = [r for r in caplog.records if r.getMessage() == "connection closed"]
    assert record.close_code == 1001  # type: ignore[attr-defined]
    assert record.socket_id == conn.socket_id  # type: ignore[attr-defined]
    assert record.app_id == APP.id  # type: ignore[attr-defined]
    assert record.duration_s >= 0  # type: ignore[attr-defined]


async def test_connection_lost_without_a_close_logs_1006(
    relay: Relay, endpoint: WebSocketEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    client = await opened(endpoint)
    client.send(client_text("pusher:subscribe", {"channel": "news"}))
    await turns()
    assert relay.channels[APP.id].subscribers("news")
    with caplog.at_level(logging.INFO, logger="sidecar.connections"):
        client.socket.connection_lost(ConnectionResetError())
    assert relay.connections == {}
    assert not relay.channels[APP.id].subscribers("news")
    (record,) = [r for r in caplog.records if r.getMessage() == "connection closed"]
    assert record.close_code == 1006  # type: ignore[attr-defined]


async def test_connection_lost_of_a_refused_connection_logs_nothing(
    endpoint: WebSocketEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    client = upgrade(endpoint, head_for("/app/nope?protocol=7"))
    with caplog.at_level(logging.INFO, logger="sidecar.connections"):
        client.socket.connection_lost(None)
    assert not [r for r in caplog.records if r.getMessage() == "connection closed"]


async def test_data_after_connection_lost_is_harmless(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    client = await opened(endpoint)
    client.socket.connection_lost(None)
    client.send(client_text("pusher:ping", {}))
    await turns()
    assert client.new_frames() == []
    assert relay.connections == {}


# Flow control -------------------------------------------------------------------------------


async def test_wait_drained_returns_at_once_when_not_paused(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    assert not client.socket.paused
    await asyncio.wait_for(client.socket.wait_drained(), 1)


async def test_wait_drained_waits_for_resume_writing(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    socket = client.socket
    socket.pause_writing()
    assert socket.paused
    waiter = asyncio.ensure_future(socket.wait_drained())
    await turns()
    assert not waiter.done()
    socket.resume_writing()
    assert not socket.paused
    await asyncio.wait_for(waiter, 1)
    socket.resume_writing()  # a second resume is harmless


async def test_pausing_and_resuming_tell_the_connection_whether_to_write_at_once(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None and conn.direct_write is not None
    client.socket.pause_writing()
    assert conn.direct_write is None  # a broadcast queues for it now, within its limit
    assert not conn.write_now(b"x")
    client.socket.resume_writing()
    assert conn.direct_write is not None


async def test_wait_drained_on_a_closing_transport_raises(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.socket.pause_writing()
    client.transport.closed = True
    with pytest.raises(ConnectionResetError):
        await client.socket.wait_drained()


async def test_connection_lost_wakes_a_drain_waiter_with_an_error(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.socket.pause_writing()
    waiter = asyncio.ensure_future(client.socket.wait_drained())
    await turns()
    client.socket.connection_lost(None)
    with pytest.raises(ConnectionResetError):
        await asyncio.wait_for(waiter, 1)


async def test_paused_transport_holds_frames_until_resumed(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.socket.pause_writing()
    client.send(client_text("pusher:ping", {}))
    await turns()
    assert client.new_frames() == []
    client.socket.resume_writing()
    await turns()
    assert [json.loads(p)["event"] for _, p in client.new_frames()] == ["pusher:pong"]


async def test_abort_aborts_the_transport(endpoint: WebSocketEndpoint) -> None:
    client = await opened(endpoint)
    client.socket.abort()
    assert client.transport.aborted


# What a client that does not read can make the relay hold ---------------------------------


async def test_a_client_flooding_bad_frames_without_reading_is_closed_with_4101(
    endpoint: WebSocketEndpoint,
) -> None:
    # Issue 13: 140,000 one-byte binary frames, never read, held ~16 MB of pusher:error.
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    client.socket.pause_writing()  # the transport is full: the client does not read
    batch = client_frame(OP_BINARY, b"x") * 1000
    for _ in range(140):
        client.send(batch)
    await turns()
    assert conn.close_code == CloseCode.TOO_MANY_BAD_FRAMES == 4101
    assert conn.queued_bytes <= REPLY_BACKLOG_BYTES
    assert len(client.transport.data) < 1024  # nothing but the upgrade and the welcome
    client.socket.resume_writing()
    await turns()
    assert client.close_frame() == (4101, CLOSE_REASONS[CloseCode.TOO_MANY_BAD_FRAMES])
    client.socket.connection_lost(None)


async def test_a_reading_client_gets_every_error_until_the_budget_is_spent(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_frame(OP_BINARY, b"x") * BAD_FRAME_BURST)
    await turns()
    errors = [m for m in client.messages() if m["event"] == "pusher:error"]
    assert len(errors) == BAD_FRAME_BURST
    assert not client.transport.closed
    client.send(client_frame(OP_BINARY, b"x") * 5)
    await turns()
    assert client.close_frame()[0] == 4101
    client.socket.connection_lost(None)


@pytest.mark.parametrize(
    "ping",
    [client_frame(OP_PING, b"p" * 125), client_text("pusher:ping", {})],
    ids=["websocket-ping", "pusher-ping"],
)
async def test_pings_from_a_client_not_reading_hold_a_bounded_backlog(
    endpoint: WebSocketEndpoint, ping: bytes
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    client.socket.pause_writing()
    for _ in range(100):
        client.send(ping * 100)
    await turns()
    assert 0 < conn.queued_bytes <= REPLY_BACKLOG_BYTES
    assert conn.state is ConnectionState.OPEN  # pinging is not a bad frame
    client.socket.connection_lost(None)


# Several frames in one read -----------------------------------------------------------------


async def test_frames_read_before_a_broken_one_are_handled_then_the_connection_fails(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    broken = client_frame(OP_TEXT, b"{}", masked=False)
    client.send(client_text("pusher:subscribe", {"channel": "news"}) + broken)
    await turns()
    events = [json.loads(p)["event"] for op, p in client.new_frames() if op == OP_TEXT]
    assert events == ["pusher_internal:subscription_succeeded"]
    assert conn.subscriptions == {"news"}
    assert client.close_frame()[0] == 1002
    assert client.transport.closed
    client.socket.connection_lost(None)


async def test_a_close_before_a_broken_frame_in_the_same_read_is_a_normal_close(
    endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(endpoint)
    client.send(client_close(1000) + client_frame(OP_TEXT, b"{}", masked=False))
    await turns()
    assert client.close_frame()[0] == 1000
    client.socket.connection_lost(None)


# How large a frame a connection may send ----------------------------------------------------

LARGE_LIMITS = LimitsConfig(max_client_message_bytes=64 * 1024)


@pytest.fixture
async def large_endpoint() -> AsyncIterator[WebSocketEndpoint]:
    relay = local_relay(AppRegistry((APP,)), LARGE_LIMITS)
    start_local(relay)
    yield WebSocketEndpoint(relay, OriginPolicy([ORIGIN]))
    relay.stop()
    for conn in list(relay.connections.values()):
        relay.forget(conn)


def padded_ping(size: int) -> bytes:
    """A pusher:ping text frame of exactly `size` bytes of payload."""
    payload = json.dumps({"event": "pusher:ping", "data": {"pad": ""}})
    return client_frame(
        OP_TEXT, payload.replace('""', '"' + "x" * (size - len(payload)) + '"').encode()
    )


async def test_an_untrusted_connection_may_send_small_messages_only(
    large_endpoint: WebSocketEndpoint,
) -> None:
    limit = untrusted_message_limit(LARGE_LIMITS)
    assert limit == UNTRUSTED_MESSAGE_BYTES < LARGE_LIMITS.max_client_message_bytes
    client = await opened(large_endpoint)
    client.send(padded_ping(limit))
    await turns()
    assert [json.loads(p)["event"] for _, p in client.new_frames()] == ["pusher:pong"]
    # The header of a 64 KiB frame is refused at once: nothing of it is kept.
    client.send(client_frame(OP_TEXT, b"x" * (64 * 1024 - 100))[:8])
    await turns()
    assert client.close_frame()[0] == 1009
    client.socket.connection_lost(None)


async def test_a_public_subscription_does_not_make_a_connection_trusted(
    large_endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(large_endpoint)
    client.send(client_text("pusher:subscribe", {"channel": "news"}))
    await turns()
    client.send(padded_ping(UNTRUSTED_MESSAGE_BYTES + 1))
    await turns()
    assert client.close_frame()[0] == 1009
    client.socket.connection_lost(None)


async def test_a_private_subscription_allows_messages_up_to_the_configured_limit(
    large_endpoint: WebSocketEndpoint,
) -> None:
    client = await opened(large_endpoint)
    conn = client.socket.conn
    assert conn is not None
    channel = "private-room"
    signature = hmac.new(
        APP.secret.encode(), f"{conn.socket_id}:{channel}".encode(), hashlib.sha256
    ).hexdigest()
    client.send(
        client_text("pusher:subscribe", {"channel": channel, "auth": f"{APP.key}:{signature}"})
    )
    await turns()
    assert conn.subscriptions == {channel}
    client.new_frames()
    client.send(padded_ping(LARGE_LIMITS.max_client_message_bytes))
    await turns()
    assert [json.loads(p)["event"] for _, p in client.new_frames()] == ["pusher:pong"]
    client.socket.connection_lost(None)


# Freed when closed --------------------------------------------------------------------------


async def test_a_closed_socket_lets_go_of_its_connection(
    relay: Relay, endpoint: WebSocketEndpoint
) -> None:
    client = await opened(endpoint)
    conn = client.socket.conn
    assert conn is not None
    client.socket.connection_lost(None)
    # The connection refers to the socket (its sink); the socket no longer to it: no cycle.
    assert client.socket.conn is None
    assert relay.connections == {}
