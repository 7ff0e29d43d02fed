"""The stats line between the supervisor and a worker: one socketpair each, asked, answered.

The fan-out pipe (sidecar/engine/broker/pipe.py) carries publications only; stats go on a line of
their own so that a scrape never queues behind a big event, nor an event behind a scrape.
The supervisor writes one byte, `C` (counters and the connection count: cheap) or `F` (full:
walks channels and connections); the worker answers `!I` length then a Snapshot's JSON.
Answers come in the order asked, so the asking side needs no ids.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Callable
from typing import cast

from sidecar.observe.snapshot import Snapshot

_LENGTH = struct.Struct("!I")
ASK_COUNTERS = b"C"
ASK_FULL = b"F"
# A worker that takes longer than this to answer is reported as not answering.
ANSWER_TIMEOUT = 2.0


class WorkerStatsServer(asyncio.Protocol):
    """The worker's end: answers each request byte with a snapshot."""

    def __init__(self, snapshot: Callable[[bool], Snapshot]) -> None:
        self._snapshot = snapshot
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        assert self._transport is not None
        for byte in data:
            body = self._snapshot(byte == ASK_FULL[0]).to_json()
            self._transport.writelines((_LENGTH.pack(len(body)), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None


async def serve_worker_stats(sock: socket.socket, snapshot: Callable[[bool], Snapshot]) -> None:
    loop = asyncio.get_running_loop()
    await loop.create_unix_connection(lambda: WorkerStatsServer(snapshot), sock=sock)


class WorkerStatsClient(asyncio.Protocol):
    """The supervisor's end for one worker."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._waiting: deque[asyncio.Future[Snapshot]] = deque()
        self._buffer = bytearray()

    @classmethod
    async def connect(cls, sock: socket.socket) -> WorkerStatsClient:
        loop = asyncio.get_running_loop()
        _, client = await loop.create_unix_connection(cls, sock=sock)
        return client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    @property
    def connected(self) -> bool:
        return self._transport is not None

    async def ask(self, full: bool, timeout: float = ANSWER_TIMEOUT) -> Snapshot | None:
        """The worker's snapshot, or None when it is gone or does not answer in time."""
        if self._transport is None:
            return None
        future: asyncio.Future[Snapshot] = asyncio.get_running_loop().create_future()
        self._waiting.append(future)
        self._transport.write(ASK_FULL if full else ASK_COUNTERS)
        try:
            return await asyncio.wait_for(asyncio.shield(future), timeout)
        except (TimeoutError, ConnectionError):
            return None

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        while len(buffer) >= _LENGTH.size:
            (length,) = _LENGTH.unpack_from(buffer)
            end = _LENGTH.size + length
            if len(buffer) < end:
                break
            body = bytes(buffer[_LENGTH.size : end])
            del buffer[:end]
            future = self._waiting.popleft() if self._waiting else None
            if future is not None and not future.done():
                try:
                    future.set_result(Snapshot.from_json(body))
                except ValueError as exc:  # a garbled answer: that request fails, not us
                    future.set_exception(ConnectionError(str(exc)))

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        while self._waiting:
            future = self._waiting.popleft()
            if not future.done():
                future.set_exception(ConnectionError("worker gone"))
                future.exception()  # retrieved: nobody may await it any more (timed out)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
