"""The traffic of the soak benchmark (bench/soak.py) besides the load client: churning and
slow clients, and issue 13's attacks at a low rate, each counted, none raising.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import random
import ssl
from dataclasses import dataclass, field
from typing import Any

from bench.servers import APP_ID, APP_KEY, APP_SECRET
from tests.support.wire import (
    OPCODE_BINARY,
    OPCODE_PING,
    RawSocket,
    client_context,
    frame,
    open_tls,
    publish_request,
    pusher_frame,
    read_pusher,
)

CHANNELS = 100
# Whatever an attacker's or a churner's socket meets is counted, never raised.
SOCKET_ERRORS = (OSError, EOFError, asyncio.IncompleteReadError, TimeoutError, ValueError)


@dataclass
class Counters:
    values: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        self.values[name] = self.values.get(name, 0) + n


@dataclass
class Traffic:
    """Clients and attackers of one sidecar: its TLS port, Unix socket and upstream port."""

    port: int
    cert: str
    socket: str
    upstream_port: int
    idle_cap: int
    counters: Counters = field(default_factory=Counters)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    idle: list[asyncio.StreamWriter] = field(default_factory=list)
    upstream_connections: set[asyncio.StreamWriter] = field(default_factory=set)

    def tls(self) -> ssl.SSLContext:
        return client_context(self.cert)

    async def churner(self, rng: random.Random) -> None:
        """A client that connects, subscribes, reads for 1-20 s, leaves, and comes back."""
        while not self.stopping.is_set():
            try:
                sock = await RawSocket.open(self.port, self.tls(), APP_KEY)
            except SOCKET_ERRORS:
                self.counters.add("churn_failed")
                await asyncio.sleep(1)
                continue
            try:
                await sock.subscribe(f"soak-{rng.randrange(CHANNELS)}")
                self.counters.add("churn_connects")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(read_all(sock), rng.uniform(1, 20))
            except SOCKET_ERRORS:
                self.counters.add("churn_failed")
            finally:
                sock.abort()

    async def slow_client(self) -> None:
        """Subscribes to 64 KiB events and never reads; when cut (4100), comes back."""
        while not self.stopping.is_set():
            try:
                sock = await RawSocket.open(self.port, self.tls(), APP_KEY)
                await sock.subscribe("soak-slow")
            except SOCKET_ERRORS:
                self.counters.add("slow_failed")
                await asyncio.sleep(1)
                continue
            self.counters.add("slow_connects")
            # Not reading, so an end of stream is never seen: a WebSocket ping written every
            # second finds the socket gone once the server has given up on it (a reset).
            try:
                while not self.stopping.is_set() and not sock.writer.transport.is_closing():
                    await asyncio.sleep(1)
                    sock.send(frame(OPCODE_PING, b"slow"))
            finally:
                sock.abort()

    # Attacks, each at a low rate ------------------------------------------------------------

    async def every(self, seconds: float, name: str, attack: Any) -> None:
        rng = random.Random(name)
        while not self.stopping.is_set():
            try:
                await asyncio.wait_for(attack(rng), 120)
                self.counters.add(f"attack_{name}")
            except SOCKET_ERRORS:
                self.counters.add(f"attack_{name}_failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), seconds * rng.uniform(0.5, 1.5))

    async def bad_frames(self, rng: random.Random) -> None:
        """20,000 one-byte binary frames, never reading the errors; held for a minute."""
        sock = await RawSocket.open(self.port, self.tls(), APP_KEY)
        try:
            bad = frame(OPCODE_BINARY, b"x")
            for _ in range(20):
                sock.send(bad * 1000)
                await asyncio.sleep(0.05)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stopping.wait(), 60)
        finally:
            sock.abort()

    async def half_head(self, rng: random.Random) -> None:
        """Half a request head, then nothing: the server must give up on it (408)."""
        reader, writer = await open_tls(self.port, self.tls())
        try:
            writer.write(b"GET /app/" + APP_KEY.encode() + b"?protocol=7 HTTP/1.1\r\nHost: lo")
            answer = await asyncio.wait_for(reader.read(4096), 60)
            self.counters.add("half_head_answered" if answer else "half_head_dropped")
        finally:
            writer.transport.abort()

    async def idle_keep_alive(self, rng: random.Random) -> None:
        """One HTTP request, then the connection held idle (up to --idle-cap of them)."""
        reader, writer = await open_tls(self.port, self.tls())
        writer.write(b"GET /soak-idle HTTP/1.1\r\nHost: localhost\r\n\r\n")
        await asyncio.wait_for(reader.read(4096), 10)
        self.idle.append(writer)
        while len(self.idle) > self.idle_cap:
            self.idle.pop(0).transport.abort()

    async def subscription_churn(self, rng: random.Random) -> None:
        """200 fresh public channels subscribed and left, and a presence member coming and
        going 50 times, on one connection."""
        sock = await RawSocket.open(self.port, self.tls(), APP_KEY)
        drain = asyncio.ensure_future(read_all(sock))
        try:
            for i in range(200):
                channel = f"churn-{rng.randrange(1 << 30)}"
                sock.send(pusher_frame("pusher:subscribe", {"channel": channel}))
                sock.send(pusher_frame("pusher:unsubscribe", {"channel": channel}))
                if i % 4 == 0:
                    data = json.dumps({"user_id": f"u{i % 7}", "user_info": {}})
                    signed = f"{sock.socket_id}:presence-soak:{data}"
                    auth = f"{APP_KEY}:{sign(signed)}"
                    sock.send(
                        pusher_frame(
                            "pusher:subscribe",
                            {"channel": "presence-soak", "auth": auth, "channel_data": data},
                        )
                    )
                    sock.send(pusher_frame("pusher:unsubscribe", {"channel": "presence-soak"}))
                await asyncio.sleep(0.01)
        finally:
            drain.cancel()
            sock.abort()

    async def pipelined_upgrade(self, rng: random.Random) -> None:
        """A request behind a non-WebSocket Upgrade, with forwarded headers of its own."""
        reader, writer = await open_tls(self.port, self.tls())
        try:
            writer.write(
                b"GET /elsewhere HTTP/1.1\r\nHost: localhost\r\nUpgrade: not-a-websocket\r\n"
                b"Connection: Upgrade\r\n\r\n"
                b"GET /apps/1/channels HTTP/1.1\r\nHost: localhost\r\n"
                b"X-Forwarded-For: 6.6.6.6\r\n\r\n"
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(65536), 2)
        finally:
            writer.transport.abort()

    async def escaped_payload(self, rng: random.Random) -> None:
        """800 KB of data (under the app's 1 MiB), 2.4 MB once JSON-escaped as \\u00e9."""
        body = json.dumps(
            {"name": "escaped", "channel": "soak-escaped", "data": "\u00e9" * 400_000}
        ).encode()  # ensure_ascii: what the Pusher libraries send by default
        reader, writer = await asyncio.open_unix_connection(self.socket)
        try:
            writer.write(publish_request(APP_ID, body, close=True))
            status = (await asyncio.wait_for(reader.readline(), 30)).split(b" ")[1:2]
            self.counters.add(f"escaped_{(status or [b'none'])[0].decode()}")
        finally:
            writer.transport.abort()

    async def upstream_app(self) -> asyncio.Server:
        """The app behind the sidecar: answers 200, and counts what reached it that should not
        have (a client's own X-Forwarded-For, a path under /apps/)."""

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.upstream_connections.add(writer)
            with contextlib.suppress(*SOCKET_ERRORS):
                while head := await reader.readuntil(b"\r\n\r\n"):
                    self.counters.add("upstream_requests")
                    if b"6.6.6.6" in head or b" /apps/" in head.split(b"\r\n", 1)[0]:
                        self.counters.add("upstream_smuggled")
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            writer.transport.abort()
            self.upstream_connections.discard(writer)

        return await asyncio.start_server(serve, "127.0.0.1", self.upstream_port)

    async def close_upstream(self, server: asyncio.Server) -> None:
        server.close()
        for writer in list(self.upstream_connections):
            writer.transport.abort()
        await asyncio.sleep(0.2)  # each serve() sees its socket end and returns


def sign(text: str) -> str:
    return hmac.new(APP_SECRET.encode(), text.encode(), hashlib.sha256).hexdigest()


async def read_all(sock: RawSocket) -> None:
    """Read everything, answering the server's pusher:ping, until the socket ends."""
    while True:
        message = await read_pusher(sock.reader)
        if message.get("event") == "pusher:ping":
            sock.send(pusher_frame("pusher:pong", {}))


async def wait_event(sock: RawSocket, event: str) -> None:
    while True:
        message = await read_pusher(sock.reader)
        if message.get("event") == "pusher:ping":
            sock.send(pusher_frame("pusher:pong", {}))
        elif message.get("event") == event:
            return


async def round_trip(sock: RawSocket, request: bytes, suffix: str) -> None:
    sock.send(request)
    while True:
        message = await read_pusher(sock.reader)
        if message.get("event") == "pusher:ping":
            sock.send(pusher_frame("pusher:pong", {}))
        elif message.get("event", "").endswith(suffix):
            return
