"""sidecar.edge.passthrough: the app's WebSocket upgrades spliced through EdgeProtocol."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from sidecar.config.edge import UpstreamConfig
from sidecar.edge.listener import EdgeProtocol
from sidecar.edge.passthrough import (
    AppSide,
    Splice,
    UpgradePassthrough,
    sidecar_path,
    splice_refusal,
)
from sidecar.protocol.forwarded import TrustedProxies
from sidecar.protocol.http_head import RequestHead, read_head
from tests.support.process import free_port
from tests.support.upstream_apps import PROTOCOL, Cable


class RelayStandIn:
    """Stands in for the relay's endpoint: /app/ upgrades must still land here."""

    def __init__(self) -> None:
        self.heads: list[RequestHead] = []

    def upgrade(self, transport: asyncio.Transport, head: RequestHead, rest: bytes) -> None:
        self.heads.append(head)
        transport.close()


def http_not_expected() -> asyncio.Protocol:
    raise AssertionError("an upgrade was handed to the HTTP server")


@pytest.fixture
def cable() -> Cable:
    return Cable()


@pytest.fixture
async def cable_server(cable: Cable) -> AsyncIterator[TestServer]:
    server = TestServer(cable.app, host="127.0.0.1")
    await server.start_server()
    yield server
    await server.close()


class Front:
    """EdgeProtocol on a loopback port (plain TCP), with the passthrough to `upstream`."""

    def __init__(self, upstream: UpstreamConfig) -> None:
        self.relay = RelayStandIn()
        self.passthrough = UpgradePassthrough(upstream, TrustedProxies())
        self.server: asyncio.Server | None = None

    async def start(self) -> Front:
        loop = asyncio.get_running_loop()
        self.server = await loop.create_server(
            lambda: EdgeProtocol(http_not_expected, self.relay, self.passthrough),  # type: ignore[arg-type]
            "127.0.0.1",
            0,
        )
        return self

    def url(self, path: str) -> str:
        assert self.server is not None
        return f"ws://127.0.0.1:{self.server.sockets[0].getsockname()[1]}{path}"

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()


@pytest.fixture
async def front_factory() -> AsyncIterator[Any]:
    fronts: list[Front] = []

    async def make(upstream: UpstreamConfig) -> Front:
        front = await Front(upstream).start()
        fronts.append(front)
        return front

    yield make
    for front in fronts:
        await front.close()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def tcp(server: TestServer, **timeouts: float) -> UpstreamConfig:
    assert server.port is not None
    return UpstreamConfig(url="test", host="127.0.0.1", port=server.port, **timeouts)


# Through to the app ------------------------------------------------------------------------


async def test_frames_are_echoed_through_with_subprotocol_and_extension(
    front_factory: Any, cable_server: TestServer, cable: Cable, session: aiohttp.ClientSession
) -> None:
    front = await front_factory(tcp(cable_server))
    async with session.ws_connect(
        front.url("/cable?token=abc"),
        protocols=(PROTOCOL,),
        compress=15,
        origin="https://app.example.com",
        headers={"X-Forwarded-For": "6.6.6.6"},
        max_msg_size=0,
    ) as ws:
        assert ws.protocol == PROTOCOL  # negotiated by the app, through the splice
        assert ws.compress == 15  # permessage-deflate too
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        big = os.urandom(2 * 1024 * 1024)
        await ws.send_bytes(big)
        assert await ws.receive_bytes(timeout=10) == big
    await asyncio.wait_for(cable.closed.wait(), 5)
    (head,) = cable.heads
    assert head["Origin"] == "https://app.example.com"
    assert head["X-Forwarded-For"] == "127.0.0.1"  # the client's own claim is not passed on
    assert head["X-Forwarded-Proto"] == "http"
    assert head["X-Forwarded-Host"] == head["Host"]
    assert front.relay.heads == []


async def test_the_app_closing_reaches_the_client(
    front_factory: Any, cable_server: TestServer, session: aiohttp.ClientSession
) -> None:
    front = await front_factory(tcp(cable_server))
    async with session.ws_connect(front.url("/cable"), protocols=(PROTOCOL,)) as ws:
        await ws.send_str("close-me")
        message = await ws.receive(timeout=5)
        assert message.type is aiohttp.WSMsgType.CLOSE
        assert ws.close_code == 4001


async def test_the_apps_refusal_passes_through(
    front_factory: Any, cable_server: TestServer, session: aiohttp.ClientSession
) -> None:
    front = await front_factory(tcp(cable_server))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(front.url("/plain"))
    assert info.value.status == 404


async def test_relay_paths_still_go_to_the_relay(
    front_factory: Any, cable_server: TestServer, cable: Cable, session: aiohttp.ClientSession
) -> None:
    front = await front_factory(tcp(cable_server))
    with pytest.raises(aiohttp.ClientError):
        await session.ws_connect(front.url("/app/some-key?protocol=7"))
    # (aiohttp's client tries a GET twice when the connection closes unanswered)
    assert {head.path for head in front.relay.heads} == {"/app/some-key"}
    assert cable.heads == []


