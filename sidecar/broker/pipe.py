"""The broker between worker processes on one machine: a hub and one pipe per worker.

The supervisor accepts publications (the Unix socket API) and writes each to every worker's
pipe; a worker hands publications it accepted itself (the signed API on the TLS port) to the
hub, which sends them to every worker, itself included. One order for everybody: the hub's.

On the pipe a publication is `!II` (meta length, data length), the meta as JSON
`[app_id, channels, name, socket_id]`, then the data literal as it will sit in every frame:
a worker never decodes event data, it only splices it.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from typing import cast

import orjson

from sidecar.broker.base import Deliver, Publication

_HEADER = struct.Struct("!II")


def encode_publication(pub: Publication) -> tuple[bytes, bytes]:
    """Header + meta, and the data literal: written one after the other, never joined."""
    meta = orjson.dumps([pub.app_id, pub.channels, pub.name, pub.socket_id])
    return _HEADER.pack(len(meta), len(pub.data_json)) + meta, pub.data_json


class PublicationStream(asyncio.Protocol):
    """Splits a pipe's byte stream into whole publications."""

    def __init__(
        self,
        on_frame: Callable[[bytes, bytes], None],
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._buffer = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        buffer = self._buffer
        buffer += data
        offset = 0
        while len(buffer) - offset >= _HEADER.size:
            meta_len, data_len = _HEADER.unpack_from(buffer, offset)
            end = offset + _HEADER.size + meta_len + data_len
            if len(buffer) < end:
                break
            meta_end = offset + _HEADER.size + meta_len
            self._on_frame(bytes(buffer[offset:meta_end]), bytes(buffer[meta_end:end]))
            offset = end
        if offset:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._on_lost is not None:
            self._on_lost()


def decode_publication(head: bytes, data_json: bytes) -> Publication:
    app_id, channels, name, socket_id = orjson.loads(head[_HEADER.size :])
    return Publication(app_id, tuple(channels), name, data_json, socket_id)


class WorkerBroker:
    """A worker's end: publishes go to the hub, the hub's publications are delivered here."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._stream: PublicationStream | None = None
        self._closed = asyncio.Event()

    async def start(self, deliver: Deliver) -> None:
        loop = asyncio.get_running_loop()

        def on_frame(head: bytes, data_json: bytes) -> None:
            deliver(decode_publication(head, data_json))

        _, self._stream = await loop.create_unix_connection(
            lambda: PublicationStream(on_frame, self._closed.set), sock=self._sock
        )

    def publish(self, publication: Publication) -> None:
        assert self._stream is not None and self._stream.transport is not None
        self._stream.transport.writelines(encode_publication(publication))

    async def close(self) -> None:
        """Wait until the hub has closed the pipe: everything it accepted was delivered."""
        await self._closed.wait()


class HubBroker:
    """The supervisor's end: every publication, from wherever, goes to every worker.

    Publications are written to the pipes on the next loop turn, after the publisher's reply:
    a write to a pipe wakes the worker reading it, and a woken worker can take the CPU from
    the supervisor for a whole time slice (milliseconds) before the reply goes out. Several
    publications accepted in one turn also leave in one write per pipe.
    """

    def __init__(self) -> None:
        self._workers: dict[int, PublicationStream] = {}
        self._pending: list[bytes] = []

    async def start(self, deliver: Deliver) -> None:
        """The hub holds no subscribers; delivery happens in the workers."""

    async def attach(self, worker_id: int, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()

        def forward(head: bytes, data_json: bytes) -> None:
            self._broadcast((head, data_json))

        def lost() -> None:
            self._workers.pop(worker_id, None)

        _, stream = await loop.create_unix_connection(
            lambda: PublicationStream(forward, lost), sock=sock
        )
        self._workers[worker_id] = stream

    def detach(self, worker_id: int) -> None:
        stream = self._workers.pop(worker_id, None)
        if stream is not None and stream.transport is not None:
            stream.transport.close()

    def publish(self, publication: Publication) -> None:
        self._broadcast(encode_publication(publication))

    def _broadcast(self, frame: tuple[bytes, bytes]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._write_pending)
        self._pending.extend(frame)

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        for stream in self._workers.values():
            if stream.transport is not None:
                stream.transport.writelines(pending)

    @property
    def workers(self) -> int:
        return len(self._workers)

    async def close(self) -> None:
        """Close each pipe once what was written to it is flushed: the workers' signal to stop."""
        if self._pending:
            self._write_pending()
        for stream in list(self._workers.values()):
            if stream.transport is not None:
                stream.transport.close()  # flushes its buffer first
        self._workers.clear()
