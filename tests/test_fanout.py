"""sidecar.relay.fanout: broadcasts and flushes in bounded slices per loop turn, in order."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.relay import fanout
from sidecar.relay.fanout import DELIVER_SLICE, FLUSH_SLICE, FanoutQueue, FlushScheduler


class FakeConn:
    """What FanoutQueue needs of a Connection: socket_id, subscriptions and send()."""

    def __init__(self, socket_id: str, *channels: str, log: list | None = None) -> None:
        self.socket_id = socket_id
        self.subscriptions = set(channels)
        self.received: list[bytes] = []
        self._log = log  # a shared (socket_id, frame) log, to see the order across connections

    def send(self, frame: bytes) -> None:
        self.received.append(frame)
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


# FanoutQueue: small channels ----------------------------------------------------------------


async def test_small_channel_is_delivered_inline() -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(3)
    frame = b"event"
    queue.broadcast("news", frame, subscribers(conns), None)
    # Inline: no loop turn needed, nothing left pending.
    assert all(c.received == [frame] for c in conns)
    assert all(c.received[0] is frame for c in conns)  # shared, never copied
    assert queue.delivered == 3
    assert len(queue) == 0


async def test_channel_of_exactly_a_slice_is_still_inline() -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(DELIVER_SLICE)
    queue.broadcast("news", b"e", subscribers(conns), None)
    assert all(c.received == [b"e"] for c in conns)
    assert queue.delivered == DELIVER_SLICE
    assert len(queue) == 0


async def test_inline_delivery_skips_the_excluded_socket() -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(3)
    queue.broadcast("news", b"e", subscribers(conns), conns[1].socket_id)
    assert [c.received for c in conns] == [[b"e"], [], [b"e"]]
    assert queue.delivered == 2


async def test_inline_delivery_with_an_unknown_excluded_socket_reaches_everyone() -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(3)
    queue.broadcast("news", b"e", subscribers(conns), "999.999")
    assert all(c.received == [b"e"] for c in conns)
    assert queue.delivered == 3


# FanoutQueue: big channels ------------------------------------------------------------------


async def test_big_channel_is_delivered_in_slices_of_deliver_slice() -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    total = DELIVER_SLICE * 2 + 7
    conns = channel_of(total)
    queue.broadcast("news", b"big", subscribers(conns), None)
    assert sum(len(c.received) for c in conns) == 0  # nothing inline
    assert len(queue) == 1
    seen = []
    for _ in range(3):
        await turn()
        seen.append(sum(len(c.received) for c in conns))
    assert seen == [DELIVER_SLICE, 2 * DELIVER_SLICE, total]
    # The first slice went to the first subscribers, in channel order.
    assert all(c.received == [b"big"] for c in conns)
    assert queue.delivered == total
    assert len(queue) == 0


async def test_sliced_delivery_counts_and_skips_the_excluded_socket(small_slices: int) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(10)
    queue.broadcast("news", b"e", subscribers(conns), conns[5].socket_id)
    for _ in range(3):
        await turn()
    assert conns[5].received == []
    assert all(c.received == [b"e"] for i, c in enumerate(conns) if i != 5)
    assert queue.delivered == 9


async def test_a_connection_that_unsubscribed_while_the_broadcast_waited_is_skipped(
    small_slices: int,
) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(10)
    queue.broadcast("news", b"e", subscribers(conns), None)
    await turn()  # the first 4 have it
    conns[7].subscriptions.discard("news")  # leaves before its slice
    conns[1].subscriptions.discard("news")  # already served: no effect
    await turn()
    await turn()
    assert conns[7].received == []
    assert conns[1].received == [b"e"]
    assert sum(len(c.received) for c in conns) == 9
    assert queue.delivered == 9


async def test_a_late_subscriber_does_not_get_an_earlier_sliced_broadcast(
    small_slices: int,
) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    conns = channel_of(6)
    members = subscribers(conns)
    queue.broadcast("news", b"e", members, None)
    late = FakeConn("2.1", "news")
    members[late] = None  # subscribes after the publish: the broadcast holds a snapshot
    for _ in range(3):
        await turn()
    assert late.received == []
    assert queue.delivered == 6


async def test_slice_budget_is_shared_by_consecutive_broadcasts(small_slices: int) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    big = channel_of(6, "big", "1")
    small = channel_of(3, "small", "2")
    queue.broadcast("big", b"B", subscribers(big), None)
    queue.broadcast("small", b"S", subscribers(small), None)  # queued behind, not inline
    assert len(queue) == 2
    assert sum(len(c.received) for c in small) == 0
    await turn()
    assert (sum(len(c.received) for c in big), sum(len(c.received) for c in small)) == (4, 0)
    await turn()
    assert (sum(len(c.received) for c in big), sum(len(c.received) for c in small)) == (6, 2)
    await turn()
    assert (sum(len(c.received) for c in big), sum(len(c.received) for c in small)) == (6, 3)
    assert queue.delivered == 9
    assert len(queue) == 0


async def test_order_is_kept_for_a_connection_in_a_sliced_and_a_small_channel(
    small_slices: int,
) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    log: list[tuple[str, bytes]] = []
    both = FakeConn("9.9", "big", "small", log=log)
    big = [FakeConn(f"1.{i}", "big", log=log) for i in range(9)] + [both]  # last of 10
    queue.broadcast("big", b"first", subscribers(big), None)
    queue.broadcast("small", b"second", subscribers([both]), None)
    assert both.received == []  # the small broadcast did not overtake the big one
    for _ in range(4):
        await turn()
    assert both.received == [b"first", b"second"]
    # Globally too: every "first" was handed out before any "second".
    frames = [frame for _, frame in log]
    assert frames == [b"first"] * 10 + [b"second"]
    assert queue.delivered == 11


async def test_small_broadcast_is_inline_again_once_the_queue_has_drained(
    small_slices: int,
) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    queue.broadcast("big", b"B", subscribers(channel_of(6, "big")), None)
    for _ in range(2):
        await turn()
    assert len(queue) == 0
    small = channel_of(2, "small", "2")
    queue.broadcast("small", b"S", subscribers(small), None)
    assert all(c.received == [b"S"] for c in small)
    assert queue.delivered == 8


async def test_a_broadcast_after_the_queue_drained_is_scheduled_again(small_slices: int) -> None:
    queue = FanoutQueue(asyncio.get_running_loop())
    first = channel_of(5, "a", "1")
    queue.broadcast("a", b"A", subscribers(first), None)
    for _ in range(2):
        await turn()
    second = channel_of(5, "b", "2")
    queue.broadcast("b", b"B", subscribers(second), None)
    assert len(queue) == 1
    for _ in range(2):
        await turn()
    assert all(c.received == [b"B"] for c in second)
    assert queue.delivered == 10
