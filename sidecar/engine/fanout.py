"""Bounded work per turn of the event loop, so a big broadcast never holds up a publish.

A broadcast to N subscribers costs N queue appends, then N socket writes. Done in one go, a
publish that arrives meanwhile waits for all of it (at 1,000 TLS subscribers, several
milliseconds). Both steps here run in slices: between two slices the loop polls its sockets,
answers publishers and reads from clients. Order is kept: broadcasts are delivered first in,
first out, and each connection writes its own queue in order.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from sidecar.protocol.frame_writer import Frame

if TYPE_CHECKING:
    from sidecar.engine.connection import Connection

# Work per loop turn handing broadcasts to subscribers, in queue appends (~0.3 µs each: a slice
# holds the loop ~0.3 ms); a direct socket write (~10 µs, mostly the kernel's) counts as
# DIRECT_WRITE_COST of them (32 a slice). A publish of many events (batch_events) reaches a
# connection in one write only if all of them are in its queue before its flush: at 512 a
# slice, the flush between two slices split them (10,000 channels of 10: 3.02 µs of CPU a
# delivery at 512, 2.78 at 2,048; 2.52 at 1,024 against 2.54 at 2,048 in one later run).
# Direct writes stay at 32 a slice: at 128, the p99 at 10 events/s to 5,000 TLS subscribers
# went from 346 to 401 ms.
#
# Slices are where a busy worker gives way (give_way): a publisher and the supervisor that
# acknowledges it, once woken, wait for the end of one. Halving them (2,048 -> 1,024 here,
# 32 -> 16 in FLUSH_SLICE) took the acknowledgement p99 at 1,000 publishes/s to 5,000
# subscribers, 2 workers, from 896 (596-1,248) to 473 (443-574) µs, with the saturated CPU per
# delivery unchanged (bench/RESULTS.md, issue 14, fifth pass).
DELIVER_SLICE = 1024
DIRECT_WRITE_COST = 32
# Frames the fan-out writes directly are under this (FrameSink.direct): a TLS connection's
# record that small, alone in its emptied BIO, cannot reach the high-water mark (64 KiB), so
# its writer needs no check (sidecar/batched_tls.py). Bigger ones are queued.
DIRECT_FRAME_LIMIT = 4 * 1024
# Connections written per loop turn: a TLS write costs ~5-15 µs (encryption and a system call).
# A publish that arrives meanwhile waits for about one delivery and one flush slice.
FLUSH_SLICE = 16
# Inside a slice too, every so many queue appends or flushes, a busy worker gives way. Those
# waiting for the core (the supervisor acknowledging a publish, the app that made it) need it
# sooner than this loop needs a turn: a turn costs a poll and splits a publish's events
# (above), a give-way with no one waiting costs ~0.4 µs. Acknowledgement p99 at 1,000
# publishes/s to 5,000 subscribers, 2 workers, against slices alone in the same runs: 793
# against 948, 735 against 1,236 and 621 against 1,022 µs (lower in 19 of 21 runs); appends
# alone 878 against 1,030, flushes alone 966 against 949 (bench/RESULTS.md, issue 14, tenth
# pass).
APPENDS_A_GIVE_WAY = 256
FLUSHES_A_GIVE_WAY = 4


def give_way() -> None:
    """Between two slices of a long broadcast, and inside one (APPENDS_A_GIVE_WAY,
    FLUSHES_A_GIVE_WAY): let another process that is ready to run have the core first (a
    system call of ~0.4 µs; returns at once when none is).

    A process busy fanning out is not preempted when one that slept wakes: Linux's scheduler
    lets it run out its time slice (~1.4 ms here) first. The supervisor acknowledging a
    publish and the app that made it are such sleepers, each woken once per publish, so at
    1,000 publishes/s to 5,000 subscribers, with the workers busy on both cores, they waited
    up to 2.5 ms a wake-up (perf sched, p99) and the acknowledgement p99 was 4.2 ms; giving
    way here made it 1.5 ms (bench/ack_latency.py).
    """
    os.sched_yield()


class FlushScheduler:
    """Connections with queued frames, written a slice per loop turn.

    Events published before a connection's turn leave together in one write.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._dirty: deque[Connection] = deque()
        self._scheduled = False

    def mark(self, conn: Connection) -> None:
        self._dirty.append(conn)
        if not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self._flush_slice)

    def _flush_slice(self) -> None:
        dirty = self._dirty
        for flushed in range(min(len(dirty), FLUSH_SLICE)):
            if flushed and not flushed % FLUSHES_A_GIVE_WAY:
                give_way()
            dirty.popleft().flush()
        if dirty:
            give_way()
            self._loop.call_soon(self._flush_slice)
        else:
            self._scheduled = False


class _Broadcast:
    __slots__ = ("channel", "excluded", "frame", "position", "subscribers")

    def __init__(
        self, channel: str, frame: Frame, subscribers: list[Connection], excluded: str | None
    ) -> None:
        self.channel = channel
        self.frame = frame
        self.subscribers = subscribers
        self.excluded = excluded
        self.position = 0


