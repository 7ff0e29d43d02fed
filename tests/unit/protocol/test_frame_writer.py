"""sidecar.protocol.frame_writer: unmasked server frames (RFC 6455 section 5.2), parsed back by
hand."""

from __future__ import annotations

import struct
from dataclasses import dataclass

import pytest

from sidecar.protocol.frame_writer import (
    OP_CLOSE,
    OP_PONG,
    OP_TEXT,
    close_frame,
    frame_header,
    pong_frame,
    text_frame,
)


@dataclass
class Parsed:
    fin: bool
    rsv: int
    opcode: int
    masked: bool
    length: int
    header_length: int
    payload: bytes


def parse(frame: bytes) -> Parsed:
    """Read one frame the way a client would; the frame must hold exactly one payload."""
    b0, b1 = frame[0], frame[1]
    length = b1 & 0x7F
    offset = 2
    if length == 126:
        (length,) = struct.unpack("!H", frame[2:4])
        offset = 4
    elif length == 127:
        (length,) = struct.unpack("!Q", frame[2:10])
        offset = 10
    payload = frame[offset:]
    assert len(payload) == length, "payload length disagrees with the header"
    return Parsed(
        fin=bool(b0 & 0x80),
        rsv=b0 & 0x70,
        opcode=b0 & 0x0F,
        masked=bool(b1 & 0x80),
        length=length,
        header_length=offset,
        payload=payload,
    )


@pytest.mark.parametrize(
    ("length", "header_length", "length_byte"),
    [
        (0, 2, 0),
        (1, 2, 1),
        (125, 2, 125),
        (126, 4, 126),
        (127, 4, 126),
        (65535, 4, 126),
        (65536, 10, 127),
        (70000, 10, 127),
    ],
)
def test_header_length_encoding_at_the_boundaries(
    length: int, header_length: int, length_byte: int
) -> None:
    header = frame_header(OP_TEXT, length)
    assert len(header) == header_length
    assert header[0] == 0x80 | OP_TEXT
    assert header[1] == length_byte  # mask bit clear: servers never mask
    if header_length == 4:
        assert struct.unpack("!H", header[2:])[0] == length
    elif header_length == 10:
        assert struct.unpack("!Q", header[2:])[0] == length


@pytest.mark.parametrize("length", [0, 5, 125, 126, 65535, 65536])
def test_text_frame_parses_back(length: int) -> None:
    payload = bytes(i % 251 for i in range(length))
    parsed = parse(text_frame(payload))
    assert parsed.fin
    assert parsed.rsv == 0
    assert parsed.opcode == OP_TEXT
    assert not parsed.masked
    assert parsed.length == length
    assert parsed.payload == payload


def test_text_frame_of_utf8_json() -> None:
    payload = '{"event":"e","data":"héllo ✓"}'.encode()
    parsed = parse(text_frame(payload))
    assert parsed.payload.decode() == '{"event":"e","data":"héllo ✓"}'


def test_close_frame_carries_code_and_reason() -> None:
    parsed = parse(close_frame(4201, "Pong reply not received"))
    assert parsed.fin
    assert parsed.opcode == OP_CLOSE
    assert not parsed.masked
    assert struct.unpack("!H", parsed.payload[:2])[0] == 4201
    assert parsed.payload[2:] == b"Pong reply not received"


def test_close_frame_without_reason_is_just_the_code() -> None:
    parsed = parse(close_frame(1000))
    assert parsed.payload == struct.pack("!H", 1000)


def test_close_frame_reason_is_truncated_to_fit_125_bytes() -> None:
    frame = close_frame(4200, "x" * 300)
    parsed = parse(frame)
    assert parsed.header_length == 2  # a control frame never uses the extended length
    assert parsed.length == 125
    assert struct.unpack("!H", parsed.payload[:2])[0] == 4200
    assert parsed.payload[2:] == b"x" * 123


def test_close_frame_reason_of_exactly_123_bytes_is_kept_whole() -> None:
    parsed = parse(close_frame(4000, "y" * 123))
    assert parsed.length == 125
    assert parsed.payload[2:] == b"y" * 123


def test_close_frame_truncation_keeps_the_reason_valid_utf8() -> None:
    # RFC 6455 7.1.6: the reason is UTF-8; a client receiving invalid UTF-8 fails the connection.
    parsed = parse(close_frame(4200, "é" * 100))  # 200 bytes; byte 123 is mid-character
    assert parsed.length <= 125
    parsed.payload[2:].decode("utf-8")


def test_pong_frame_echoes_payload() -> None:
    parsed = parse(pong_frame(b"ping-data"))
    assert parsed.fin
    assert parsed.opcode == OP_PONG
    assert parsed.payload == b"ping-data"


def test_pong_frame_payload_is_capped_at_125_bytes() -> None:
    parsed = parse(pong_frame(b"z" * 200))
    assert parsed.header_length == 2
    assert parsed.payload == b"z" * 125
