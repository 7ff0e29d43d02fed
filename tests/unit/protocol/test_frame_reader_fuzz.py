"""Fuzzing sidecar.protocol.frame_reader: any bytes give messages or a FrameError, nothing else.

Round trip: masked frames encoded here, fragmented and interleaved with control frames, give
back the same messages however the bytes are split into reads. Limits: what the reader holds
stays within one message's bound.
"""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sidecar.protocol.frame_reader import (
    CONTROL_PAYLOAD_MAX,
    MAX_FRAGMENTS,
    FrameError,
    FrameReader,
    Message,
    Opcode,
)
from tests.support.fuzz import cut_points, held_bytes, split_at
from tests.support.wire import frame

MAX_MESSAGE = 4096
# The longest frame header: 2 bytes, 8 of extended length, 4 of mask.
MAX_HEADER = 14
CLOSE_CODES = {1002, 1007, 1009}


def feed_all(reader: FrameReader, pieces: list[bytes]) -> list[Message]:
    """Every piece in order; after each, the reader holds no more than one frame's worth."""
    messages: list[Message] = []
    for piece in pieces:
        messages.extend(reader.feed(piece))
        # The unfinished tail plus the fragments so far: bounded by the message limit, whatever
        # the client sent (a frame announcing more is refused before its payload is kept).
        assert held_bytes(reader) <= 2 * reader.max_message + MAX_HEADER
    return messages


def outcome(data: bytes, pieces: list[bytes]) -> tuple[list[Message], int | None]:
    reader = FrameReader(MAX_MESSAGE)
    messages: list[Message] = []
    try:
        for piece in pieces:
            messages.extend(reader.feed(piece))
            assert held_bytes(reader) <= 2 * MAX_MESSAGE + MAX_HEADER
    except FrameError as exc:
        assert exc.code in CLOSE_CODES
        assert exc.reason
        return messages, exc.code
    return messages, None


@given(st.binary(max_size=2048), st.data())
def test_any_bytes_give_messages_or_a_frame_error(data: bytes, draw: st.DataObject) -> None:
    whole, whole_error = outcome(data, [data])
    pieces = split_at(data, draw.draw(cut_points(len(data))))
    split, split_error = outcome(data, pieces)
    # Split reads see the same stream: the same error, and when none, the same messages.
    assert split_error == whole_error
    if whole_error is None:
        assert split == whole


# Bytes that look like frame headers more often than random bytes do.
header_like = st.builds(
    lambda first, second, rest: bytes([first, second]) + rest,
    st.sampled_from([0x81, 0x82, 0x01, 0x00, 0x80, 0x88, 0x89, 0x8A, 0x8F, 0xC1, 0x03]),
    st.sampled_from([0x80, 0xFD, 0xFE, 0xFF, 0x85, 0x05, 0x7E, 0x7F]),
    st.binary(max_size=40),
)


@given(st.lists(header_like, max_size=12), st.data())
def test_header_like_bytes_give_messages_or_a_frame_error(
    chunks: list[bytes], draw: st.DataObject
) -> None:
    data = b"".join(chunks)
    whole, whole_error = outcome(data, [data])
    split, split_error = outcome(data, split_at(data, draw.draw(cut_points(len(data)))))
    assert split_error == whole_error
    if whole_error is None:
        assert split == whole


text_payload = st.text(max_size=300).map(str.encode)
data_message = st.tuples(
    st.sampled_from([Opcode.TEXT, Opcode.BINARY]),
    st.binary(max_size=300),
    st.lists(st.integers(0, 300), max_size=6),  # where the message is cut into fragments
)
control = st.tuples(
    st.sampled_from([Opcode.PING, Opcode.PONG]), st.binary(max_size=CONTROL_PAYLOAD_MAX)
)


@given(st.lists(st.one_of(data_message, control, text_payload), min_size=1, max_size=12), st.data())
def test_encoded_frames_come_back_whole_however_they_are_read(
    items: list, draw: st.DataObject
) -> None:
    wire = b""
    expected: list[Message] = []
    for item in items:
        if isinstance(item, bytes):  # a text message, whole
            wire += frame(Opcode.TEXT, item)
            expected.append((Opcode.TEXT, item.decode()))
        elif len(item) == 2:  # a control frame
            opcode, payload = item
            wire += frame(opcode, payload)
            expected.append((opcode, payload))
        else:
            opcode, payload, cuts = item
            if opcode is Opcode.TEXT:
                payload = payload.decode("utf-8", "replace").encode()[:300]
                # cut bytes, not characters: fragments of a text message need not be UTF-8
            pieces = split_at(payload, sorted({min(c, len(payload)) for c in cuts}))
            for i, piece in enumerate(pieces):
                wire += frame(
                    opcode if i == 0 else Opcode.CONTINUATION, piece, fin=i == len(pieces) - 1
                )
                if i == 0 and len(pieces) > 1:
                    # a ping may arrive between the fragments of a message
                    wire += frame(Opcode.PING, b"between")
                    expected.append((Opcode.PING, b"between"))
            expected.append((opcode, payload.decode() if opcode is Opcode.TEXT else payload))
    reader = FrameReader(MAX_MESSAGE)
    pieces = split_at(wire, draw.draw(cut_points(len(wire))))
    assert feed_all(reader, pieces) == expected
    assert held_bytes(reader) == 0


@given(st.integers(MAX_MESSAGE + 1, (1 << 63) - 1), st.integers(0, 3))
def test_a_frame_over_the_limit_is_refused_before_its_payload(length: int, sent: int) -> None:
    """The header alone is enough: no byte of an oversized payload is waited for or kept."""
    head = bytes([0x82, 0xFF]) + length.to_bytes(8, "big") + b"mask"
    reader = FrameReader(MAX_MESSAGE)
    with pytest.raises(FrameError) as caught:
        reader.feed(head + b"x" * sent)
    assert caught.value.code == 1009


@given(st.integers(MAX_FRAGMENTS, MAX_FRAGMENTS + 5))
def test_empty_fragments_are_counted(count: int) -> None:
    wire = frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.CONTINUATION, b"", fin=False) * count
    reader = FrameReader(MAX_MESSAGE)
    with pytest.raises(FrameError) as caught:
        reader.feed(wire)
    assert caught.value.code == 1009


@given(st.sampled_from([Opcode.CLOSE, Opcode.PING, Opcode.PONG]), st.binary(min_size=126))
def test_long_control_frames_are_refused(opcode: Opcode, payload: bytes) -> None:
    with pytest.raises(FrameError) as caught:
        FrameReader(MAX_MESSAGE).feed(frame(opcode, payload))
    assert caught.value.code == 1002
