"""A connection's outgoing frames, bounded in bytes, held by reference, without I/O.

A broadcast puts the *same* bytes object in every subscriber's queue; the queue never copies
it. The writer takes pieces up to a byte budget: several small frames come out together (one
system call for all of them), a large frame comes out as memoryview slices, so the transport
below holds at most one budget's worth of copied bytes per connection however big the event.
"""

from __future__ import annotations

from collections import deque

from sidecar.relay.frames import Frame


class SendQueue:
    __slots__ = ("_frames", "_head_offset", "limit", "queued_bytes")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._frames: deque[bytes] = deque()
        self._head_offset = 0  # bytes of the first frame already written
        self.queued_bytes = 0  # bytes not yet handed to the transport

    def __len__(self) -> int:
        return len(self._frames)

    def push(self, frame: Frame) -> bool:
        """Queue a frame; False when it would take a non-empty queue over its limit.

        An empty queue takes any frame, so a single event up to the payload limit always fits:
        only a client that has fallen behind is over the limit.
        """
        if type(frame) is tuple:  # the pieces of a large frame: all or none
            size = sum(map(len, frame))
            if self._frames and self.queued_bytes + size > self.limit:
                return False
            self._frames.extend(frame)
        else:
            size = len(frame)
            if self._frames and self.queued_bytes + size > self.limit:
                return False
            self._frames.append(frame)
        self.queued_bytes += size
        return True

    def take(self, budget: int) -> bytes | memoryview | None:
        """The next bytes to write, at most about `budget` of them, or None when empty."""
        frames = self._frames
        if not frames:
            return None
        head = frames[0]
        if self._head_offset or len(head) > budget:
            start = self._head_offset
            end = min(len(head), start + budget)
            piece = memoryview(head)[start:end]
            if end == len(head):
                frames.popleft()
                self._head_offset = 0
            else:
                self._head_offset = end
            self.queued_bytes -= end - start
            return piece
        if len(frames) == 1:
            frames.popleft()
            self.queued_bytes -= len(head)
            return head
        # Coalesce whole frames up to the budget into one write.
        pieces = []
        taken = 0
        while frames and taken + len(frames[0]) <= budget:
            frame = frames.popleft()
            pieces.append(frame)
            taken += len(frame)
        self.queued_bytes -= taken
        return b"".join(pieces)

    def discard_unstarted(self) -> None:
        """Drop every frame not yet begun; a half-written frame stays so the stream stays valid."""
        if self._head_offset:
            head = self._frames[0]
            self._frames.clear()
            self._frames.append(head)
            self.queued_bytes = len(head) - self._head_offset
        else:
            self._frames.clear()
            self.queued_bytes = 0
