"""sidecar.engine.fanout: broadcasts and flushes in bounded slices per loop turn, in order."""

from __future__ import annotations

import asyncio
import ssl
import time
from collections.abc import Callable

import pytest

from sidecar.engine import fanout
from sidecar.engine.fanout import (
    DELIVER_SLICE,
    DIRECT_FRAME_LIMIT,
    DIRECT_WRITE_COST,
    FLUSH_SLICE,
    FanoutQueue,
    FlushScheduler,
)


class FakeConn:
    """What FanoutQueue needs of a Connection: socket_id, subscriptions, direct_write, send(),
    write_failed()."""

    def __init__(self, socket_id: str, *channels: str, log: list | None = None) -> None:
        self.socket_id = socket_id
        self.subscriptions = set(channels)
        self.idle = True  # direct writes allowed: nothing queued on this connection
        self.write_error: Exception | None = None  # what a direct write raises
        self.failed = 0  # write_failed() calls
        self.received: list[bytes] = []
        self.ways: list[str] = []  # "direct" or "queued", per frame received
        self._log = log  # a shared (socket_id, frame) log, to see the order across connections

    @property
    def direct_write(self) -> Callable[[bytes], None] | None:
        return self._write_direct if self.idle else None

    def _write_direct(self, frame: bytes) -> None:
        if self.write_error is not None:
            raise self.write_error
        self._receive(frame, "direct")

    def write_failed(self) -> None:
        self.failed += 1

    def send(self, frame: bytes) -> None:
        self._receive(frame, "queued")

    def _receive(self, frame: bytes, way: str) -> None:
        self.received.append(frame)
        self.ways.append(way)
        if self._log is not None:
            self._log.append((self.socket_id, frame))


class FlushRecorder:
    """What FlushScheduler needs of a Connection: flush()."""

    def __init__(self, flushed: list[FlushRecorder]) -> None:
        self._flushed = flushed

    def flush(self) -> None:
        self._flushed.append(self)


def subscribers(conns: list[FakeConn]) -> dict[FakeConn, None]:
    return dict.fromkeys(conns)


def channel_of(n: int, channel: str = "news", prefix: str = "1") -> list[FakeConn]:
    return [FakeConn(f"{prefix}.{i}", channel) for i in range(n)]


@pytest.fixture
def small_slices(monkeypatch: pytest.MonkeyPatch) -> int:
    """A delivery slice of 4 subscribers, so slicing is visible with a handful of fakes."""
    monkeypatch.setattr(fanout, "DELIVER_SLICE", 4)
    return 4


async def turn() -> None:
    """Let the loop run one turn: callbacks scheduled before this call run once."""
    await asyncio.sleep(0)


# FlushScheduler -----------------------------------------------------------------------------


async def test_flush_scheduler_waits_for_the_next_loop_turn() -> None:
    flushed: list[FlushRecorder] = []
    scheduler = FlushScheduler(asyncio.get_running_loop())
    conn = FlushRecorder(flushed)
    scheduler.mark(conn)
    assert flushed == []  # never flushed inside mark()
    await turn()
    assert flushed == [conn]


async def test_flush_scheduler_flushes_at_most_a_slice_per_turn_and_all_eventually() -> None:
    flushed: list[FlushRecorder] = []
    scheduler = FlushScheduler(asyncio.get_running_loop())
    total = FLUSH_SLICE * 3 + 5
    conns = [FlushRecorder(flushed) for _ in range(total)]
    for conn in conns:
        scheduler.mark(conn)
    counts = []
    for _ in range(4):
        await turn()
        counts.append(len(flushed))
    assert counts == [FLUSH_SLICE, 2 * FLUSH_SLICE, 3 * FLUSH_SLICE, total]
    assert flushed == conns  # first marked, first flushed
    await turn()
    assert len(flushed) == total  # nothing flushed twice


