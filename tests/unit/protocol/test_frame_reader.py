"""sidecar.protocol.frame_reader: client frames (RFC 6455 section 5) parsed from bytes, no I/O."""

from __future__ import annotations

import random
import struct

import pytest

from sidecar.protocol.frame_reader import (
    INVALID_DATA,
    MAX_FRAGMENTS,
    MESSAGE_TOO_BIG,
    PROTOCOL_ERROR,
    FrameError,
    FrameReader,
    Opcode,
    parse_close,
    unmask,
)

RNG = random.Random(6455)


def reference_unmask(payload: bytes, mask: bytes) -> bytes:
    """RFC 6455 5.3, byte by byte: octet i XOR mask octet i mod 4."""
    return bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def client_frame(
    opcode: int,
    payload: bytes = b"",
    *,
    fin: bool = True,
    rsv: int = 0,
    masked: bool = True,
    mask: bytes | None = None,
    length: int | None = None,
) -> bytes:
    """A frame as a browser sends it: masked with a random key, shortest length form.

    `length` overrides the length field (for headers of frames whose payload is not sent).
    """
    declared = len(payload) if length is None else length
    first = (0x80 if fin else 0) | (rsv << 4) | opcode
    mask_bit = 0x80 if masked else 0
    if declared < 126:
        header = bytes((first, mask_bit | declared))
    elif declared < 1 << 16:
        header = struct.pack("!BBH", first, mask_bit | 126, declared)
    else:
        header = struct.pack("!BBQ", first, mask_bit | 127, declared)
    if not masked:
        return header + payload
    key = mask if mask is not None else RNG.randbytes(4)
    return header + key + reference_unmask(payload, key)


def text(payload: str, **kwargs: object) -> bytes:
    return client_frame(Opcode.TEXT, payload.encode(), **kwargs)  # type: ignore[arg-type]


def feed_error(reader: FrameReader, data: bytes) -> FrameError:
    with pytest.raises(FrameError) as info:
        reader.feed(data)
    return info.value


# unmask -------------------------------------------------------------------------------------


@pytest.mark.parametrize("length", range(0, 9))
def test_unmask_short_payloads_match_the_reference(length: int) -> None:
    payload = bytes(range(1, length + 1))
    mask = b"\x37\xfa\x21\x3d"
    assert unmask(payload, mask) == reference_unmask(payload, mask)
    assert len(unmask(payload, mask)) == length


def test_unmask_random_payloads_match_the_reference() -> None:
    rng = random.Random(1234)
    for _ in range(300):
        payload = rng.randbytes(rng.randrange(0, 2000))
        mask = rng.randbytes(4)
        assert unmask(payload, mask) == reference_unmask(payload, mask)


def test_unmask_keeps_leading_and_trailing_zero_bytes() -> None:
    # A big-integer XOR could lose zero octets at either end; the length must survive.
    mask = b"\x01\x02\x03\x04"
    payload = reference_unmask(b"\x00\x00abc\x00\x00\x00", mask)
    assert unmask(payload, mask) == b"\x00\x00abc\x00\x00\x00"
    assert unmask(b"\x00" * 7, b"\x00" * 4) == b"\x00" * 7


def test_unmask_rfc_example() -> None:
    # RFC 6455 5.7: a masked "Hello".
    assert unmask(b"\x7f\x9f\x4d\x51\x58", b"\x37\xfa\x21\x3d") == b"Hello"


def test_reader_reads_the_rfc_masked_hello_example() -> None:
    frame = bytes.fromhex("818537fa213d7f9f4d5158")
    assert FrameReader(1024).feed(frame) == [(Opcode.TEXT, "Hello")]


# Length forms -------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 125, 126, 127, 1000, 65535, 65536, 70000])
def test_each_length_form_is_read(size: int) -> None:
    payload = RNG.randbytes(size)
    reader = FrameReader(100_000)
    assert reader.feed(client_frame(Opcode.BINARY, payload)) == [(Opcode.BINARY, payload)]


def test_length_forms_are_the_ones_intended() -> None:
    # The helper must really produce 7-, 16- and 64-bit forms, or the test above proves little.
    assert client_frame(Opcode.BINARY, b"x" * 125)[1] & 0x7F == 125
    assert client_frame(Opcode.BINARY, b"x" * 126)[1] & 0x7F == 126
    assert client_frame(Opcode.BINARY, b"x" * 65536)[1] & 0x7F == 127


