"""sidecar.edge.listener: EdgeProtocol reads the first request head and hands the socket on."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import struct
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.accept import AddressCap, Lease
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.config.origins import OriginPolicy
from sidecar.edge.listener import CountedProtocol, EdgeProtocol, counted
from sidecar.edge.websocket import PusherSocket, WebSocketEndpoint
from sidecar.engine.relay import Relay
from sidecar.protocol.forwarded import TrustedProxies
from sidecar.protocol.http_head import MAX_HEAD_BYTES
from tests.support.edge_fakes import (
    API_REQUEST,
    KEY,
    UPGRADE,
    FakeEndpoint,
    FakeHttp,
    FakePassthrough,
    FakeTransport,
)
from tests.support.local_relay import local_relay, start_local

APP = AppConfig(id="1", key="key-one", secret="secret-one")


class Edge:
    def __init__(
        self,
        websockets: Any = None,
        passthrough: Any = None,
        *,
        lease: Lease | None = None,
        cap_at_head: AddressCap | None = None,
        head_timeout: float = 15.0,
        peer: str = "192.0.2.1",
    ) -> None:
        self.transport = FakeTransport()
        self.transport.peername = (peer, 50000)
        self.http_made: list[FakeHttp] = []
        self.endpoint = websockets or FakeEndpoint()
        self.protocol = EdgeProtocol(
            self._make_http, self.endpoint, passthrough, lease, cap_at_head, head_timeout
        )
        self.transport.set_protocol(self.protocol)
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    def _make_http(self) -> FakeHttp:
        http = FakeHttp()
        self.http_made.append(http)
        return http

    def feed(self, *pieces: bytes) -> None:
        for piece in pieces:
            self.protocol.data_received(piece)

    @property
    def http(self) -> FakeHttp:
        (http,) = self.http_made
        return http


def assert_handed_to_http(edge: Edge, everything: bytes) -> None:
    http = edge.http
    assert edge.transport.protocol is http
    assert http.transport is edge.transport
    assert b"".join(http.received) == everything
    assert edge.endpoint.upgrades == []
    assert not edge.transport.closed
    assert edge.transport.data == b""  # EdgeProtocol itself answered nothing


# Upgrades -----------------------------------------------------------------------------------


async def test_upgrade_goes_to_the_endpoint() -> None:
    edge = Edge()
    edge.feed(UPGRADE)
    ((transport, head, rest),) = edge.endpoint.upgrades
    assert transport is edge.transport
    assert head.path == "/app/key-one"
    assert head.query == {"protocol": "7", "client": "js"}
    assert head.header("sec-websocket-key") == KEY
    assert rest == b""
    assert edge.http_made == []
    edge.protocol.connection_lost(None)


async def test_head_arriving_in_pieces() -> None:
    for cut in range(1, len(UPGRADE)):
        edge = Edge()
        edge.feed(UPGRADE[:cut])
        assert edge.endpoint.upgrades == [], cut
        edge.feed(UPGRADE[cut:])
        assert len(edge.endpoint.upgrades) == 1, cut
        assert edge.endpoint.upgrades[0][2] == b""
        assert edge.http_made == []
        edge.protocol.connection_lost(None)


async def test_head_one_byte_at_a_time() -> None:
    edge = Edge()
    edge.feed(*(UPGRADE[i : i + 1] for i in range(len(UPGRADE))))
    assert len(edge.endpoint.upgrades) == 1
    edge.protocol.connection_lost(None)


async def test_bytes_after_the_head_go_with_the_upgrade() -> None:
    frame = b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58"
    edge = Edge()
    edge.feed(UPGRADE[:-3], UPGRADE[-3:] + frame)
    ((_transport, _head, rest),) = edge.endpoint.upgrades
    assert rest == frame
    edge.protocol.connection_lost(None)


async def test_upgrade_with_keep_alive_in_connection() -> None:
    edge = Edge()
    edge.feed(UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive, Upgrade"))
    assert len(edge.endpoint.upgrades) == 1
    edge.protocol.connection_lost(None)


# With an upstream: the app's upgrades pass through ------------------------------------------


CABLE_UPGRADE = UPGRADE.replace(b"/app/key-one?protocol=7&client=js", b"/cable?token=t")


async def test_an_upgrade_off_the_relay_path_passes_through_with_its_raw_head() -> None:
    passthrough = FakePassthrough()
    edge = Edge(passthrough=passthrough)
    frame = b"\x81\x80\x00\x00\x00\x00"
    edge.feed(CABLE_UPGRADE[:20], CABLE_UPGRADE[20:] + frame)
    ((transport, raw_head, rest),) = passthrough.upgrades
    assert transport is edge.transport
    assert raw_head + b"\r\n\r\n" == CABLE_UPGRADE
    assert rest == frame
    assert edge.endpoint.upgrades == []
    assert edge.http_made == []
    edge.protocol.connection_lost(None)


async def test_relay_upgrades_stay_with_the_relay_when_an_upstream_is_set() -> None:
    passthrough = FakePassthrough()
    edge = Edge(passthrough=passthrough)
    edge.feed(UPGRADE)
    assert len(edge.endpoint.upgrades) == 1
    assert passthrough.upgrades == []
    edge.protocol.connection_lost(None)


async def test_without_an_upstream_every_upgrade_is_the_relays() -> None:
    edge = Edge()
    edge.feed(CABLE_UPGRADE)  # the relay answers it with 4005 (path not found)
    ((_transport, head, _rest),) = edge.endpoint.upgrades
    assert head.path == "/cable"
    edge.protocol.connection_lost(None)


async def test_a_plain_request_goes_to_http_with_an_upstream_too() -> None:
    edge = Edge(passthrough=FakePassthrough())
    edge.feed(API_REQUEST)
    assert_handed_to_http(edge, API_REQUEST)


async def test_an_upgrade_to_anything_but_websocket_is_refused() -> None:
    # Issue 13: `Upgrade: not-a-websocket-at-all` was spliced to the app, and whatever was
    # pipelined behind it reached the app unrewritten. aiohttp would stop reading it as HTTP.
    passthrough = FakePassthrough()
    edge = Edge(passthrough=passthrough)
    request = CABLE_UPGRADE.replace(b"Upgrade: websocket", b"Upgrade: not-a-websocket-at-all")
    edge.feed(request + API_REQUEST)
    assert passthrough.upgrades == []
    assert edge.http_made == []
    assert edge.transport.data.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert b'{"error":"the only upgrade served here is Upgrade: websocket"}' in edge.transport.data
    assert edge.transport.closed


# Everything else goes to HTTP ---------------------------------------------------------------


async def test_api_request_is_handed_to_http_with_every_byte() -> None:
    edge = Edge()
    edge.feed(API_REQUEST[:10], API_REQUEST[10:50], API_REQUEST[50:])
    assert_handed_to_http(edge, API_REQUEST)


async def test_http_gets_the_body_read_with_the_head() -> None:
    edge = Edge()
    edge.feed(API_REQUEST)
    assert_handed_to_http(edge, API_REQUEST)


async def test_http_connection_made_before_data() -> None:
    order: list[str] = []

    class Ordered(FakeHttp):
        def connection_made(self, transport: Any) -> None:
            order.append("made")
            super().connection_made(transport)

        def data_received(self, data: bytes) -> None:
            order.append("data")
            super().data_received(data)

    protocol = EdgeProtocol(Ordered, FakeEndpoint())  # type: ignore[arg-type]
    protocol.connection_made(FakeTransport())  # type: ignore[arg-type]
    protocol.data_received(API_REQUEST)
    assert order == ["made", "data"]


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        # Not upgrades: wrong method, no Connection: Upgrade, HTTP/2 preface, garbage.
        UPGRADE.replace(b"GET ", b"POST "),
        UPGRADE.replace(b"Connection: Upgrade", b"Connection: keep-alive"),
        UPGRADE.replace(b"HTTP/1.1", b"HTTP/2.0"),
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"hello\r\n\r\n",
        UPGRADE.replace(b"Host: ", b"Host : "),  # a malformed header line
    ],
)
async def test_non_upgrades_go_to_http(request_bytes: bytes) -> None:
    edge = Edge()
    edge.feed(request_bytes)
    assert_handed_to_http(edge, request_bytes)


async def test_over_long_head_is_handed_to_http() -> None:
    line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
    start = b"GET /app/key-one?protocol=7 HTTP/1.1\r\nUpgrade: websocket\r\n"
    pieces = [start] + [line] * (MAX_HEAD_BYTES // len(line) + 1)
    edge = Edge()
    for i, piece in enumerate(pieces):
        assert edge.http_made == [], i
        edge.feed(piece)
    assert_handed_to_http(edge, b"".join(pieces))


async def test_head_of_exactly_the_limit_without_a_blank_line_still_waits() -> None:
    edge = Edge()
    edge.feed(b"GET / HTTP/1.1\r\nX: " + b"a" * (MAX_HEAD_BYTES - 19))
    assert edge.http_made == []
    assert edge.endpoint.upgrades == []
    edge.feed(b"a")
    assert len(edge.http_made) == 1
    edge.protocol.connection_lost(None)


async def test_over_long_upgrade_head_in_one_read_is_handed_to_http() -> None:
    filler = b"X-Filler: " + b"a" * (MAX_HEAD_BYTES + 100) + b"\r\n"
    request = UPGRADE[:-2] + filler + b"\r\n"
    edge = Edge()
    edge.feed(request)
    assert edge.endpoint.upgrades == []
    assert_handed_to_http(edge, request)


# The head timeout ---------------------------------------------------------------------------


async def test_slow_head_gets_408_and_is_closed() -> None:
    edge = Edge(head_timeout=0.01)
    edge.feed(UPGRADE[:20])
    await asyncio.sleep(0.05)
    head, _, body = bytes(edge.transport.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 Request Timeout\r\n")
    assert b"Connection: close" in head
    assert "error" in json.loads(body)
    assert edge.transport.closed
    assert edge.endpoint.upgrades == [] and edge.http_made == []


async def test_silent_client_gets_408() -> None:
    edge = Edge(head_timeout=0.01)
    await asyncio.sleep(0.05)
    assert edge.transport.data.startswith(b"HTTP/1.1 408 ")
    assert edge.transport.closed


@pytest.mark.parametrize("request_bytes", [UPGRADE, API_REQUEST])
async def test_no_408_once_the_head_is_handed_on(request_bytes: bytes) -> None:
    edge = Edge(head_timeout=0.01)
    edge.feed(request_bytes)
    await asyncio.sleep(0.05)
    assert b"408" not in edge.transport.data
    assert not edge.transport.closed


async def test_no_408_after_the_connection_is_lost() -> None:
    edge = Edge(head_timeout=0.01)
    edge.feed(UPGRADE[:5])
    edge.protocol.connection_lost(ConnectionResetError())
    await asyncio.sleep(0.05)
    assert edge.transport.data == b""
    assert not edge.transport.closed


# With the real endpoint ---------------------------------------------------------------------


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = local_relay(AppRegistry((APP,)), LimitsConfig())
    start_local(r)
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


async def test_upgrade_in_pieces_through_the_real_endpoint(relay: Relay) -> None:
    edge = Edge(WebSocketEndpoint(relay, OriginPolicy(["*"])))
    edge.feed(UPGRADE[:7], UPGRADE[7:40], UPGRADE[40:])
    data = bytes(edge.transport.data)
    head, _, frames = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=" in head
    assert isinstance(edge.transport.protocol, PusherSocket)
    assert frames[0] == 0x81
    length = frames[1]
    assert length < 126
    message = json.loads(frames[2 : 2 + length])
    assert message["event"] == "pusher:connection_established"
    assert len(relay.connections) == 1
    edge.transport.protocol.connection_lost(None)
    assert relay.connections == {}


async def test_close_frame_after_the_head_through_the_real_endpoint(relay: Relay) -> None:
    close = b"\x88\x82\x00\x00\x00\x00" + struct.pack("!H", 1000)  # mask of zeros
    edge = Edge(WebSocketEndpoint(relay, OriginPolicy(["*"])))
    edge.feed(UPGRADE + close)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert edge.transport.data.endswith(b"\x88\x02" + struct.pack("!H", 1000))
    assert edge.transport.closed
    edge.transport.protocol.connection_lost(None)


# Connections per address --------------------------------------------------------------------

TRUSTED = TrustedProxies((ipaddress.ip_network("10.0.0.0/8"),))


def cap(limit: int = 1, trusted: TrustedProxies = TRUSTED) -> AddressCap:
    return AddressCap(lambda: limit, trusted)


@pytest.mark.parametrize("request_bytes", [UPGRADE, API_REQUEST])
async def test_the_lease_goes_with_the_connection_and_ends_with_it(
    request_bytes: bytes,
) -> None:
    counts = cap(5)
    lease = counts.admit("192.0.2.1")
    edge = Edge(lease=lease)
    if request_bytes is UPGRADE:
        taker = PusherSocket.__new__(PusherSocket)  # what the endpoint would set
        edge.endpoint.upgrade = lambda transport, head, rest: transport.set_protocol(taker)
    edge.feed(request_bytes)
    served = edge.transport.protocol
    assert isinstance(served, CountedProtocol)
    assert counts.counts.held("192.0.2.1") == 1  # held while served
    if request_bytes is API_REQUEST:
        assert served.data_received == edge.http.data_received  # read with no extra call
        served.data_received(b"more")
        assert edge.http.received[-1] == b"more"
        served.connection_lost(None)
    else:
        served._lease.release()  # as its connection_lost would (no real socket to lose here)
    assert counts.counts.held("192.0.2.1") == 0


async def test_a_connection_refused_on_the_spot_releases_its_lease_when_it_closes(
    relay: Relay,
) -> None:
    counts = cap(5)
    edge = Edge(WebSocketEndpoint(relay, OriginPolicy([])), lease=counts.admit("192.0.2.1"))
    edge.feed(UPGRADE.replace(b"Host:", b"Origin: https://evil.example\r\nHost:"))
    assert edge.transport.data.startswith(b"HTTP/1.1 403 ")
    assert edge.transport.protocol is edge.protocol  # still ours: no one took it over
    edge.protocol.connection_lost(None)
    assert counts.counts.held("192.0.2.1") == 0


async def test_a_lost_connection_before_its_head_releases_its_lease() -> None:
    counts = cap(5)
    edge = Edge(lease=counts.admit("192.0.2.1"))
    edge.feed(UPGRADE[:10])
    edge.protocol.connection_lost(None)
    assert counts.counts.held("192.0.2.1") == 0


def forwarded(request: bytes, client: str) -> bytes:
    return request.replace(b"Host:", f"X-Forwarded-For: {client}\r\nHost:".encode(), 1)


async def test_behind_a_trusted_proxy_the_forwarded_client_is_counted_at_the_head(
    relay: Relay,
) -> None:
    counts = cap(1)
    first = Edge(cap_at_head=counts, peer="10.0.0.1")
    first.feed(forwarded(API_REQUEST, "198.51.100.7"))
    assert counts.counts.held("198.51.100.7") == 1
    assert counts.counts.held("10.0.0.1") == 0  # the proxy itself is not the client
    # Another client through the same proxy has a count of its own.
    other = Edge(cap_at_head=counts, peer="10.0.0.1")
    other.feed(forwarded(API_REQUEST, "198.51.100.8"))
    assert isinstance(other.transport.protocol, CountedProtocol)
    # Over the cap: HTTP gets 429 JSON, a Pusher upgrade gets 4004 as over max_connections.
    http = Edge(cap_at_head=counts, peer="10.0.0.1")
    http.feed(forwarded(API_REQUEST, "198.51.100.7"))
    head, _, body = bytes(http.transport.data).partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 429 Too Many Requests\r\n")
    assert json.loads(body) == {"error": "too many connections from this address"}
    assert http.transport.closed and http.http_made == []
    ws = Edge(WebSocketEndpoint(relay, OriginPolicy(["*"])), cap_at_head=counts, peer="10.0.0.1")
    ws.feed(forwarded(UPGRADE, "198.51.100.7"))
    data = bytes(ws.transport.data)
    assert data.startswith(b"HTTP/1.1 101 ")
    assert b'"code":4004' in data.replace(b"\\", b"")
    assert relay.connections == {}
    first.transport.protocol.connection_lost(None)
    assert counts.counts.held("198.51.100.7") == 0


async def test_a_protocol_reading_into_its_own_buffer_keeps_doing_so() -> None:
    class Buffered(asyncio.BufferedProtocol):
        def __init__(self) -> None:
            self.buffer = bytearray(16)
            self.got = 0
            self.lost = False

        def get_buffer(self, sizehint: int) -> bytearray:
            return self.buffer

        def buffer_updated(self, nbytes: int) -> None:
            self.got += nbytes

        def connection_lost(self, exc: Exception | None) -> None:
            self.lost = True

    counts = cap(5)
    inner = Buffered()
    served = counted(inner, counts.admit("192.0.2.1"))  # type: ignore[arg-type]
    assert isinstance(served, asyncio.BufferedProtocol)
    assert served.get_buffer(100) is inner.buffer
    served.buffer_updated(3)
    served.connection_lost(None)
    assert (inner.got, inner.lost, counts.counts.held("192.0.2.1")) == (3, True, 0)