async def test_flush_scheduler_schedules_again_after_going_idle() -> None:
    flushed: list[FlushRecorder] = []
    scheduler = FlushScheduler(asyncio.get_running_loop())
    first, second = FlushRecorder(flushed), FlushRecorder(flushed)
    scheduler.mark(first)
    await turn()
    await turn()
    scheduler.mark(second)
    await turn()
    assert flushed == [first, second]


async def test_marks_made_during_a_slice_run_on_a_later_turn() -> None:
    flushed: list[object] = []
    scheduler = FlushScheduler(asyncio.get_running_loop())
    late = FlushRecorder(flushed)

    class MarksAnother:
        def flush(self) -> None:
            flushed.append(self)
            scheduler.mark(late)

    early = MarksAnother()
    scheduler.mark(early)
    await turn()
    assert flushed == [early]
    await turn()
    assert flushed == [early, late]


# FanoutQueue ---------------------------------------------------------------------------------


def new_queue() -> FanoutQueue:
    return FanoutQueue(asyncio.get_running_loop())


async def test_a_broadcast_is_delivered_on_the_next_turn_never_inside_the_call() -> None:
    queue = new_queue()
    conns = channel_of(3)
    queue.broadcast("news", b"f", subscribers(conns), None)
    assert all(c.received == [] for c in conns)
    await turn()
    assert all(c.received == [b"f"] for c in conns)
    assert queue.delivered == 3
    assert len(queue) == 0


async def test_a_lone_broadcast_writes_directly_to_idle_connections() -> None:
    queue = new_queue()
    conns = channel_of(3)
    conns[1].idle = False  # has frames queued: this one must queue behind them
    queue.broadcast("news", b"f", subscribers(conns), None)
    await turn()
    assert [c.ways for c in conns] == [["direct"], ["queued"], ["direct"]]


async def test_broadcasts_waiting_behind_each_other_are_queued_to_merge() -> None:
    queue = new_queue()
    conns = channel_of(2)
    queue.broadcast("news", b"1", subscribers(conns), None)
    queue.broadcast("news", b"2", subscribers(conns), None)
    await turn()
    # The first had company waiting: queued, so both leave in one write per connection.
    assert all(c.ways[0] == "queued" for c in conns)
    assert all(c.received == [b"1", b"2"] for c in conns)


async def test_a_frame_in_pieces_is_always_queued() -> None:
    queue = new_queue()
    conns = channel_of(2)
    queue.broadcast("news", (b"H", b"data", b"}"), subscribers(conns), None)
    await turn()
    assert all(c.ways == ["queued"] for c in conns)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionResetError("gone"),
        ssl.SSLError("bad record mac"),  # a TLS session's: an OSError, not a ConnectionError
    ],
)
async def test_a_direct_write_that_raises_marks_that_connection_and_the_rest_get_it(
    error: Exception,
) -> None:
    queue = new_queue()
    conns = channel_of(3)
    conns[1].write_error = error
    queue.broadcast("news", b"f", subscribers(conns), None)
    await turn()
    assert [len(c.received) for c in conns] == [1, 0, 1]
    assert [c.failed for c in conns] == [0, 1, 0]


async def test_every_run_written_directly_is_handed_to_the_sinks_batch_in_the_same_turn() -> None:
    queue = new_queue()
    runs: list[list[FakeConn]] = []
    queue.written = runs.append  # type: ignore[assignment]
    per_turn = DELIVER_SLICE // DIRECT_WRITE_COST
    conns = channel_of(per_turn + 3)
    conns[2].idle = False  # queued, in its run all the same: its sink's batch skips it
    queue.broadcast("news", b"f", subscribers(conns), None)
    await turn()
    handed = [c for run in runs for c in run]
    assert handed == [c for c in conns if c.received]  # in this turn, no more, no less
    assert len(handed) < len(conns)
    await turn()
    assert [c for run in runs for c in run] == conns