async def test_over_a_unix_socket(
    front_factory: Any, cable: Cable, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    path = str(tmp_path / "app.sock")
    front = await front_factory(UpstreamConfig(url=f"unix:{path}", socket=path))
    with pytest.raises(aiohttp.WSServerHandshakeError) as info:
        await session.ws_connect(front.url("/cable"))
    assert info.value.status == 502  # the socket is not there yet
    runner = web.AppRunner(cable.app)
    await runner.setup()
    await web.UnixSite(runner, path).start()
    try:
        async with session.ws_connect(front.url("/cable"), protocols=(PROTOCOL,)) as ws:
            await ws.send_str("over unix")
            assert await ws.receive_str(timeout=5) == "over unix"
    finally:
        await runner.cleanup()


# The app unavailable ------------------------------------------------------------------------


async def test_app_down_is_502_before_the_upgrade(
    front_factory: Any, session: aiohttp.ClientSession
) -> None:
    front = await front_factory(UpstreamConfig(url="test", host="127.0.0.1", port=free_port()))
    async with session.get(
        front.url("/cable").replace("ws:", "http:"),
        headers={
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    ) as response:
        assert response.status == 502
        assert (await response.json())["error"].startswith("the app is not reachable")


class Silent(asyncio.Protocol):
    """Accepts connections and never says a word."""


async def test_app_silent_is_504(front_factory: Any, session: aiohttp.ClientSession) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        front = await front_factory(
            UpstreamConfig(url="test", host="127.0.0.1", port=port, timeout=0.2)
        )
        with pytest.raises(aiohttp.WSServerHandshakeError) as info:
            await session.ws_connect(front.url("/cable"))
        assert info.value.status == 504
    finally:
        server.close()


# Flow control, with stand-in transports ----------------------------------------------------


class FakeTransport:
    def __init__(self) -> None:
        self.written = bytearray()
        self.reading = True
        self.closed = False
        self.eof_written = False

    def write(self, data: bytes) -> None:
        self.written += data

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof_written = True

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True

    def close(self) -> None:
        self.closed = True


def spliced() -> tuple[Splice, Splice]:
    client, app = Splice(FakeTransport()), Splice(FakeTransport())  # type: ignore[arg-type]
    Splice.join(client, app)
    return client, app


def test_a_full_side_stops_reading_from_the_other() -> None:
    client, app = spliced()
    app.pause_writing()  # the app's socket is full: stop taking bytes from the client
    assert not client.transport.reading  # type: ignore[union-attr]
    assert app.transport.reading  # type: ignore[union-attr]
    app.resume_writing()
    assert client.transport.reading  # type: ignore[union-attr]
    client.pause_writing()
    assert not app.transport.reading  # type: ignore[union-attr]


def test_bytes_cross_and_an_end_closes_the_other_side() -> None:
    client, app = spliced()
    client.data_received(b"to the app")
    app.data_received(b"to the client")
    assert client.transport.written == b"to the client"  # type: ignore[union-attr]
    assert app.transport.written == b"to the app"  # type: ignore[union-attr]
    assert client.eof_received() is False
    assert app.transport.closed  # type: ignore[union-attr]
    client2, app2 = spliced()
    app2.connection_lost(None)
    assert client2.transport.closed  # type: ignore[union-attr]


def test_bytes_read_before_the_join_are_kept() -> None:
    client, app = Splice(FakeTransport()), Splice(FakeTransport())  # type: ignore[arg-type]
    client.data_received(b"early")
    Splice.join(client, app)
    assert app.transport.written == b"early"  # type: ignore[union-attr]


# Only real upgrades, and nothing behind them (issue 13) ------------------------------------

VALID_UPGRADE = (
    b"GET /cable HTTP/1.1\r\n"
    b"Host: front.test\r\n"
    b"Upgrade: websocket\r\n"
    b"Connection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Sec-WebSocket-Version: 13\r\n"
    b"X-Forwarded-For: 6.6.6.6\r\n"
    b"X-Real-IP: 6.6.6.6\r\n"
    b"Forwarded: for=6.6.6.6\r\n\r\n"
)
SMUGGLED = (
    b"GET /admin HTTP/1.1\r\nHost: front.test\r\nX-Forwarded-For: 6.6.6.6\r\n"
    b"X-Real-IP: 6.6.6.6\r\nForwarded: for=6.6.6.6\r\n\r\n"
)


@pytest.mark.parametrize(
    "path",
    [
        "/app/key",
        "/apps/1/channels",
        "/apps",
        "/APPS/1/events",
        "//apps/1",
        "/%61pps/1",
        "/x/../apps/1",
        "/./app/key",
    ],
)
def test_the_sidecars_own_paths_are_never_the_apps(path: str) -> None:
    assert sidecar_path(path)


@pytest.mark.parametrize("path", ["/cable", "/", "/application", "/apps-old/x", "/x/apps"])
def test_other_paths_are_the_apps(path: str) -> None:
    assert not sidecar_path(path)


def head_of(raw: bytes) -> tuple[RequestHead, bytes]:
    raw_head = raw.split(b"\r\n\r\n", 1)[0]
    head = read_head(raw_head)
    assert head is not None
    return head, raw_head


def test_a_valid_upgrade_may_be_spliced() -> None:
    head, raw_head = head_of(VALID_UPGRADE)
    assert splice_refusal(head, raw_head, b"") is None


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ((b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 8"), 426),
        ((b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==", b"Sec-WebSocket-Key: short"), 400),
        ((b"HTTP/1.1\r\n", b"HTTP/1.0\r\n"), 400),
        ((b"GET /cable", b"GET http://app.internal/cable"), 400),
        ((b"Host: front.test\r\n", b"Host: a\r\nHost: b\r\n"), 400),
        ((b"Host: front.test\r\n", b""), 400),
        ((b"Connection: Upgrade\r\n", b"Connection: Upgrade\r\nContent-Length: 5\r\n"), 400),
        (
            (b"Connection: Upgrade\r\n", b"Connection: Upgrade\r\nTransfer-Encoding: chunked\r\n"),
            400,
        ),
    ],
)
def test_anything_else_is_refused(change: tuple[bytes, bytes], status: int) -> None:
    head, raw_head = head_of(VALID_UPGRADE.replace(*change))
    refusal = splice_refusal(head, raw_head, b"")
    assert refusal is not None and refusal.status == status


def test_bytes_pipelined_behind_the_head_are_refused() -> None:
    head, raw_head = head_of(VALID_UPGRADE)
    refusal = splice_refusal(head, raw_head, SMUGGLED)
    assert refusal is not None and refusal.status == 400


class RecordingApp(asyncio.Protocol):
    """An app that records every byte and answers each request head with `answer`."""

    received: bytearray
    answer = b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\nno"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        RecordingApp.received += data
        self.transport.write(self.answer)


@pytest.fixture
async def recording_app() -> AsyncIterator[int]:
    RecordingApp.received = bytearray()
    server = await asyncio.get_running_loop().create_server(RecordingApp, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_nothing_sent_after_a_refused_upgrade_reaches_the_app(
    front_factory: Any, recording_app: int
) -> None:
    front = await front_factory(UpstreamConfig(url="test", host="127.0.0.1", port=recording_app))
    port = int(front.url("/").rsplit(":", 1)[1].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(VALID_UPGRADE)
    assert (await asyncio.wait_for(reader.readuntil(b"no"), 5)).startswith(b"HTTP/1.1 404")
    writer.write(SMUGGLED)  # after the app's refusal, on the same connection
    # The connection ends (reset: the sidecar closes it with the smuggled bytes unread).
    with contextlib.suppress(ConnectionResetError):
        assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()
    received = bytes(RecordingApp.received)
    assert received.count(b"GET ") == 1
    assert b"/admin" not in received
    assert b"6.6.6.6" not in received  # X-Forwarded-For, X-Real-IP, Forwarded: the sidecar's
    assert b"X-Forwarded-For: 127.0.0.1\r\n" in received


async def test_an_upgrade_with_bytes_behind_it_never_reaches_the_app(
    front_factory: Any, recording_app: int
) -> None:
    front = await front_factory(UpstreamConfig(url="test", host="127.0.0.1", port=recording_app))
    port = int(front.url("/").rsplit(":", 1)[1].split("/")[0])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(VALID_UPGRADE + SMUGGLED)
    answer = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"nothing may follow" in answer
    assert RecordingApp.received == b""


def test_the_client_is_not_read_until_the_app_switches() -> None:
    client, app = Splice(FakeTransport()), AppSide(FakeTransport())  # type: ignore[arg-type]
    client.held = True
    client.transport.pause_reading()  # type: ignore[union-attr]
    Splice.join(client, app)
    app.pause_writing()
    app.resume_writing()  # the app's socket drained: still not the client's turn
    assert not client.transport.reading  # type: ignore[union-attr]
    app.data_received(b"HTTP/1.1 10")
    assert client.transport.written == b""  # type: ignore[union-attr]
    app.data_received(b"1 Switching Protocols\r\nUpgrade: websocket\r\n\r\n")
    assert client.transport.reading  # type: ignore[union-attr]
    assert client.transport.written.startswith(b"HTTP/1.1 101 ")  # type: ignore[union-attr]


async def test_after_a_refusal_the_client_is_never_read_again() -> None:
    client, app = Splice(FakeTransport()), AppSide(FakeTransport())  # type: ignore[arg-type]
    client.held = True
    client.transport.pause_reading()  # type: ignore[union-attr]
    Splice.join(client, app)
    app.data_received(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")
    app.resume_writing()
    assert not client.transport.reading  # type: ignore[union-attr]
    assert app.transport.eof_written  # type: ignore[union-attr]
    assert client.transport.written.startswith(b"HTTP/1.1 404 ")  # type: ignore[union-attr]
    app._end()  # what the linger timer does once the app is quiet
    assert client.transport.closed  # type: ignore[union-attr]


def test_closed_sides_no_longer_hold_each_other() -> None:
    client, app = spliced()
    client.connection_lost(None)
    assert app.transport.closed  # type: ignore[union-attr]
    app.connection_lost(None)
    assert client.peer is None and app.peer is None
