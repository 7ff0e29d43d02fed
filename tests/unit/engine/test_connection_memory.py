"""Closed connections are freed when they close: nothing of theirs waits for the cycle collector.

A real loop (asyncio's, and uvloop's as the sidecar runs), real sockets on loopback, the real
browser port (EdgeSite -> EdgeProtocol -> PusherSocket -> Connection, and aiohttp for other
requests) and a client protocol of its own that leaves no cycles either. The collector is off
while connections come and go; afterwards `gc.collect()` must find (almost) nothing: a
reference cycle per connection would show up thousands of times.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import gc
import secrets
import socket
import ssl
import struct
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, LimitsConfig
from sidecar.config.origins import OriginPolicy
from sidecar.edge.listener import EdgeSite
from sidecar.edge.websocket import WebSocketEndpoint
from tests.support.certs import make_certificate
from tests.support.local_relay import local_relay, start_local

APP = AppConfig(id="1", key="key-one", secret="secret-one")
# Found by a collection after churn, whatever the count of connections: the loop's and
# aiohttp's own one-off structures. A cycle per connection is thousands.
FOUND_AT_MOST = 60
CLOSE_FRAME = bytes((0x88, 0x82)) + b"\0\0\0\0" + struct.pack("!H", 1000)
SUBSCRIBE = b'{"event":"pusher:subscribe","data":{"channel":"news"}}'


def masked_text(payload: bytes) -> bytes:
    return bytes((0x81, 0x80 | len(payload))) + b"\0\0\0\0" + payload


def upgrade_request() -> bytes:
    key = base64.b64encode(secrets.token_bytes(16)).decode()
    return (
        f"GET /app/{APP.key}?protocol=7 HTTP/1.1\r\nHost: localhost\r\n"
        "Upgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


class Client(asyncio.Protocol):
    """Sends `request`, then `after_reply` once `reply_marker` arrives; done when closed.

    Holds its transport only while connected, so it leaves no cycle of its own.
    """

    def __init__(self, request: bytes, reply_marker: bytes, after_reply: bytes | None) -> None:
        self.request = request
        self.reply_marker = reply_marker
        self.after_reply = after_reply
        self.received = b""
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.write(self.request)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        had_marker = self.reply_marker in self.received
        self.received += data
        if had_marker or self.reply_marker not in self.received or self.transport is None:
            return
        if self.after_reply is None:
            self.transport.close()
        else:
            self.transport.write(self.after_reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.done.done():
            self.done.set_result(self.received)


async def ping(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


class Server:
    """The browser port of one process, as serving.serve_edge puts it together."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.tls = tls
        self.relay = local_relay(AppRegistry([APP]), LimitsConfig())
        self.runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> None:
        start_local(self.relay)
        app = web.Application()
        app.router.add_get("/ping", ping)
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self.runner.setup()
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(1024)
        self.port = sock.getsockname()[1]
        endpoint = WebSocketEndpoint(self.relay, OriginPolicy(()))
        site = EdgeSite(
            self.runner, sock, endpoint, ssl_context=self.tls, handshake_timeout=5, backlog=1024
        )
        await site.start()

    async def stop(self) -> None:
        self.relay.stop()
        assert self.runner is not None
        await self.runner.cleanup()


def server_tls(folder: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    cert, key = make_certificate("localhost").write(folder, "server")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert, key)
    client = ssl.create_default_context(cafile=cert)
    return server, client


async def churn(
    server: Server,
    client_tls: ssl.SSLContext | None,
    count: int,
    make: Callable[[], Client],
    concurrency: int = 50,
) -> list[bytes]:
    loop = asyncio.get_running_loop()
    todo = iter(range(count))
    replies: list[bytes] = []

    async def lane() -> None:
        for _ in todo:
            host = "localhost" if client_tls else None
            _, client = await loop.create_connection(
                make, "127.0.0.1", server.port, ssl=client_tls, server_hostname=host
            )
            replies.append(await asyncio.wait_for(client.done, 10))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return replies


def websocket_client() -> Client:
    """Upgrade, subscribe, then close with a close frame once subscribed."""
    return Client(
        upgrade_request() + masked_text(SUBSCRIBE),
        b"subscription_succeeded",
        CLOSE_FRAME,
    )


def abrupt_websocket_client() -> Client:
    """Upgrade and drop the connection once welcomed, no close frame."""
    return Client(upgrade_request(), b"connection_established", None)


