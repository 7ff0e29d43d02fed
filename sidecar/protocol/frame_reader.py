"""WebSocket frames from clients (RFC 6455 section 5), parsed without I/O.

Bytes in, whole messages out: `FrameReader.feed()` takes whatever the transport delivered and
returns the messages and control frames it completed. Everything a client can get wrong raises
`FrameError` with the close code the RFC prescribes, before a byte of an oversized payload is
buffered. Clients send little (subscriptions, pings, client events), so the reader is small:
no extensions, no buffering but the unfinished tail.
"""

from __future__ import annotations

from enum import IntEnum

HEADER_MIN = 2
MASK_LENGTH = 4
CONTROL_PAYLOAD_MAX = 125
MAX_FRAGMENTS = 1024  # frames one message may come in


class Opcode(IntEnum):
    CONTINUATION = 0x0
    TEXT = 0x1
    BINARY = 0x2
    CLOSE = 0x8
    PING = 0x9
    PONG = 0xA


# Read once or more per frame: a member read off an Enum class costs 50-140 ns on Python 3.11
# (the metaclass's __getattr__ turns it into a slow lookup), a module global ~10 ns.
_CONTROL_OPCODES = frozenset({Opcode.CLOSE, Opcode.PING, Opcode.PONG})
_DATA_OPCODES = frozenset({Opcode.CONTINUATION, Opcode.TEXT, Opcode.BINARY})
_OPCODE_OF = {opcode.value: opcode for opcode in Opcode}  # Opcode(n) is a call through Enum
_CLOSE, _CONTINUATION, _TEXT = Opcode.CLOSE, Opcode.CONTINUATION, Opcode.TEXT


class FrameError(Exception):
    """The client broke the framing rules; the connection ends with `code`.

    `messages` are those the same `feed()` completed before the broken frame: the client sent
    them first, so they are handled before the connection ends.
    """

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.messages: list[Message] = []


PROTOCOL_ERROR = 1002
INVALID_DATA = 1007
MESSAGE_TOO_BIG = 1009

# A message: its opcode and payload, text already decoded.
Message = tuple[Opcode, bytes | str]


