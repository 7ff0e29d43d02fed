"""Raw bytes on the wire, for the tools that attack a running sidecar: a WebSocket client
written by hand (so it can send what no library would), client frames, publish requests, and
the mutations an attacker makes of them.

Used by tests/e2e/test_e2e_fuzz.py (the socket-level fuzz test),
tests/unit/protocol/test_frame_reader_fuzz.py (the frame encoder) and bench/soak.py (the attacks of
issue 13 at a low rate). No pytest here.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import ssl
from typing import Any

OPCODE_TEXT, OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x1, 0x2, 0x8, 0x9, 0xA
HEAD_END = b"\r\n\r\n"
# What a mutation inserts besides random bytes: the characters parsers split on.
SPECIAL = [
    b"\r\n", b"\r", b"\n", b"\r\n\r\n", b"\x00", b":", b" ", b"\t", b"%", b"?", b"/", b"\xff",
    b"\x80", b"{", b"}", b'"', b"\\u0000", b"99999999999999999999", b"-1", b"\x7f",
]  # fmt: skip


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """A client frame as RFC 6455 section 5.2 lays it out (masked unless `mask` is b"")."""
    mask = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    masked = 0x80 if mask else 0
    if n < 126:
        head = bytes([first, masked | n])
    elif n < 1 << 16:
        head = bytes([first, masked | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, masked | 127]) + n.to_bytes(8, "big")
    if not mask:
        return head + payload
    key = (mask * (n // 4 + 1))[:n]
    body = (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")
    return head + mask + body


def pusher_frame(event: str, data: Any, channel: str | None = None) -> bytes:
    message: dict[str, Any] = {"event": event, "data": data}
    if channel is not None:
        message["channel"] = channel
    return frame(OPCODE_TEXT, json.dumps(message).encode())


def upgrade_request(path: str, host: str = "localhost", key: bytes | None = None) -> bytes:
    nonce = base64.b64encode(key or os.urandom(16)).decode()
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {nonce}\r\n"
        "Origin: https://localhost\r\n\r\n"
    ).encode()


def publish_request(app_id: str, body: dict[str, Any] | bytes, close: bool = False) -> bytes:
    """A publish over the Unix socket's HTTP, as the Pusher libraries send it."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    connection = "Connection: close\r\n" if close else ""
    return (
        f"POST /apps/{app_id}/events HTTP/1.1\r\nHost: localhost\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(raw)}\r\n{connection}\r\n"
    ).encode() + raw


def mutate(data: bytes, rng: random.Random, rounds: int | None = None) -> bytes:
    """`data` with a few random edits: bytes flipped, inserted, deleted, repeated or cut."""
    buffer = bytearray(data)
    for _ in range(rounds if rounds is not None else rng.randint(1, 4)):
        n = len(buffer)
        at = rng.randint(0, n)
        kind = rng.randrange(7)
        if kind == 0 and n:
            buffer[min(at, n - 1)] ^= 1 << rng.randrange(8)
        elif kind == 1 and n:
            buffer[min(at, n - 1)] = rng.randrange(256)
        elif kind == 2:
            buffer[at:at] = rng.randbytes(rng.randint(1, 8))
        elif kind == 3:
            buffer[at:at] = rng.choice(SPECIAL)
        elif kind == 4:
            del buffer[at : at + rng.randint(1, 16)]
        elif kind == 5:
            piece = buffer[at : at + rng.randint(1, 32)]
            buffer[at:at] = piece * rng.randint(1, 4)
        else:
            del buffer[rng.randint(0, n) :]
    return bytes(buffer)


def client_context(cafile: str | None) -> ssl.SSLContext:
    """TLS to a sidecar on loopback: its certificate checked when `cafile` is given."""
    if cafile is not None:
        return ssl.create_default_context(cafile=cafile)
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def open_tls(
    port: int, context: ssl.SSLContext, timeout: float = 10
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(
        asyncio.open_connection("127.0.0.1", port, ssl=context, server_hostname="localhost"),
        timeout,
    )


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """One server frame (unmasked, never fragmented by the sidecar): opcode and payload."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        length = int.from_bytes(await reader.readexactly(2), "big")
    elif length == 127:
        length = int.from_bytes(await reader.readexactly(8), "big")
    return first & 0x0F, await reader.readexactly(length)


async def read_pusher(reader: asyncio.StreamReader) -> dict[str, Any]:
    """The next Pusher message, answering WebSocket pings on the way."""
    while True:
        opcode, payload = await read_frame(reader)
        if opcode == OPCODE_TEXT:
            return json.loads(payload)
        if opcode == OPCODE_CLOSE:
            raise ConnectionError(f"closed: {payload[:2].hex()}")


class RawSocket:
    """A WebSocket opened by hand on the TLS port: the 101 read, the socket_id known."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.socket_id = ""

    @classmethod
    async def open(
        cls, port: int, context: ssl.SSLContext, key: str, timeout: float = 10
    ) -> RawSocket:
        reader, writer = await open_tls(port, context, timeout)
        sock = cls(reader, writer)
        try:
            writer.write(upgrade_request(f"/app/{key}?protocol=7&client=raw"))
            head = await asyncio.wait_for(reader.readuntil(HEAD_END), timeout)
            if not head.startswith(b"HTTP/1.1 101 "):
                raise ConnectionError(f"upgrade refused: {head.splitlines()[0]!r}")
            established = await asyncio.wait_for(read_pusher(reader), timeout)
            sock.socket_id = json.loads(established["data"])["socket_id"]
        except BaseException:
            sock.abort()
            raise
        return sock

    def send(self, data: bytes) -> None:
        self.writer.write(data)

    async def subscribe(self, channel: str, timeout: float = 10, **fields: Any) -> None:
        self.send(pusher_frame("pusher:subscribe", {"channel": channel, **fields}))
        while True:
            message = await asyncio.wait_for(read_pusher(self.reader), timeout)
            if message.get("channel") == channel and message["event"].endswith(
                ("subscription_succeeded", "subscription_error")
            ):
                if message["event"].endswith("error"):
                    raise ConnectionError(f"subscription refused: {message}")
                return

    def abort(self) -> None:
        transport = self.writer.transport
        if not transport.is_closing():
            transport.abort()
