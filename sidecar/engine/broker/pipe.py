"""The broker between worker processes on one machine: a hub and one pipe per worker.

The contract is Broker's (sidecar/engine/broker/base.py); here is how the pipes keep it. The
supervisor accepts publications (the Unix socket API) and writes each to every worker's pipe; a
worker hands publications it accepted itself (the signed API on the TLS port, client events) to
the hub, which sends them to every worker, itself included. A worker's batch of changes goes to
the hub, which stamps it with the worker's origin, applies it to the supervisor's own state and
sends it to every worker. The hub's write order is the one order. A worker whose pipe closes is
the one that is gone (`OriginGone`); one that attaches gets the supervisor's state (`Reset`).

On the pipe a frame is `!BII` (kind, meta length, data length), the meta, then the data:
- a publication: meta `[app_id, channels, name, socket_id, user_id]` as JSON, data the data
  literal as it will sit in every frame (a worker never decodes event data, it only splices it);
- changes: meta `[origin, [change, ...]]` (sidecar/engine/broker/changes.py), no data;
- a report (worker to hub only): meta `[app_id, event]`, no data;
- with a Redis hub (sidecar/engine/broker/redis.py), CONFIRM/ACK for a publication whose
  publisher waits, READY for a channel the node now hears, CACHED for a cache channel's last
  event (sidecar/engine/broker/frames.py says what each carries).

Nothing else: reloads, the debug console and a worker's word that it has finished go on a
control line of their own (sidecar/server/control.py), outside the broker's order.

Stopping goes: the supervisor shuts the publish socket, each worker shuts its TLS port and
says on its control line how many publications it wrote to its pipe (`finished`); the hub
takes a worker as finished once it has read that many from its pipe (`HubBroker.finished`),
waits for every worker (bounded), writes what it holds and closes the pipes; each worker
delivers what it read, then closes its clients with 4200.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from sidecar.engine.broker.base import (
    HUB_ORIGIN,
    BrokerUnavailable,
    Deliver,
    OnReady,
    Publication,
    Report,
)
from sidecar.engine.broker.changes import (
    Change,
    CountDelta,
    OnChanges,
    OriginGone,
    Reset,
    decode_changes,
    restamp,
)
from sidecar.engine.broker.frames import (
    ACK,
    CACHED,
    CHANGES,
    CONFIRM,
    PUBLICATION,
    READY,
    REPORT,
    PublicationStream,
    ack_frame,
    decode_publication,
    encode_changes_frame,
    encode_publication,
    encode_report,
    meta_frame,
    meta_of,
)
from sidecar.engine.broker.local_channels import SubscribeCounts

__all__ = [
    "HubBroker",
    "PublicationStream",
    "WorkerBroker",
    "decode_publication",
    "encode_publication",
]

# Workers get origins 1, 2, ... in the order they attach, a restarted worker a new one.
# A worker that finishes while the supervisor is not stopping was signalled alone, or the
# whole process group was (systemd's default) and the supervisor's own signal is a moment
# behind: its pipe is closed only after this long, so that a publication the supervisor
# accepts in that moment still reaches the worker's clients.
ALONE_GRACE = 0.5
# The bytes the hub may hold for one worker that does not read its pipe (stalled, stopped in a
# debugger, swapping). A worker reading at its normal pace keeps this near zero (the kernel's
# pipe buffer takes the rest); past it the hub closes that worker's pipe, which releases its
# share (OriginGone) and stops it (a worker ends when its pipe closes; the supervisor starts it
# again), rather than let one worker grow the supervisor without bound. 64 MiB: seconds of a
# heavy publish rate, far beyond any pause a live worker takes.
MAX_WORKER_BACKLOG = 64 * 1024 * 1024
# A worker's publisher waits this long for the hub's ACK at most (the hub answers within its
# own Redis deadline, ~1 s; this is for a hub that does not answer at all).
ACK_TIMEOUT = 3.0

log = logging.getLogger("sidecar.broker")


class WorkerBroker:
    """A worker's end: publishes and changes go to the hub, the hub's come back here."""

    def __init__(self, sock: socket.socket, *, confirms: bool = False) -> None:
        self._sock = sock
        self._stream: PublicationStream | None = None
        self._closed = asyncio.Event()
        # `confirms`: the hub is a Redis hub: it answers CONFIRM frames with ACK and says READY
        # for channels this worker starts subscribing to (frames.py: READY).
        self._confirms = confirms
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._next_seq = 1
        self._local = SubscribeCounts()  # as the hub counts this worker's (local_channels.py)
        self._waiting: dict[tuple[str, str], int] = {}  # channel -> serial awaiting READY
        self.on_ready: OnReady | None = None
        self.on_cached: Deliver | None = None
        # Publications written to the pipe: the count a worker's `finished` carries
        # (sidecar/server/control.py), so that the hub knows when it has read them all.
        self.published = 0

    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        loop = asyncio.get_running_loop()

        def on_frame(kind: int, head: bytes, data: bytes) -> None:
            if kind == PUBLICATION:
                deliver(decode_publication(head, data))
            elif kind == CHANGES and changed is not None:
                origin, changes = decode_changes(meta_of(head))
                changed(origin, changes)
            elif kind == ACK:
                seq, error = orjson.loads(meta_of(head))
                self._acked(seq, error)
            elif kind == READY:
                for app_id, channel, serial in orjson.loads(meta_of(head)):
                    self._ready(app_id, channel, serial)
            elif kind == CACHED and self.on_cached is not None:
                self.on_cached(decode_publication(head, data))

        _, self._stream = await loop.create_unix_connection(
            lambda: PublicationStream(on_frame, self._lost), sock=self._sock
        )

    def _lost(self) -> None:
        self._closed.set()
        for seq in list(self._acks):
            self._acked(seq, "the hub is gone")

    def publish(self, publication: Publication) -> None:
        assert self._stream is not None
        if self._stream.write(*encode_publication(publication)):
            self.published += 1

    async def publish_confirmed(self, publication: Publication) -> None:
        if not self._confirms:
            self.publish(publication)
            return
        assert self._stream is not None
        seq = self._next_seq
        self._next_seq += 1
        future = asyncio.get_running_loop().create_future()
        self._acks[seq] = future
        if not self._stream.write(
            *encode_publication(publication), meta_frame(CONFIRM, orjson.dumps([seq]))
        ):
            del self._acks[seq]
            raise BrokerUnavailable("the hub is gone")
        self.published += 1
        try:
            await asyncio.wait_for(future, ACK_TIMEOUT)
        except TimeoutError:
            raise BrokerUnavailable("the hub did not answer in time") from None
        finally:
            self._acks.pop(seq, None)

    def _acked(self, seq: int, error: str | None) -> None:
        future = self._acks.pop(seq, None)
        if future is None or future.done():
            return
        if error is None:
            future.set_result(None)
        else:
            future.set_exception(BrokerUnavailable(error))

    def announce(self, changes: Sequence[Change]) -> None:
        assert self._stream is not None
        if self._confirms:
            self._count(changes)
        # The origin is the hub's to say; 0 is a placeholder.
        self._stream.write(encode_changes_frame(HUB_ORIGIN, changes))

    def ready(self, app_id: str, channel: str) -> bool:
        if not self._confirms:
            return True
        key = (app_id, channel)
        return key in self._local.counts and key not in self._waiting

    def _count(self, changes: Sequence[Change]) -> None:
        """This worker's counts as the hub will count them (local_channels.py)."""
        for change in changes:
            if not isinstance(change, CountDelta):
                continue
            key = (change.app_id, change.channel)
            _, serial = self._local.add(key, change.delta)
            if serial is not None:
                self._waiting[key] = serial
            elif key not in self._local.counts:
                self._waiting.pop(key, None)

    def _ready(self, app_id: str, channel: str, serial: int) -> None:
        key = (app_id, channel)
        if self._waiting.get(key) == serial:
            del self._waiting[key]
            if self.on_ready is not None:
                self.on_ready(app_id, channel)

    def report(self, app_id: str, event: dict[str, Any]) -> None:
        assert self._stream is not None
        self._stream.write(encode_report(app_id, event))

    async def close(self) -> None:
        """Wait until the hub has closed the pipe: everything it accepted was delivered."""
        await self._closed.wait()


