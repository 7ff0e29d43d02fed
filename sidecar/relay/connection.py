"""One browser connection: its send queue, its subscriptions, and how it ends.

Writing is synchronous and never awaits on the broadcast path: `send()` queues a frame and marks
the connection for the next flush; the flush writes what the transport will take and, only when
the transport pushes back, starts one task that waits for it to drain. A client whose queue
overflows is closed with 4100 and never holds up anyone else.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from sidecar.relay.fanout import FlushScheduler
from sidecar.relay.frames import Frame, text_frame
from sidecar.relay.heartbeat import Heartbeat
from sidecar.relay.protocol import CLOSE_REASONS, CloseCode
from sidecar.relay.send_queue import SendQueue
from sidecar.relay.session import RateLimiter

# Bytes handed to the transport in one write. Small frames are merged up to this size (one system
# call for many events); a large event goes out in slices of it, so that the transport copies at
# most this much per connection, never the whole event.
WRITE_BUDGET = 64 * 1024


class FrameSink(Protocol):
    """Where a connection's bytes go: the transport of its WebSocket."""

    def write(self, data: bytes | memoryview) -> None: ...

    def is_paused(self) -> bool: ...

    async def wait_drained(self) -> None: ...

    def abort(self) -> None: ...


class ConnectionState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # no new frames; what is queued is still written, then the close frame
    CLOSED = "closed"


class Connection:
    __slots__ = (
        "_abort_timer",
        "_close_ready",
        "_draining",
        "_marked",
        "_queue",
        "_scheduler",
        "_sink",
        "app_id",
        "close_code",
        "close_reason",
        "heartbeat",
        "opened_at",
        "socket_id",
        "state",
        "subscription_rate",
        "subscriptions",
    )

    def __init__(
        self,
        socket_id: str,
        app_id: str,
        sink: FrameSink,
        scheduler: FlushScheduler,
        heartbeat: Heartbeat,
        queue_limit: int,
        close_ready: Callable[[int, str], None],
    ) -> None:
        self.socket_id = socket_id
        self.app_id = app_id
        self.heartbeat = heartbeat
        self.subscriptions: set[str] = set()
        # limits.subscriptions_per_second, made at the first subscribe or unsubscribe
        self.subscription_rate: RateLimiter | None = None
        self.state = ConnectionState.OPEN
        self.close_code: int | None = None
        self.close_reason = ""
        self.opened_at = time.monotonic()
        self._sink = sink
        self._scheduler = scheduler
        self._queue = SendQueue(queue_limit)
        self._marked = False
        self._draining = False
        self._close_ready = close_ready
        self._abort_timer: asyncio.TimerHandle | None = None

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

    def send(self, frame: Frame) -> None:
        """Queue a complete WebSocket frame (shared, never copied) for this client."""
        if self.state is not ConnectionState.OPEN:
            return
        if not self._queue.push(frame):
            self.close(CloseCode.OVER_CAPACITY)
            return
        if not self._marked and not self._draining:
            self._marked = True
            self._scheduler.mark(self)

    def write_now(self, frame: bytes) -> bool:
        """Write a frame at once if nothing is queued ahead of it; False: send() it instead.

        A connection with queued bytes is always marked for a flush or draining, so neither
        flag set means the queue is empty and writing now keeps the order.
        """
        if self._marked or self._draining or self.state is not ConnectionState.OPEN:
            return False
        sink = self._sink
        if sink.is_paused():
            return False
        try:
            sink.write(frame)
        except (ConnectionError, RuntimeError):
            self.state = ConnectionState.CLOSED
        return True

    def send_json(self, payload: bytes) -> None:
        """Send one Pusher frame (JSON bytes) meant for this client alone: at once when
        nothing is queued (no queue to allocate for a reply), else after what is."""
        frame = text_frame(payload)
        if not self.write_now(frame):
            self.send(frame)

    def flush(self) -> None:
        self._marked = False
        if self._draining or self.state is ConnectionState.CLOSED:
            return
        queue = self._queue
        sink = self._sink
        # The hot path of every delivery: locals, one pause check per write.
        take, write, paused = queue.take, sink.write, sink.is_paused
        try:
            while not paused() and (piece := take(WRITE_BUDGET)) is not None:
                write(piece)
        except (ConnectionError, RuntimeError):
            # The peer is gone; the WebSocket handler sees it and cleans up.
            self.state = ConnectionState.CLOSED
            return
        if queue.queued_bytes:
            self._draining = True
            asyncio.get_running_loop().create_task(self._wait_and_flush())
        elif self.state is ConnectionState.CLOSING:
            self.state = ConnectionState.CLOSED
            code = self.close_code or CloseCode.NORMAL
            self._close_ready(code, self.close_reason)

    async def _wait_and_flush(self) -> None:
        try:
            await self._sink.wait_drained()
        except (ConnectionError, RuntimeError):
            self.state = ConnectionState.CLOSED
            return
        finally:
            self._draining = False
        self.flush()

    def close(self, code: int, reason: str | None = None, *, grace: float = 5.0) -> None:
        """Begin closing: queued frames go first (all but a slow client's), then the close frame.

        A client that does not take its remaining bytes within `grace` seconds is cut off.
        """
        if self.state is not ConnectionState.OPEN:
            return
        self.state = ConnectionState.CLOSING
        self.close_code = code
        self.close_reason = reason if reason is not None else CLOSE_REASONS.get(code, "")
        if code == CloseCode.OVER_CAPACITY:
            self._queue.discard_unstarted()
        self._abort_timer = asyncio.get_running_loop().call_later(grace, self._sink.abort)
        if not self._marked and not self._draining:
            self._marked = True
            self._scheduler.mark(self)

    def closed(self) -> None:
        """The socket is gone: stop writing and cancel the cut-off timer."""
        self.state = ConnectionState.CLOSED
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
