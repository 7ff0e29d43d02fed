"""The pipe's frames: how publications, changes and the rest travel between a hub and a worker.

A frame is `!BII` (kind, meta length, data length), the meta, then the data; sidecar/engine/
broker/pipe.py says what each kind carries. A Redis hub (redis.py) sends a publication's frame
to Redis as it is, so that the hub of every node forwards it to its workers without decoding it.
"""

from __future__ import annotations

import asyncio
import struct
from collections.abc import Callable, Sequence
from typing import Any, cast

import orjson

from sidecar.engine.broker.base import Publication
from sidecar.engine.broker.changes import Change, encode_changes

HEADER = struct.Struct("!BII")
PUBLICATION, CHANGES, REPORT = 1, 2, 3
# A publication whose publisher waits for its answer (worker to hub, right after the
# PUBLICATION frame): meta `[seq]`. The hub answers with ACK `[seq, error]`, error null when the
# publication is in the order (with Redis: once Redis took it), else why not.
CONFIRM, ACK = 8, 9
# Hub to worker (Redis): meta `[[app_id, channel, serial], ...]`: the node's Redis subscription
# for each channel is confirmed, for the worker's subscribe numbered `serial` (its count of
# 0 -> 1 transitions, which both ends keep the same way from the worker's CountDelta frames).
READY = 10
# Hub to worker (Redis): a cache channel's last event, as Redis kept it, for the worker to keep
# (not to deliver) when the node starts hearing that channel: a publication frame otherwise.
CACHED = 11


def encode_publication(pub: Publication) -> tuple[bytes, bytes]:
    """Header + meta, and the data literal: written one after the other, never joined."""
    meta = orjson.dumps(
        [pub.app_id, pub.channels, pub.name, pub.socket_id, pub.user_id, pub.accepted_at]
    )
    return HEADER.pack(PUBLICATION, len(meta), len(pub.data_json)) + meta, pub.data_json


def decode_publication(head: bytes, data_json: bytes) -> Publication:
    app_id, channels, name, socket_id, user_id, accepted_at = orjson.loads(head[HEADER.size :])
    return Publication(app_id, tuple(channels), name, data_json, socket_id, user_id, accepted_at)


def meta_frame(kind: int, meta: bytes) -> bytes:
    return HEADER.pack(kind, len(meta), 0) + meta


def encode_changes_frame(origin: int, changes: Sequence[Change]) -> bytes:
    return meta_frame(CHANGES, encode_changes(origin, changes))


def encode_report(app_id: str, event: dict[str, Any]) -> bytes:
    return meta_frame(REPORT, orjson.dumps([app_id, event]))


def meta_of(head: bytes) -> bytes:
    return head[HEADER.size :]


class PublicationStream(asyncio.Protocol):
    """Splits a pipe's byte stream into whole frames: on_frame(kind, header + meta, data)."""

    def __init__(
        self,
        on_frame: Callable[[int, bytes, bytes], None],
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
        while len(buffer) - offset >= HEADER.size:
            kind, meta_len, data_len = HEADER.unpack_from(buffer, offset)
            end = offset + HEADER.size + meta_len + data_len
            if len(buffer) < end:
                break
            meta_end = offset + HEADER.size + meta_len
            self._on_frame(kind, bytes(buffer[offset:meta_end]), bytes(buffer[meta_end:end]))
            offset = end
        if offset:
            del buffer[:offset]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if self._on_lost is not None:
            self._on_lost()

    def write(self, *pieces: bytes) -> bool:
        """Write if the pipe is still there (a worker that is stopping may still report);
        whether it was."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return False
        transport.writelines(pieces)
        return True

    def backlog(self) -> int:
        """Bytes written but not yet taken by the other end."""
        transport = self.transport
        return transport.get_write_buffer_size() if transport is not None else 0


def ack_frame(seq: int, error: str | None) -> bytes:
    return meta_frame(ACK, orjson.dumps([seq, error]))


def ready_frame(ready: Sequence[tuple[str, str, int]]) -> bytes:
    return meta_frame(READY, orjson.dumps(ready))


def split_frame(frame: bytes) -> tuple[bytes, bytes]:
    """One whole frame as (header + meta, data), as PublicationStream hands it on."""
    _, meta_len, _ = HEADER.unpack_from(frame)
    end = HEADER.size + meta_len
    return frame[:end], frame[end:]


def cached_frame(publication: Publication) -> tuple[bytes, bytes]:
    head, data = encode_publication(publication)
    meta = head[HEADER.size :]
    return HEADER.pack(CACHED, len(meta), len(data)) + meta, data