@dataclass(eq=False)
class _Attached:
    """A worker's pipe at the hub, and how far the worker's `finished` has been read."""

    stream: PublicationStream
    read: int = 0  # publications read from this pipe
    finish_at: int | None = None  # the count its `finished` carried, once it came
    finished: bool = False  # every publication it wrote before `finished` is read


class HubBroker:
    """The supervisor's end: every publication and change, from wherever, goes to every worker.

    Frames are written to the pipes on the next loop turn, after the publisher's reply: a
    write to a pipe wakes the worker reading it, and a woken worker can take the CPU from the
    supervisor for a whole time slice (milliseconds) before the reply goes out. Several frames
    accepted in one turn also leave in one write per pipe. A worker more than `max_backlog`
    bytes behind has its pipe closed (MAX_WORKER_BACKLOG says why). `snapshot` is the state a
    worker that attaches starts from (the supervisor's ChannelState).
    """

    def __init__(
        self,
        max_backlog: int = MAX_WORKER_BACKLOG,
        snapshot: Callable[[], Any] | None = None,
    ) -> None:
        self._workers: dict[int, _Attached] = {}
        self._max_backlog = max_backlog
        self._pending: list[bytes] = []
        self._next_origin = HUB_ORIGIN + 1
        self._changed: OnChanges | None = None
        self._reported: Report | None = None
        self._closing = False
        self._settled: asyncio.Event | None = None  # closing: every worker has finished
        self.snapshot = snapshot
        self._by_origin: dict[int, PublicationStream] = {}  # the workers' pipes, by origin
        self.on_ready: OnReady | None = None  # the hub holds no subscribers
        self.on_cached: Deliver | None = None

    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        """The hub holds no subscribers (delivery happens in the workers); `changed` sees
        every change at the moment it takes its place in the order."""
        self._changed = changed
        self._reported = reported

    async def attach(self, worker_id: int, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        origin = self._next_origin
        self._next_origin += 1
        holder: list[_Attached] = []

        def on_frame(kind: int, head: bytes, data: bytes) -> None:
            if kind == PUBLICATION:
                self._worker_published(origin, head, data)
                if holder:
                    this = holder[0]
                    this.read += 1
                    if this.finish_at is not None:  # it said finished: count towards it
                        self._check_finished(worker_id, this)
            elif kind == CHANGES:
                self._worker_changed(origin, meta_of(head))
            elif kind == REPORT and self._reported is not None:
                app_id, event = orjson.loads(meta_of(head))
                self._reported(app_id, event)
            elif kind == CONFIRM and holder:
                (seq,) = orjson.loads(meta_of(head))
                self._worker_confirm(origin, holder[0].stream, seq)

        def lost() -> None:
            if holder and self._workers.get(worker_id) is holder[0]:
                del self._workers[worker_id]
            self._by_origin.pop(origin, None)
            self._check_settled()
            # At shutdown nothing is released: the state ends with the process, and a restart
            # should not look like every channel vacated to the app's webhooks.
            if not self._closing:
                self._worker_gone(origin)

        _, stream = await loop.create_unix_connection(
            lambda: PublicationStream(on_frame, lost), sock=sock
        )
        attached = _Attached(stream)
        holder.append(attached)
        # What is already in the order goes to the others; the newcomer starts from the state
        # that order made, then receives everything after it.
        if self._pending:
            self._write_pending()
        self._workers[worker_id] = attached
        self._by_origin[origin] = stream
        if self.snapshot is not None:
            stream.write(encode_changes_frame(HUB_ORIGIN, [Reset(self.snapshot())]))

    # What a worker hands over; a Redis hub (redis.py) sends it to Redis instead.

    def _worker_published(self, origin: int, head: bytes, data: bytes) -> None:
        self._queue((head, data))

    def _worker_changed(self, origin: int, meta: bytes) -> None:
        frame, changes = restamp(meta, origin)
        self._order(origin, changes, meta_frame(CHANGES, frame))

    def _worker_confirm(self, origin: int, stream: PublicationStream, seq: int) -> None:
        stream.write(ack_frame(seq, None))  # what it published before is queued: in the order

    def _worker_gone(self, origin: int) -> None:
        self.announce([OriginGone(origin)])

    @property
    def up(self) -> bool:
        """Whether the broker can take publications now (with Redis: the link is up)."""
        return True

    def finished(self, worker_id: int, publications: int) -> None:
        """A worker's word (on its control line, sidecar/server/control.py) that it has
        written `publications` to its pipe and nothing after them it answered 200 for: it
        counts as finished once the hub has read that many."""
        attached = self._workers.get(worker_id)
        if attached is not None and attached.finish_at is None:
            attached.finish_at = publications
            self._check_finished(worker_id, attached)

    def detach(self, worker_id: int) -> None:
        attached = self._workers.get(worker_id)
        if attached is not None and attached.stream.transport is not None:
            attached.stream.transport.close()  # its loss releases what the worker held

    def publish(self, publication: Publication) -> None:
        self._queue(encode_publication(publication))

    async def publish_confirmed(self, publication: Publication) -> None:
        self.publish(publication)

    def ready(self, app_id: str, channel: str) -> bool:
        return True

    def announce(self, changes: Sequence[Change]) -> None:
        changes = list(changes)
        self._order(HUB_ORIGIN, changes, encode_changes_frame(HUB_ORIGIN, changes))

    def report(self, app_id: str, event: dict[str, Any]) -> None:
        if self._reported is not None:
            self._reported(app_id, event)

    def _order(self, origin: int, changes: list[Change], frame: bytes) -> None:
        if self._changed is not None:
            self._changed(origin, changes)
        self._queue((frame,))

    def _queue(self, frame: tuple[bytes, ...]) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_soon(self._write_pending)
        self._pending.extend(frame)

    def _write_pending(self) -> None:
        pending, self._pending = self._pending, []
        if not pending:
            return
        for worker_id, attached in list(self._workers.items()):
            stream = attached.stream
            stream.write(*pending)
            if stream.backlog() > self._max_backlog:
                self._overrun(worker_id, stream)

    def _overrun(self, worker_id: int, stream: PublicationStream) -> None:
        """A worker too far behind: its pipe goes now, what it had not read with it."""
        log.error(
            "worker is not reading its pipe; closing it",
            extra={"worker": worker_id, "backlog_bytes": stream.backlog()},
        )
        if stream.transport is not None:
            stream.transport.abort()  # frees the backlog; its loss releases the worker's share

    @property
    def workers(self) -> int:
        return len(self._workers)

    def _check_finished(self, worker_id: int, attached: _Attached) -> None:
        if attached.finished or attached.finish_at is None or attached.read < attached.finish_at:
            return
        attached.finished = True
        if self._closing:
            self._check_settled()
            return

        def release() -> None:
            if not self._closing and self._workers.get(worker_id) is attached:
                self._write_pending()
                self.detach(worker_id)

        asyncio.get_running_loop().call_later(ALONE_GRACE, release)

    def _check_settled(self) -> None:
        if self._settled is not None and all(a.finished for a in self._workers.values()):
            self._settled.set()

    async def close(self, wait: float = 0.0) -> None:
        """Close each pipe once what was written to it is flushed: the workers' signal to stop.

        With `wait`, first up to that many seconds for every worker to finish, so that what
        they accepted themselves (the signed API) is in the order before the pipes close.
        """
        self._closing = True
        if wait > 0:
            self._settled = asyncio.Event()
            self._check_settled()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._settled.wait(), wait)
        if self._pending:
            self._write_pending()
        workers = list(self._workers.values())
        self._workers.clear()
        for attached in workers:
            if attached.stream.transport is not None:
                attached.stream.transport.close()  # flushes its buffer first