def refused_websocket_client() -> Client:
    """An unknown app key: upgraded, told 4001, answers the close."""
    request = upgrade_request().replace(f"/app/{APP.key}?".encode(), b"/app/unknown?")
    return Client(request, b"App key not in this relay", CLOSE_FRAME)


def http_client() -> Client:
    return Client(b"GET /ping HTTP/1.1\r\nHost: localhost\r\n\r\n", b'{"ok": true}', None)


@pytest.fixture
def collector_off() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.collect()


# CPython 3.11's own socket transport keeps a bound method of itself (`_read_ready_cb`), so on
# asyncio's loop every socket, the client's too, is a cycle of these; uvloop's are not.
SELECTOR_TRANSPORT_CYCLE = {
    "_SelectorSocketTransport",
    "TransportSocket",
    "socket",
    "dict",
    "tuple",
}


def ours(thing: object) -> bool:
    """Of the relay's making: a type of sidecar's or aiohttp's, or a method bound to one."""
    if isinstance(thing, types.MethodType):
        thing = thing.__self__
    module = type(thing).__module__ or ""
    return module.startswith(("sidecar", "aiohttp", "tests")) or (
        module.startswith("asyncio") and type(thing).__name__ not in SELECTOR_TRANSPORT_CYCLE
    )


def collectable(loop_name: str) -> tuple[int, list[tuple[str, int]]]:
    """What a full collection would free now that is not the loop's own: a count and the
    commonest types."""
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        gc.collect()
        left = [
            thing
            for thing in gc.garbage
            if loop_name == "uvloop" or ours(thing) or type(thing).__name__ not in LOOP_OWN
        ]
        kinds = collections.Counter(type(o).__qualname__ for o in left)
    finally:
        gc.garbage.clear()
        gc.set_debug(0)
    gc.collect()
    return len(left), kinds.most_common(10)


LOOP_OWN = {*SELECTOR_TRANSPORT_CYCLE, "method"}


LOOPS = ["asyncio"]
try:
    import uvloop

    LOOPS.append("uvloop")
except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
    uvloop = None  # type: ignore[assignment]


def run_on(loop_name: str, main: Callable[[], Any]) -> Any:
    if loop_name == "uvloop":
        return uvloop.run(main())
    return asyncio.run(main())


CASES = {
    "websocket": (websocket_client, 10_000, b"subscription_succeeded"),
    "websocket-abrupt": (abrupt_websocket_client, 2_000, b"connection_established"),
    "websocket-refused": (refused_websocket_client, 2_000, b"App key not in this relay"),
    "http": (http_client, 2_000, b'{"ok": true}'),
}


@pytest.mark.parametrize("loop_name", LOOPS)
@pytest.mark.parametrize("case", sorted(CASES))
def test_closed_plain_connections_leave_nothing_for_the_collector(
    collector_off: None, loop_name: str, case: str
) -> None:
    make, count, marker = CASES[case]

    async def main() -> tuple[list[bytes], int, tuple[int, list[tuple[str, int]]]]:
        server = Server(None)
        await server.start()
        await churn(server, None, 100, make)  # the loop's one-off structures
        collectable(loop_name)
        replies = await churn(server, None, count, make)
        await asyncio.sleep(0.05)  # the last connection_lost callbacks
        left = len(server.relay.connections)
        found = collectable(loop_name)
        await server.stop()
        return replies, left, found

    replies, left, (found, kinds) = run_on(loop_name, main)
    assert len(replies) == count and all(marker in reply for reply in replies)
    assert left == 0
    assert found <= FOUND_AT_MOST, kinds


@pytest.mark.parametrize("loop_name", LOOPS)
def test_closed_tls_connections_leave_nothing_for_the_collector(
    collector_off: None, loop_name: str, tmp_path: Path
) -> None:
    server_context, client_context = server_tls(tmp_path)
    count = 500

    async def main() -> tuple[list[bytes], tuple[int, list[tuple[str, int]]]]:
        server = Server(server_context)
        await server.start()
        await churn(server, client_context, 50, websocket_client, concurrency=10)
        collectable(loop_name)
        replies = await churn(server, client_context, count, websocket_client, concurrency=10)
        await asyncio.sleep(0.05)
        found = collectable(loop_name)
        await server.stop()
        return replies, found

    replies, (found, kinds) = run_on(loop_name, main)
    assert len(replies) == count and all(b"subscription_succeeded" in r for r in replies)
    assert found <= FOUND_AT_MOST, kinds