def unmask(payload: bytes, mask: bytes) -> bytes:
    """XOR with the repeated 4-byte mask, as one big-integer operation (no per-byte loop)."""
    n = len(payload)
    if not n:
        return b""
    key = (mask * ((n >> 2) + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


def allowed_on_the_wire(code: int) -> bool:
    """RFC 6455 7.4: the defined codes an endpoint may send, and 3000-4999 for applications;
    1005, 1006 and 1015 only ever describe a closure locally."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def parse_close(payload: bytes) -> int:
    """The code of a close frame's payload: 1005 when it carries none (RFC 6455 7.1.5)."""
    if not payload:
        return 1005
    if len(payload) == 1:
        raise FrameError(PROTOCOL_ERROR, "close frame with a one-byte payload")
    code = int.from_bytes(payload[:2], "big")
    if not allowed_on_the_wire(code):
        raise FrameError(PROTOCOL_ERROR, f"close code {code} may not be sent")
    try:
        payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(INVALID_DATA, "close reason is not valid UTF-8") from None
    return code


class FrameReader:
    """Frames of one client connection: masked, unextended, bounded by `max_message` bytes.

    An unfinished frame is kept as the pieces it came in, joined once it is whole (copying the
    tail into every read would be quadratic in a slowly sent frame). Its header is checked as
    soon as it is read, so what is kept is never more than `max_message` and a header.
    `max_message` may change between feeds (the connection raises it once it is trusted).
    """

    __slots__ = (
        "_fragments",
        "_fragments_opcode",
        "_fragments_size",
        "_needed",
        "_pending",
        "_pending_size",
        "max_message",
    )

    def __init__(self, max_message: int) -> None:
        self.max_message = max_message
        # The unfinished frame, as received. Idle connections are the many: they share one empty
        # tuple rather than hold an empty list each (56 bytes, times every connection).
        self._pending: list[bytes] | tuple[()] = ()
        self._pending_size = 0
        self._needed = 0  # bytes the unfinished frame needs before it can be read further
        self._fragments: list[bytes] | tuple[()] = ()
        self._fragments_opcode: Opcode | None = None
        self._fragments_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held for messages not yet complete: the unfinished frame and fragments."""
        return self._pending_size + self._fragments_size

    def feed(self, data: bytes) -> list[Message]:
        """The messages `data` completes; FrameError (carrying those before it) on bad framing."""
        pending = self._pending
        if pending:
            assert isinstance(pending, list)
            pending.append(data)
            self._pending_size += len(data)
            if self._pending_size < self._needed:
                return []
            buffer = b"".join(pending)
        else:
            buffer = data
        messages: list[Message] = []
        try:
            offset, needed = self._read(buffer, messages)
        except FrameError as exc:
            exc.messages = messages
            self._pending = ()
            self._pending_size = 0
            raise
        end = len(buffer)
        if offset < end:
            self._pending = [buffer[offset:] if offset else buffer]
            self._pending_size = end - offset
            self._needed = needed
        elif pending:
            self._pending = ()
            self._pending_size = 0
        return messages

    def _read(self, buffer: bytes, messages: list[Message]) -> tuple[int, int]:
        """Whole frames from `buffer` into `messages`: where the rest starts, and how many bytes
        from there the next frame needs before it can be read further."""
        offset = 0
        end = len(buffer)
        while True:
            if end - offset < HEADER_MIN:
                return offset, HEADER_MIN
            first, second = buffer[offset], buffer[offset + 1]
            length = second & 0x7F
            position = offset + 2
            if length == 126:
                if end - position < 2:
                    return offset, 4
                length = int.from_bytes(buffer[position : position + 2], "big")
                position += 2
            elif length == 127:
                if end - position < 8:
                    return offset, 10
                length = int.from_bytes(buffer[position : position + 8], "big")
                position += 8
            if length >> 63:
                raise FrameError(PROTOCOL_ERROR, "frame length with the most significant bit set")
            self._check_header(first, second, length)
            frame_end = position + MASK_LENGTH + length
            if frame_end > end:
                return offset, frame_end - offset
            mask = buffer[position : position + MASK_LENGTH]
            position += MASK_LENGTH
            payload = unmask(buffer[position:frame_end], mask)
            offset = frame_end
            message = self._complete(first, payload)
            if message is not None:
                messages.append(message)

    def _check_header(self, first: int, second: int, length: int) -> None:
        if first & 0x70:
            raise FrameError(PROTOCOL_ERROR, "reserved bits set: no extension was negotiated")
        if not second & 0x80:
            raise FrameError(PROTOCOL_ERROR, "client frames must be masked")
        opcode = first & 0x0F
        if opcode >= _CLOSE:
            if opcode not in _CONTROL_OPCODES:
                raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
            if not first & 0x80 or length > CONTROL_PAYLOAD_MAX:
                raise FrameError(PROTOCOL_ERROR, "control frames must be whole and short")
            return
        if opcode not in _DATA_OPCODES:
            raise FrameError(PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if opcode == _CONTINUATION and len(self._fragments) >= MAX_FRAGMENTS:
            # Empty fragments add nothing to the size: count them, or a client could grow the
            # list (and this process) without end.
            raise FrameError(MESSAGE_TOO_BIG, f"message in over {MAX_FRAGMENTS} fragments")
        if self._fragments_size + length > self.max_message:
            raise FrameError(MESSAGE_TOO_BIG, f"message over {self.max_message} bytes")

    def _complete(self, first: int, payload: bytes) -> Message | None:
        opcode = _OPCODE_OF[first & 0x0F]  # _check_header let no other through
        final = bool(first & 0x80)
        if opcode >= _CLOSE:
            return opcode, payload
        if opcode is _CONTINUATION:
            if self._fragments_opcode is None:
                raise FrameError(PROTOCOL_ERROR, "continuation without a message to continue")
            # A message under way (_fragments_opcode set) has its fragments in a list.
            self._fragments.append(payload)  # type: ignore[union-attr]
            self._fragments_size += len(payload)
            if not final:
                return None
            opcode = self._fragments_opcode
            payload = b"".join(self._fragments)
            self._fragments_opcode = None
            self._fragments = ()
            self._fragments_size = 0
        elif self._fragments_opcode is not None:
            raise FrameError(PROTOCOL_ERROR, "new message before the last one was finished")
        elif not final:
            self._fragments_opcode = opcode
            self._fragments = [payload]
            self._fragments_size = len(payload)
            return None
        if opcode is _TEXT:
            try:
                return opcode, payload.decode()
            except UnicodeDecodeError:
                raise FrameError(INVALID_DATA, "text message is not valid UTF-8") from None
        return opcode, payload