def test_text_message_is_decoded() -> None:
    reader = FrameReader(1024)
    message = '{"event":"pusher:ping","data":{}} é ✓ 🎉'
    assert reader.feed(text(message)) == [(Opcode.TEXT, message)]
    (opcode, payload) = reader.feed(text(message))[0]
    assert isinstance(payload, str)
    assert opcode is Opcode.TEXT


def test_binary_message_stays_bytes() -> None:
    (message,) = FrameReader(1024).feed(client_frame(Opcode.BINARY, b"\xff\x00\xfe"))
    assert message == (Opcode.BINARY, b"\xff\x00\xfe")
    assert isinstance(message[1], bytes)


# Splitting and batching ---------------------------------------------------------------------


@pytest.mark.parametrize("size", [5, 200, 66000])
def test_a_frame_split_at_every_byte_boundary(size: int) -> None:
    payload = "a" * size
    frame = text(payload)
    # Every split point for small frames; for the 64-bit form, every point in the header and
    # mask plus a sample of the payload (all 66 thousand would be slow and prove no more).
    if size < 1000:
        points = range(1, len(frame))
    else:
        points = [*range(1, 20), *RNG.sample(range(20, len(frame)), 30), len(frame) - 1]
    for cut in points:
        reader = FrameReader(100_000)
        assert reader.feed(frame[:cut]) == [], cut
        assert reader.feed(frame[cut:]) == [(Opcode.TEXT, payload)], cut


def test_a_frame_fed_one_byte_at_a_time() -> None:
    frames = text("hello") + client_frame(Opcode.PING, b"p") + text("x" * 300)
    reader = FrameReader(1024)
    out = []
    for i in range(len(frames)):
        out.extend(reader.feed(frames[i : i + 1]))
    assert out == [(Opcode.TEXT, "hello"), (Opcode.PING, b"p"), (Opcode.TEXT, "x" * 300)]


def test_several_frames_in_one_feed() -> None:
    data = (
        text("one")
        + client_frame(Opcode.BINARY, b"two")
        + client_frame(Opcode.PING, b"")
        + client_frame(Opcode.PONG, b"pp")
        + text("three" * 50)
        + client_frame(Opcode.CLOSE, struct.pack("!H", 1000))
    )
    assert FrameReader(1024).feed(data) == [
        (Opcode.TEXT, "one"),
        (Opcode.BINARY, b"two"),
        (Opcode.PING, b""),
        (Opcode.PONG, b"pp"),
        (Opcode.TEXT, "three" * 50),
        (Opcode.CLOSE, b"\x03\xe8"),
    ]


def test_whole_frames_plus_a_partial_tail() -> None:
    reader = FrameReader(1024)
    second = text("second")
    assert reader.feed(text("first") + second[:4]) == [(Opcode.TEXT, "first")]
    assert reader.feed(b"") == []
    assert reader.feed(second[4:] + text("third")) == [
        (Opcode.TEXT, "second"),
        (Opcode.TEXT, "third"),
    ]


def test_empty_feed_on_a_fresh_reader() -> None:
    assert FrameReader(10).feed(b"") == []


# Fragmentation ------------------------------------------------------------------------------


def test_text_in_fragments() -> None:
    reader = FrameReader(1024)
    assert reader.feed(text("Hel", fin=False)) == []
    assert reader.feed(client_frame(Opcode.CONTINUATION, b"lo, ", fin=False)) == []
    assert reader.feed(client_frame(Opcode.CONTINUATION, b"world")) == [
        (Opcode.TEXT, "Hello, world")
    ]
    # The reader is ready for the next message.
    assert reader.feed(text("next")) == [(Opcode.TEXT, "next")]


def test_a_multibyte_character_split_across_fragments() -> None:
    encoded = "é✓".encode()
    reader = FrameReader(1024)
    data = (
        client_frame(Opcode.TEXT, encoded[:1], fin=False)
        + client_frame(Opcode.CONTINUATION, encoded[1:4], fin=False)
        + client_frame(Opcode.CONTINUATION, encoded[4:])
    )
    assert reader.feed(data) == [(Opcode.TEXT, "é✓")]


def test_binary_in_fragments_with_empty_pieces() -> None:
    reader = FrameReader(1024)
    data = (
        client_frame(Opcode.BINARY, b"", fin=False)
        + client_frame(Opcode.CONTINUATION, b"ab", fin=False)
        + client_frame(Opcode.CONTINUATION, b"")
    )
    assert reader.feed(data) == [(Opcode.BINARY, b"ab")]