class FanoutQueue:
    """Hands each broadcast's frame to its subscribers, a slice per loop turn, in order.

    Two ways to hand a frame over. Queued: appended to the connection's send queue and written
    by the FlushScheduler, so that events close together leave in one write per connection
    (the cheap way under load). Direct: written to the socket at once, when the broadcast is
    the only one pending and the connection has nothing queued (the cheap way when events are
    sparse: no queue, no second pass, nothing to merge with anyway).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._pending: deque[_Broadcast] = deque()
        self.delivered = 0  # events handed to subscribers, one per subscriber per event
        self.delivered_bytes = 0  # their frames' bytes
        # Latency sampling (sidecar/observe): see time_next().
        self.on_timed: Callable[[float], None] | None = None
        self._timed: _Broadcast | None = None
        self._timed_at = 0.0
        # When the publication being fanned out was accepted (Relay.deliver sets it): a timed
        # broadcast measures from there, the publish API's reply, not from reaching this process.
        self.accepted_at = 0.0
        self._emptied: asyncio.Future[None] | None = None
        # Given each run of connections whose sink's `direct` it wrote to (FrameSink): the
        # batch their bytes wait in, if any (sidecar/batched_tls.py's, once a TLS connection
        # has opened on this loop).
        self.written: Callable[[list[Connection]], None] | None = None

    def time_next(self) -> None:
        """Time the next broadcast: `on_timed(seconds)` is called once its last subscriber has
        it. Costs nothing per broadcast meanwhile: the next call to `broadcast` finds this
        instance's timed variant, which puts the class's method back."""
        # The instance's attribute shadows the method until _timed_broadcast deletes it.
        self.broadcast = self._timed_broadcast  # type: ignore[method-assign]

    def stop_timing(self) -> None:
        self.__dict__.pop("broadcast", None)
        self._timed = None

    def _timed_broadcast(
        self,
        channel: str,
        frame: Frame,
        subscribers: dict[Connection, None],
        excluded: str | None,
    ) -> None:
        del self.broadcast
        started = self.accepted_at or time.monotonic()
        self.broadcast(channel, frame, subscribers, excluded)
        self._timed, self._timed_at = self._pending[-1], started

    def broadcast(
        self,
        channel: str,
        frame: Frame,
        subscribers: dict[Connection, None],
        excluded: str | None,
    ) -> None:
        # A snapshot: whoever subscribes later does not get an event published before.
        self._pending.append(_Broadcast(channel, frame, list(subscribers), excluded))
        if len(self._pending) == 1:
            self._loop.call_soon(self._deliver_slice)

    def _deliver_slice(self) -> None:
        budget = DELIVER_SLICE
        pending = self._pending
        delivered = 0
        delivered_bytes = 0
        while pending and budget > 0:
            job = pending[0]
            channel, frame = job.channel, job.frame
            # No socket id is empty, and str == str is the interpreter's fast path (~0.1 µs less
            # a subscriber than comparing a str with None, the usual case).
            excluded = job.excluded or ""
            subscribers = job.subscribers
            position, end = job.position, len(subscribers)
            before = delivered
            # Write directly only while nothing else waits: otherwise queue, so this event
            # and the next ones reach each connection in one write.
            if len(pending) == 1 and type(frame) is bytes and len(frame) < DIRECT_FRAME_LIMIT:
                # In runs, each as many as the budget left could write at once, by a for loop
                # over a copy of the run: ~450 instructions less a delivery than the while
                # loop below (bench/delivery_floor.py). The budget is charged as there: a
                # direct write DIRECT_WRITE_COST, a queued frame 1, one who left nothing.
                written = self.written
                while position < end and budget > 0:
                    stop = min(end, position + max(1, budget // DIRECT_WRITE_COST))
                    passed = queued = 0  # counted where they are rare, not per delivery
                    run = subscribers[position:stop]
                    for conn in run:
                        # Left the channel while this broadcast waited its turn: not for them.
                        if channel not in conn.subscriptions or conn.socket_id == excluded:
                            passed += 1
                            continue
                        # Connection.write_now(), inline (with the sink's `direct`): this
                        # runs once per delivery.
                        write = conn.direct_write
                        if write is None:
                            conn.send(frame)
                            queued += 1
                            continue
                        try:
                            write(frame)
                        except (OSError, RuntimeError):  # gone, or its TLS session failed
                            conn.write_failed()
                    # What a sink's `direct` left in its write batch leaves at its flush.
                    if written is not None:
                        written(run)
                    handed = stop - position - passed
                    delivered += handed
                    budget -= (handed - queued) * DIRECT_WRITE_COST + queued
                    position = stop
            else:
                while position < end and budget > 0:
                    conn = subscribers[position]
                    position += 1
                    # As above: left the channel meanwhile.
                    if channel not in conn.subscriptions or conn.socket_id == excluded:
                        continue
                    delivered += 1
                    conn.send(frame)
                    budget -= 1
                    # (Not at 0: the slice ends there, and gives way if more is pending.)
                    if not budget % APPENDS_A_GIVE_WAY and budget:
                        give_way()
            job.position = position
            if delivered != before:
                size = len(frame) if isinstance(frame, bytes) else sum(map(len, frame))
                delivered_bytes += (delivered - before) * size
            if position == end:
                pending.popleft()
                if job is self._timed:
                    self._timed = None
                    if self.on_timed is not None:
                        self.on_timed(time.monotonic() - self._timed_at)
        self.delivered += delivered
        self.delivered_bytes += delivered_bytes
        if pending:
            give_way()
            self._loop.call_soon(self._deliver_slice)
        elif self._emptied is not None:
            if not self._emptied.done():
                self._emptied.set_result(None)
            self._emptied = None

    async def wait_empty(self) -> None:
        """Until every broadcast handed in so far is in its subscribers' queues (shutdown:
        a connection closed before its turn in a slice would never get the event)."""
        if not self._pending:
            return
        if self._emptied is None:
            self._emptied = self._loop.create_future()
        await asyncio.shield(self._emptied)

    def __len__(self) -> int:
        return len(self._pending)