async def test_a_frame_too_big_to_write_unchecked_is_queued_and_no_run_handed_over() -> None:
    queue = new_queue()
    runs: list[list[FakeConn]] = []
    queue.written = runs.append  # type: ignore[assignment]
    conns = channel_of(2)
    queue.broadcast("news", b"x" * (DIRECT_FRAME_LIMIT - 1), subscribers(conns), None)
    await turn()
    queue.broadcast("news", b"x" * DIRECT_FRAME_LIMIT, subscribers(conns), None)
    await turn()
    assert all(c.ways == ["direct", "queued"] for c in conns)
    assert len(runs) == 1


async def test_excluded_socket_is_skipped_and_not_counted() -> None:
    queue = new_queue()
    conns = channel_of(3)
    queue.broadcast("news", b"f", subscribers(conns), conns[1].socket_id)
    await turn()
    assert [len(c.received) for c in conns] == [1, 0, 1]
    assert queue.delivered == 2


async def test_an_unknown_excluded_socket_leaves_everyone_in() -> None:
    queue = new_queue()
    conns = channel_of(3)
    queue.broadcast("news", b"f", subscribers(conns), "999.999")
    await turn()
    assert queue.delivered == 3


async def test_direct_writes_are_sliced_by_their_cost() -> None:
    queue = new_queue()
    per_turn = DELIVER_SLICE // DIRECT_WRITE_COST
    conns = channel_of(per_turn * 2 + 3)
    queue.broadcast("news", b"f", subscribers(conns), None)
    counts = []
    for _ in range(3):
        await turn()
        counts.append(sum(len(c.received) for c in conns))
    assert counts == [per_turn, per_turn * 2, per_turn * 2 + 3]


async def test_subscribers_who_left_cost_a_slice_nothing() -> None:
    queue = new_queue()
    per_turn = DELIVER_SLICE // DIRECT_WRITE_COST
    conns = channel_of(per_turn * 4)
    for c in conns[1::2]:
        c.subscriptions.discard("news")  # every other one left while the broadcast waited
    queue.broadcast("news", b"f", subscribers(conns), None)
    await turn()
    assert sum(len(c.received) for c in conns) == per_turn  # a full slice of writes
    await turn()
    assert sum(len(c.received) for c in conns) == per_turn * 2


async def test_a_slice_charges_each_subscriber_the_way_it_was_handed_the_frame() -> None:
    queue = new_queue()
    idle = DELIVER_SLICE // DIRECT_WRITE_COST // 2
    conns = channel_of(idle + DELIVER_SLICE)
    for c in conns[idle:]:
        c.idle = False  # something queued: sent behind it, at the cost of a queue append
    queue.broadcast("news", b"f", subscribers(conns), None)
    await turn()
    ways = [way for c in conns for way in c.ways]
    assert ways.count("direct") == idle
    assert ways.count("queued") == DELIVER_SLICE - idle * DIRECT_WRITE_COST


async def test_queued_sends_are_sliced_by_deliver_slice(small_slices: int) -> None:
    queue = new_queue()
    conns = channel_of(10)
    for c in conns:
        c.idle = False
    queue.broadcast("news", b"f", subscribers(conns), None)
    counts = []
    for _ in range(3):
        await turn()
        counts.append(sum(len(c.received) for c in conns))
    assert counts == [4, 8, 10]


async def test_a_connection_that_unsubscribed_while_waiting_is_skipped() -> None:
    queue = new_queue()
    conns = channel_of(3)
    queue.broadcast("news", b"f", subscribers(conns), None)
    conns[2].subscriptions.discard("news")
    await turn()
    assert [len(c.received) for c in conns] == [1, 1, 0]
    assert queue.delivered == 2


async def test_a_late_subscriber_does_not_get_an_earlier_broadcast() -> None:
    queue = new_queue()
    members = subscribers(channel_of(2))
    queue.broadcast("news", b"f", members, None)
    late = FakeConn("9.9", "news")
    members[late] = None
    await turn()
    assert late.received == []