def test_control_frames_inside_a_fragmented_message() -> None:
    reader = FrameReader(1024)
    data = (
        text("par", fin=False)
        + client_frame(Opcode.PING, b"1")
        + client_frame(Opcode.CONTINUATION, b"ti", fin=False)
        + client_frame(Opcode.PONG, b"2")
        + client_frame(Opcode.CONTINUATION, b"al")
    )
    assert reader.feed(data) == [
        (Opcode.PING, b"1"),
        (Opcode.PONG, b"2"),
        (Opcode.TEXT, "partial"),
    ]


def test_a_close_frame_inside_a_fragmented_message_is_delivered() -> None:
    reader = FrameReader(1024)
    data = text("unfinished", fin=False) + client_frame(Opcode.CLOSE, b"\x03\xe8")
    assert reader.feed(data) == [(Opcode.CLOSE, b"\x03\xe8")]


# Framing errors -----------------------------------------------------------------------------


def test_unmasked_frame_is_a_protocol_error() -> None:
    error = feed_error(FrameReader(1024), text("hi", masked=False))
    assert error.code == PROTOCOL_ERROR == 1002
    assert "mask" in error.reason


def test_unmasked_frame_is_refused_from_its_first_two_bytes() -> None:
    error = feed_error(FrameReader(1024), text("hi", masked=False)[:2])
    assert error.code == 1002


@pytest.mark.parametrize("rsv", [1, 2, 4, 7])
def test_reserved_bits_are_a_protocol_error(rsv: int) -> None:
    error = feed_error(FrameReader(1024), text("hi", rsv=rsv))
    assert error.code == 1002
    assert "reserved" in error.reason


@pytest.mark.parametrize("opcode", [0x3, 0x4, 0x5, 0x6, 0x7, 0xB, 0xC, 0xD, 0xE, 0xF])
def test_unknown_opcode_is_a_protocol_error(opcode: int) -> None:
    error = feed_error(FrameReader(1024), client_frame(opcode, b"x"))
    assert error.code == 1002
    assert "opcode" in error.reason


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_of_125_bytes_is_fine(opcode: Opcode) -> None:
    payload = b"\x03\xe8" + b"r" * 123
    assert FrameReader(1024).feed(client_frame(opcode, payload)) == [(opcode, payload)]


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_control_frame_too_long_is_a_protocol_error(opcode: Opcode) -> None:
    error = feed_error(FrameReader(1024), client_frame(opcode, b"\x03\xe8" + b"r" * 124))
    assert error.code == 1002


def test_control_frame_too_long_is_refused_from_its_header() -> None:
    frame = client_frame(Opcode.PING, b"p" * 126)
    error = feed_error(FrameReader(1024), frame[:4])  # header with the 16-bit length only
    assert error.code == 1002


@pytest.mark.parametrize("opcode", [Opcode.PING, Opcode.PONG, Opcode.CLOSE])
def test_fragmented_control_frame_is_a_protocol_error(opcode: Opcode) -> None:
    error = feed_error(FrameReader(1024), client_frame(opcode, b"x", fin=False))
    assert error.code == 1002


@pytest.mark.parametrize("fin", [True, False])
def test_continuation_without_a_start_is_a_protocol_error(fin: bool) -> None:
    error = feed_error(FrameReader(1024), client_frame(Opcode.CONTINUATION, b"x", fin=fin))
    assert error.code == 1002
    assert "continuation" in error.reason


def test_continuation_after_a_finished_message_is_a_protocol_error() -> None:
    reader = FrameReader(1024)
    assert reader.feed(text("a", fin=False) + client_frame(Opcode.CONTINUATION, b"b")) == [
        (Opcode.TEXT, "ab")
    ]
    assert feed_error(reader, client_frame(Opcode.CONTINUATION, b"c")).code == 1002


@pytest.mark.parametrize("opcode", [Opcode.TEXT, Opcode.BINARY])
@pytest.mark.parametrize("fin", [True, False])
def test_new_data_frame_inside_a_fragmented_message_is_a_protocol_error(
    opcode: Opcode, fin: bool
) -> None:
    reader = FrameReader(1024)
    assert reader.feed(text("start", fin=False)) == []
    error = feed_error(reader, client_frame(opcode, b"x", fin=fin))
    assert error.code == 1002


