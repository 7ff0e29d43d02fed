"""One browser connection: its send queue, its subscriptions, and how it ends.

Writing is synchronous and never awaits on the broadcast path: `send()` queues a frame and marks
the connection for the next flush; the flush writes what the transport will take and, only when
the transport pushes back, starts one task that waits for it to drain. A client whose queue
overflows is closed with 4100 and never holds up anyone else.

What the relay holds for a client is bounded by what the client is owed, not by what it sends:
replies it can do without (errors, pongs) wait behind a backlog it has not read only up to
`REPLY_BACKLOG_BYTES`, and a client that keeps sending frames the relay refuses is closed
(sidecar/engine/bad_frames.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from enum import Enum
from typing import Protocol

from sidecar.engine.bad_frames import BadFrameBudget
from sidecar.engine.fanout import FlushScheduler
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.send_queue import SendQueue
from sidecar.engine.session import RateLimiter
from sidecar.protocol.frame_writer import Frame, text_frame
from sidecar.protocol.pusher import CLOSE_REASONS, CloseCode

# Bytes handed to the transport in one write. Small frames are merged up to this size (one system
# call for many events); a large event goes out in slices of it, so that the transport copies at
# most this much per connection, never the whole event.
WRITE_BUDGET = 64 * 1024
# Replies (pusher:error, pongs) queued behind bytes the client has not read, at most; later ones
# are dropped until it reads. A client sending a flood and never reading held one ~100-byte
# error per frame, up to the whole send queue (16 MiB); now the transport's buffer and this.
REPLY_BACKLOG_BYTES = 4 * 1024


class FrameSink(Protocol):
    """Where a connection's bytes go: the transport of its WebSocket.

    A sink that pauses tells its connection: `sink_paused()` once `paused` is set, and
    `sink_resumed()` once it is cleared.
    """

    # True while the transport holds more than it should take: write no more until it drains.
    paused: bool

    def write(self, data: bytes | memoryview) -> None: ...

    # The fan-out's write of one frame under DIRECT_FRAME_LIMIT bytes, made only while `paused`
    # is not set and nothing is queued: no check of its own. Its bytes may wait in `batched`
    # (a TLS connection's record, sidecar/batched_tls.py) until the sink's write batch sends
    # them; FanoutQueue hands every connection it wrote to so to that batch (`written`).
    direct: Callable[[bytes], object]

    @property
    def batched(self) -> object | None: ...

    async def wait_drained(self) -> None: ...

    def abort(self) -> None: ...


class ConnectionState(Enum):
    OPEN = "open"
    CLOSING = "closing"  # no new frames; what is queued is still written, then the close frame
    CLOSED = "closed"


# For the checks made once per delivery or flush: reading a member off an Enum class costs
# 50-140 ns on Python 3.11 (the metaclass's __getattr__ turns it into a slow lookup), a module
# global ~10.
_OPEN = ConnectionState.OPEN
_CLOSING = ConnectionState.CLOSING
_CLOSED = ConnectionState.CLOSED


class Connection:
    __slots__ = (
        "_abort_timer",
        "_bad_frames",
        "_close_ready",
        "_draining",
        "_marked",
        "_queue",
        "_replies_queued",
        "_scheduler",
        "_sink",
        "app_id",
        "batched",
        "close_code",
        "close_reason",
        "direct_write",
        "heartbeat",
        "opened_at",
        "socket_id",
        "state",
        "subscription_rate",
        "subscriptions",
        "trusted",
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
        # The sink's `direct` while a frame may be written at once, keeping the order (nothing
        # queued, marked or draining; open; the sink not paused), else None. FanoutQueue calls
        # it per delivery: one attribute read where write_now() was a call and four checks
        # (~900 instructions a delivery, bench/delivery_floor.py). Every change of those
        # conditions below sets it again.
        self.direct_write: Callable[[bytes], object] | None = None
        self.batched = sink.batched  # what FanoutQueue hands to the sink's batch, with `direct`
        self._allow_direct()
        self._close_ready = close_ready
        self._abort_timer: asyncio.TimerHandle | None = None
        self._replies_queued = 0  # reply bytes queued since the queue was last empty
        self._bad_frames: BadFrameBudget | None = None  # made at the first refusal
        # Holds a subscription the app signed (private, presence, a signed-in user's channel):
        # only then may it send messages up to limits.max_client_message_bytes.
        self.trusted = False

    @property
    def queued_bytes(self) -> int:
        return self._queue.queued_bytes

    def send(self, frame: Frame) -> None:
        """Queue a complete WebSocket frame (shared, never copied) for this client."""
        if self.state is not _OPEN:
            return
        if not self._queue.push(frame):
            self.close(CloseCode.OVER_CAPACITY)
            return
        if not self._marked and not self._draining:
            self._marked = True
            self.direct_write = None
            self._scheduler.mark(self)

    def write_now(self, frame: bytes) -> bool:
        """Write a frame at once if nothing is queued ahead of it; False: send() it instead."""
        if self.direct_write is None:
            return False
        try:
            # The sink's own write: `direct_write` is the fan-out's (small frames only, whose
            # bytes the fan-out hands to the sink's write batch itself).
            self._sink.write(frame)
        except (ConnectionError, RuntimeError):
            self.write_failed()
        return True

    def write_failed(self) -> None:
        """A write raised: the peer is gone (the WebSocket handler sees it and cleans up)."""
        self.state = ConnectionState.CLOSED
        self.direct_write = None

    def sink_paused(self) -> None:
        self.direct_write = None

    def sink_resumed(self) -> None:
        self._allow_direct()

    def _allow_direct(self) -> None:
        """Writing at once keeps the order when nothing is queued: a connection with queued
        bytes is always marked for a flush or draining."""
        if not (self._marked or self._draining or self.state is not _OPEN or self._sink.paused):
            self.direct_write = self._sink.direct

    def send_json(self, payload: bytes) -> None:
        """Send one Pusher frame (JSON bytes) meant for this client alone: at once when
        nothing is queued (no queue to allocate for a reply), else after what is."""
        frame = text_frame(payload)
        if not self.write_now(frame):
            self.send(frame)

    def reply(self, frame: bytes) -> None:
        """A frame answering the client's own (a pong, an error) that it can do without.

        Written at once when nothing is queued. Behind a backlog the client has not read, at
        most REPLY_BACKLOG_BYTES of replies wait; later ones are dropped (a client that reads
        again gets replies again, so the one that is merely slow loses a few pongs at worst).
        """
        if self.write_now(frame) or self.state is not ConnectionState.OPEN:
            return
        if self._replies_queued + len(frame) > REPLY_BACKLOG_BYTES:
            return
        self._replies_queued += len(frame)
        self.send(frame)

    def refuse_frame(self, error: bytes, *, bad_frame: bool = True) -> None:
        """Answer a frame the relay refused with `error` (a pusher:error or subscription_error).

        `bad_frame`: the frame was wrong, not just over a rate; past the budget of those the
        connection is closed with 4101 instead of answered.
        """
        if bad_frame:
            now = time.monotonic()
            budget = self._bad_frames
            if budget is None:
                budget = self._bad_frames = BadFrameBudget(now)
            if not budget.spend(now):
                self.close(CloseCode.TOO_MANY_BAD_FRAMES)
                return
        self.reply(text_frame(error))

    def flush(self) -> None:
        self._marked = False
        if self._draining or self.state is _CLOSED:
            return
        queue = self._queue
        sink = self._sink
        # The hot path of every delivery: locals, one pause check per write.
        take, write = queue.take, sink.write
        try:
            while not sink.paused and (piece := take(WRITE_BUDGET)) is not None:
                write(piece)
        except (ConnectionError, RuntimeError):
            self.write_failed()
            return
        if queue.queued_bytes:
            self._draining = True
            asyncio.get_running_loop().create_task(self._wait_and_flush())
            return
        self._replies_queued = 0  # all handed to the transport: replies may queue again
        if self.state is _CLOSING:
            self.state = ConnectionState.CLOSED
            code = self.close_code or CloseCode.NORMAL
            self._close_ready(code, self.close_reason)
        else:
            self._allow_direct()

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
        self.direct_write = None
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
        self.direct_write = None
        if self._abort_timer is not None:
            self._abort_timer.cancel()
            self._abort_timer = None