async def test_order_is_kept_across_channels_and_slices(small_slices: int) -> None:
    log: list[tuple[str, bytes]] = []
    queue = new_queue()
    both = FakeConn("1.0", "big", "small", log=log)
    big = [both] + [FakeConn(f"2.{i}", "big", log=log) for i in range(9)]
    queue.broadcast("big", b"first", subscribers(big), None)
    queue.broadcast("small", b"second", subscribers([both]), None)
    for _ in range(10):
        await turn()
    assert both.received == [b"first", b"second"]
    assert queue.delivered == 11


async def test_a_broadcast_after_the_queue_drained_is_scheduled_again() -> None:
    queue = new_queue()
    conns = channel_of(2)
    queue.broadcast("news", b"1", subscribers(conns), None)
    await turn()
    queue.broadcast("news", b"2", subscribers(conns), None)
    await turn()
    assert all(c.received == [b"1", b"2"] for c in conns)


# What the fan-out tells sidecar/observe: bytes delivered, one timed broadcast -----------------


async def test_delivered_bytes_count_each_subscriber_that_got_the_frame(small_slices: int) -> None:
    queue = new_queue()
    conns = channel_of(10)
    conns[3].subscriptions.clear()  # left before its turn: not delivered, not counted
    queue.broadcast("news", b"12345", subscribers(conns), "1.7")  # 1.7: the publisher
    queue.broadcast("news", (b"ab", b"cdef"), subscribers(conns[:2]), None)
    for _ in range(10):
        await turn()
    assert queue.delivered == 8 + 2
    assert queue.delivered_bytes == 8 * 5 + 2 * 6


async def test_a_timed_broadcast_counts_from_when_the_publication_was_accepted() -> None:
    queue = new_queue()
    timed: list[float] = []
    queue.on_timed = timed.append
    queue.accepted_at = time.monotonic() - 5.0  # accepted by another process 5 s ago
    queue.time_next()
    conns = channel_of(3)
    queue.broadcast("news", b"timed", subscribers(conns), None)
    while not conns[-1].received:
        await turn()
    assert len(timed) == 1 and timed[0] >= 5.0


async def test_a_timed_broadcast_reports_once_its_last_subscriber_has_it(
    small_slices: int,
) -> None:
    queue = new_queue()
    timed: list[float] = []
    queue.on_timed = timed.append
    queue.broadcast("news", b"untimed", subscribers(channel_of(2)), None)
    queue.time_next()
    conns = channel_of(10)
    queue.broadcast("news", b"timed", subscribers(conns), None)
    assert "broadcast" not in vars(queue)  # one broadcast is timed, not the next ones
    queue.broadcast("news", b"after", subscribers(channel_of(2)), None)
    await turn()
    assert timed == []  # 2 + 2 of 10 handed over: not done
    while not conns[-1].received:
        await turn()
    assert len(timed) == 1 and timed[0] >= 0
    for _ in range(5):
        await turn()
    assert len(timed) == 1


async def test_nothing_is_timed_unless_asked() -> None:
    queue = new_queue()
    timed: list[float] = []
    queue.on_timed = timed.append
    queue.broadcast("news", b"x", subscribers(channel_of(3)), None)
    await turn()
    assert timed == []


async def test_timing_stopped_before_the_next_broadcast_times_nothing() -> None:
    queue = new_queue()
    timed: list[float] = []
    queue.on_timed = timed.append
    queue.time_next()
    queue.stop_timing()
    queue.broadcast("news", b"x", subscribers(channel_of(3)), None)
    await turn()
    assert timed == [] and queue.delivered == 3


async def test_wait_empty_returns_once_every_slice_is_handed_over(small_slices: int) -> None:
    queue = new_queue()
    conns = channel_of(10)
    for c in conns:
        c.idle = False
    queue.broadcast("news", b"1", subscribers(conns), None)
    queue.broadcast("news", b"2", subscribers(conns), None)
    await queue.wait_empty()
    assert all(c.received == [b"1", b"2"] for c in conns)
    assert len(queue) == 0


async def test_wait_empty_with_nothing_pending_returns_at_once() -> None:
    queue = new_queue()
    await asyncio.wait_for(queue.wait_empty(), 0.5)