@pytest.mark.parametrize(
    "payload",
    [
        b"\xff",
        b"\xc3",  # truncated two-byte sequence
        b"\xc0\xaf",  # overlong "/"
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"ok \x80 not",
    ],
)
def test_invalid_utf8_text_is_invalid_data(payload: bytes) -> None:
    error = feed_error(FrameReader(1024), client_frame(Opcode.TEXT, payload))
    assert error.code == INVALID_DATA == 1007


def test_invalid_utf8_across_fragments_is_invalid_data() -> None:
    reader = FrameReader(1024)
    data = client_frame(Opcode.TEXT, b"ok", fin=False) + client_frame(
        Opcode.CONTINUATION, b"\xe2\x9c"
    )
    assert feed_error(reader, data).code == 1007


def test_invalid_utf8_in_binary_is_fine() -> None:
    assert FrameReader(1024).feed(client_frame(Opcode.BINARY, b"\xff")) == [
        (Opcode.BINARY, b"\xff")
    ]


# Size limit ---------------------------------------------------------------------------------


def test_message_of_exactly_the_limit_is_fine() -> None:
    assert FrameReader(300).feed(text("x" * 300)) == [(Opcode.TEXT, "x" * 300)]


def test_message_over_the_limit_is_too_big() -> None:
    error = feed_error(FrameReader(300), text("x" * 301))
    assert error.code == MESSAGE_TOO_BIG == 1009


def test_huge_frame_is_refused_from_its_header_alone() -> None:
    # Only the 10 header bytes of a 1 GiB frame: refused without waiting for (or buffering) it.
    header = client_frame(Opcode.BINARY, length=1 << 30)[:10]
    assert len(header) == 10
    error = feed_error(FrameReader(64 * 1024), header)
    assert error.code == 1009


def test_huge_frame_header_in_pieces_is_refused_once_the_length_is_known() -> None:
    header = client_frame(Opcode.TEXT, length=1 << 30)[:10]
    reader = FrameReader(64 * 1024)
    for i in range(9):
        assert reader.feed(header[i : i + 1]) == []
    assert feed_error(reader, header[9:]).code == 1009


def test_64_bit_length_with_the_top_bit_set_is_a_protocol_error_not_a_crash() -> None:
    # RFC 6455 5.2: the most significant bit of a 64-bit length MUST be 0.
    header = struct.pack("!BBQ", 0x82, 0x80 | 127, (1 << 64) - 1)
    assert feed_error(FrameReader(1024), header).code == 1002


def test_close_reason_that_is_not_utf8_is_invalid_data() -> None:
    with pytest.raises(FrameError) as caught:
        parse_close(struct.pack("!H", 1000) + b"\xff\xfe")
    assert caught.value.code == 1007


def test_fragments_summing_over_the_limit_are_too_big() -> None:
    reader = FrameReader(100)
    assert reader.feed(text("x" * 40, fin=False)) == []
    assert reader.feed(client_frame(Opcode.CONTINUATION, b"x" * 40, fin=False)) == []
    error = feed_error(reader, client_frame(Opcode.CONTINUATION, b"x" * 21))
    assert error.code == 1009


def test_fragments_summing_to_the_limit_are_fine() -> None:
    reader = FrameReader(100)
    data = (
        text("x" * 40, fin=False)
        + client_frame(Opcode.CONTINUATION, b"x" * 40, fin=False)
        + client_frame(Opcode.CONTINUATION, b"x" * 20)
    )
    assert reader.feed(data) == [(Opcode.TEXT, "x" * 100)]


def test_the_limit_applies_per_message_not_per_connection() -> None:
    reader = FrameReader(100)
    for _ in range(5):
        data = text("x" * 60, fin=False) + client_frame(Opcode.CONTINUATION, b"y" * 40)
        assert reader.feed(data) == [(Opcode.TEXT, "x" * 60 + "y" * 40)]


def test_control_frames_do_not_count_toward_the_limit() -> None:
    reader = FrameReader(10)
    assert reader.feed(client_frame(Opcode.PING, b"p" * 100)) == [(Opcode.PING, b"p" * 100)]


# parse_close --------------------------------------------------------------------------------


def test_close_without_payload_is_no_status() -> None:
    assert parse_close(b"") == 1005


def test_close_with_one_byte_is_a_protocol_error() -> None:
    with pytest.raises(FrameError) as info:
        parse_close(b"\x03")
    assert info.value.code == 1002


@pytest.mark.parametrize("code", [1000, 1001, 1011, 3000, 4001, 4999])
def test_close_code_is_read(code: int) -> None:
    assert parse_close(struct.pack("!H", code)) == code


