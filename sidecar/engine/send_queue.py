"""A connection's outgoing frames, bounded in bytes, held by reference, without I/O.

A broadcast puts the *same* frame object in every subscriber's queue; the queue never copies
it. The writer takes pieces up to a byte budget: several small frames come out together (one
system call for all of them), a large frame comes out as memoryview slices, so the transport
below holds at most one budget's worth of copied bytes per connection however big the event.
A large frame may be a tuple of pieces (header and JSON around a shared data literal); it stays
one entry, so it is written whole or, on a slow client's close, finished whole.
"""

from __future__ import annotations

from collections import deque

from sidecar.protocol.frame_writer import Frame

# Shared by every queue that never held a frame; never appended to (push swaps in its own).
_EMPTY: deque[Frame] = deque(maxlen=0)


class SendQueue:
    __slots__ = ("_frames", "_offset", "_part", "limit", "queued_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        # Made on first use: most connections are written to directly and never queue, and an
        # empty deque costs ~600 bytes, times every idle connection.
        self._frames: deque[Frame] = _EMPTY
        self._part = 0  # in a tuple frame at the head: the piece being written
        self._offset = 0  # bytes of the head piece already written
        self.queued_bytes = 0  # bytes not yet handed to the transport

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False when it would take a non-empty queue over its limit.

        An empty queue takes any frame, so a single event up to the payload limit always fits:
        only a client that has fallen behind is over the limit.
        """
        size = sum(map(len, frame)) if type(frame) is tuple else len(frame)
        frames = self._frames
        if frames:
            if self.queued_bytes + size > self.limit:
                return False
        elif frames is _EMPTY:
            frames = self._frames = deque()
        frames.append(frame)
        self.queued_bytes += size
        return True

    def take(self, budget: int) -> bytes | memoryview | None:
        """The next bytes to write, at most about `budget` of them, or None when empty."""
        frames = self._frames
        if not frames:
            return None
        head = frames[0]
        if type(head) is tuple:
            return self._take_piece(head, budget)
        assert isinstance(head, bytes)
        if self._offset or len(head) > budget:
            start = self._offset
            end = min(len(head), start + budget)
            self.queued_bytes -= end - start
            if end == len(head):
                frames.popleft()
                self._offset = 0
            else:
                self._offset = end
            return memoryview(head)[start:end]
        frames.popleft()
        if not frames or type(frames[0]) is tuple or len(head) + len(frames[0]) > budget:
            self.queued_bytes -= len(head)
            return head
        # Coalesce whole small frames up to the budget into one write.
        pieces = [head]
        taken = len(head)
        while frames:
            frame = frames[0]
            if type(frame) is tuple or taken + len(frame) > budget:
                break
            pieces.append(frames.popleft())  # type: ignore[arg-type]  # not a tuple: bytes
            taken += len(frame)
        self.queued_bytes -= taken
        return b"".join(pieces)

    def _take_piece(self, head: tuple[bytes, ...], budget: int) -> bytes | memoryview:
        piece = head[self._part]
        start = self._offset
        end = min(len(piece), start + budget)
        self.queued_bytes -= end - start
        if end == len(piece):
            self._part += 1
            self._offset = 0
            if self._part == len(head):
                self._frames.popleft()
                self._part = 0
        else:
            self._offset = end
        if start == 0 and end == len(piece):
            return piece
        return memoryview(piece)[start:end]

    def discard_unstarted(self) -> None:
        """Drop every frame not yet begun; a half-written frame stays so the stream stays valid."""
        if self._offset or self._part:
            head = self._frames[0]
            self._frames.clear()
            self._frames.append(head)
            if type(head) is tuple:
                self.queued_bytes = sum(map(len, head[self._part :])) - self._offset
            else:
                self.queued_bytes = len(head) - self._offset
        else:
            self._frames.clear()
            self.queued_bytes = 0