# Giving way between slices ----------------------------------------------------------------


@pytest.fixture
def ways_given(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts give_way() calls (sched_yield) instead of making them."""
    given: list[int] = []
    monkeypatch.setattr(fanout, "give_way", lambda: given.append(1))
    return given


async def test_a_broadcast_longer_than_a_slice_gives_way_between_its_slices(
    small_slices: int, ways_given: list[int]
) -> None:
    queue = new_queue()
    conns = channel_of(10)
    for c in conns:
        c.idle = False
    queue.broadcast("news", b"f", subscribers(conns), None)
    for _ in range(3):
        await turn()
    assert sum(len(c.received) for c in conns) == 10
    assert len(ways_given) == 2  # after the slices of 4 and 8, not after the last


async def test_a_flush_longer_than_a_slice_gives_way_between_its_slices(
    ways_given: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "FLUSHES_A_GIVE_WAY", FLUSH_SLICE)  # between slices alone
    flushed: list[FlushRecorder] = []
    scheduler = FlushScheduler(asyncio.get_running_loop())
    for _ in range(FLUSH_SLICE * 2 + 1):
        scheduler.mark(FlushRecorder(flushed))
    for _ in range(3):
        await turn()
    assert len(flushed) == FLUSH_SLICE * 2 + 1
    assert len(ways_given) == 2


def given_way_log(monkeypatch: pytest.MonkeyPatch, **sizes: int) -> list:
    """A log that give_way() writes "give way" to, for FakeConn or FlushRecorder to share,
    with fanout's slice sizes set as `sizes` says."""
    log: list = []
    monkeypatch.setattr(fanout, "give_way", lambda: log.append("give way"))
    for name, size in sizes.items():
        monkeypatch.setattr(fanout, name, size)
    return log


async def test_a_flush_slice_gives_way_inside_every_flushes_a_give_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = given_way_log(monkeypatch, FLUSH_SLICE=6, FLUSHES_A_GIVE_WAY=4)
    scheduler = FlushScheduler(asyncio.get_running_loop())
    for _ in range(7):
        scheduler.mark(FlushRecorder(log))
    await turn()
    await turn()
    # A slice of 6, giving way after its 4th; then between the slices; then the last one.
    assert ["give way" if entry == "give way" else "flush" for entry in log] == [
        *["flush"] * 4,
        "give way",
        *["flush"] * 2,
        "give way",
        "flush",
    ]


async def test_a_slice_of_queue_appends_gives_way_inside_every_appends_a_give_way(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = given_way_log(monkeypatch, DELIVER_SLICE=8, APPENDS_A_GIVE_WAY=3)
    queue = new_queue()
    conns = [FakeConn(f"1.{i}", "news", log=log) for i in range(4)]
    # Tuple frames: queued, never written directly.
    queue.broadcast("news", (b"a",), subscribers(conns), None)
    queue.broadcast("news", (b"b",), subscribers(conns), None)
    await turn()
    # One slice of 8 appends: the budget left is 6 after the 2nd and 3 after the 5th; none at
    # the slice's end, with nothing pending.
    assert [entry if entry == "give way" else entry[1] for entry in log] == [
        *[(b"a",)] * 2,
        "give way",
        *[(b"a",)] * 2,
        (b"b",),
        "give way",
        *[(b"b",)] * 3,
    ]


async def test_work_done_in_one_slice_never_gives_way(ways_given: list[int]) -> None:
    queue = new_queue()
    queue.broadcast("news", b"f", subscribers(channel_of(3)), None)
    scheduler = FlushScheduler(asyncio.get_running_loop())
    scheduler.mark(FlushRecorder([]))
    await turn()
    assert ways_given == []


def test_give_way_yields_the_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    yields: list[int] = []
    monkeypatch.setattr(fanout.os, "sched_yield", lambda: yields.append(1))
    fanout.give_way()
    assert yields == [1]