def test_close_code_with_a_reason_is_read() -> None:
    assert parse_close(struct.pack("!H", 4200) + "bye ✓".encode()) == 4200


@pytest.mark.parametrize("code", [0, 999, 1004, 1006, 1015, 1016, 2999, 5000, 65535])
def test_close_with_a_code_not_allowed_on_the_wire_is_a_protocol_error(code: int) -> None:
    with pytest.raises(FrameError) as info:
        parse_close(struct.pack("!H", code))
    assert info.value.code == 1002


# FrameError ---------------------------------------------------------------------------------


def test_frame_error_carries_code_and_reason() -> None:
    error = FrameError(1009, "too big")
    assert (error.code, error.reason, str(error)) == (1009, "too big", "too big")


def test_endless_empty_fragments_are_refused_not_kept() -> None:
    reader = FrameReader(64 * 1024)
    assert reader.feed(client_frame(Opcode.TEXT, b"{", fin=False)) == []
    empty = client_frame(Opcode.CONTINUATION, b"", fin=False)
    for _ in range(MAX_FRAGMENTS - 1):
        assert reader.feed(empty) == []
    assert feed_error(reader, empty).code == 1009


# Messages before a broken frame ---------------------------------------------------------------


def test_messages_before_a_broken_frame_come_with_the_error() -> None:
    reader = FrameReader(1024)
    data = text("first") + client_frame(Opcode.PING, b"p") + text("late", masked=False)
    error = feed_error(reader, data)
    assert error.code == PROTOCOL_ERROR
    assert error.messages == [(Opcode.TEXT, "first"), (Opcode.PING, b"p")]


def test_messages_before_a_text_that_is_not_utf8_come_with_the_error() -> None:
    reader = FrameReader(1024)
    error = feed_error(reader, text("ok") + client_frame(Opcode.TEXT, b"\xff"))
    assert error.code == INVALID_DATA
    assert error.messages == [(Opcode.TEXT, "ok")]


def test_only_the_messages_of_the_failing_feed_come_with_the_error() -> None:
    reader = FrameReader(1024)
    assert reader.feed(text("earlier")) == [(Opcode.TEXT, "earlier")]
    error = feed_error(reader, text("now") + client_frame(Opcode.BINARY, length=5000)[:4])
    assert error.code == MESSAGE_TOO_BIG
    assert error.messages == [(Opcode.TEXT, "now")]


def test_an_error_in_the_first_frame_comes_with_no_messages() -> None:
    assert feed_error(FrameReader(1024), text("x", masked=False)).messages == []


# The unfinished frame -------------------------------------------------------------------------


def test_an_unfinished_frame_holds_what_was_received_and_no_more() -> None:
    frame = text("x" * 1000)
    reader = FrameReader(1024)
    for i in range(len(frame) - 1):
        assert reader.feed(frame[i : i + 1]) == []
        assert reader.buffered == i + 1
    assert reader.feed(frame[-1:]) == [(Opcode.TEXT, "x" * 1000)]
    assert reader.buffered == 0


def test_an_unfinished_frame_is_joined_once_not_copied_into_every_read() -> None:
    frame = text("y" * 5000)
    reader = FrameReader(10_000)
    pieces = [frame[i : i + 100] for i in range(0, len(frame), 100)]
    for piece in pieces[:-1]:
        assert reader.feed(piece) == []
    # Kept as the pieces themselves (the transport's own bytes objects) until complete.
    assert len(reader._pending) == len(pieces) - 1
    assert all(kept is piece for kept, piece in zip(reader._pending[1:], pieces[1:-1], strict=True))
    assert reader.feed(pieces[-1]) == [(Opcode.TEXT, "y" * 5000)]


def test_fragments_count_in_what_is_buffered() -> None:
    reader = FrameReader(1024)
    reader.feed(text("abc", fin=False) + client_frame(Opcode.CONTINUATION, b"de", fin=False))
    assert reader.buffered == 5


def test_the_limit_may_be_raised_between_feeds() -> None:
    reader = FrameReader(100)
    assert feed_error(FrameReader(100), text("z" * 500)[:4]).code == MESSAGE_TOO_BIG
    reader.max_message = 1000
    assert reader.feed(text("z" * 500)) == [(Opcode.TEXT, "z" * 500)]


def test_a_frame_over_a_lowered_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(8 * 1024)
    header = client_frame(Opcode.TEXT, length=64 * 1024 - 1)[:8]
    assert feed_error(reader, header).code == MESSAGE_TOO_BIG
