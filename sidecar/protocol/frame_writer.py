"""WebSocket frames written by the server (RFC 6455 section 5.2), built once per broadcast.

Server frames are never masked, so a frame is the same bytes for every subscriber: the relay
builds it once and hands the same object to each connection's send queue.
"""

from __future__ import annotations

import struct

OP_TEXT = 0x1
OP_CLOSE = 0x8
OP_PONG = 0xA
_FIN = 0x80


def frame_header(opcode: int, length: int) -> bytes:
    if length < 126:
        return bytes((_FIN | opcode, length))
    if length < 1 << 16:
        return struct.pack("!BBH", _FIN | opcode, 126, length)
    return struct.pack("!BBQ", _FIN | opcode, 127, length)


# A frame whose payload is at least this big stays two objects, header and payload, instead of
# one concatenated copy: the copy would cost one more payload's worth of memory per broadcast.
SPLIT_FRAME_AT = 64 * 1024

# What a send queue takes: one bytes object, or the pieces of a large frame in order.
Frame = bytes | tuple[bytes, ...]


def text_frame(payload: bytes) -> bytes:
    """A complete, final, unmasked text frame carrying `payload` (UTF-8 JSON)."""
    return frame_header(OP_TEXT, len(payload)) + payload


def broadcast_frame(*parts: bytes) -> Frame:
    """A text frame whose payload is `parts` joined, shared by many queues.

    A large payload is not joined: the frame stays (header + first part, *other parts), so the
    big part (an event's data) is referenced, never copied, however many channels carry it.
    """
    length = sum(map(len, parts))
    header = frame_header(OP_TEXT, length)
    if length < SPLIT_FRAME_AT:
        return b"".join((header, *parts))
    return (header + parts[0], *parts[1:])


def close_frame(code: int, reason: str = "") -> bytes:
    # Control frames carry at most 125 bytes: 2 for the code, the rest for the reason.
    # Cut on a character boundary: a close reason must be valid UTF-8 or the client fails.
    body = struct.pack("!H", code) + reason.encode()[:123].decode(errors="ignore").encode()
    return frame_header(OP_CLOSE, len(body)) + body


def pong_frame(payload: bytes) -> bytes:
    return frame_header(OP_PONG, len(payload[:125])) + payload[:125]
