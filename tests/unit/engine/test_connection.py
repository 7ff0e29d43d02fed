"""sidecar.engine.connection: the send path of one client, against a fake transport."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Callable

import pytest

from sidecar.engine.bad_frames import BAD_FRAME_BURST
from sidecar.engine.connection import REPLY_BACKLOG_BYTES, WRITE_BUDGET, Connection, ConnectionState
from sidecar.engine.fanout import FlushScheduler
from sidecar.engine.heartbeat import Heartbeat
from sidecar.protocol.frame_writer import text_frame
from sidecar.protocol.pusher import CLOSE_REASONS, CloseCode


class FakeSink:
    """A transport that records writes and pushes back when told to.

    `pause_after_write` pauses after every write, like a transport whose buffer fills at once;
    `resume()` lets waiting drainers go on. Both tell the connection, as PusherSocket does.
    """

    def __init__(self) -> None:
        self.writes: list[bytes | memoryview] = []
        self.paused = False
        self.conn: Connection | None = None
        self.pause_after_write = False
        self.drained = asyncio.Event()
        self.drain_waits = 0
        self.aborts = 0
        self.aborted_at: float | None = None
        self.write_error: Exception | None = None
        self.drain_error: Exception | None = None

    batched = None  # its writes go straight out (FrameSink)

    def direct(self, data: bytes) -> None:  # the fan-out's write: the same here
        self.write(data)

    def write(self, data: bytes | memoryview) -> None:
        if self.write_error is not None:
            raise self.write_error
        self.writes.append(data)
        if self.pause_after_write:
            self.pause()

    async def wait_drained(self) -> None:
        self.drain_waits += 1
        await self.drained.wait()
        if self.drain_error is not None:
            raise self.drain_error

    def abort(self) -> None:
        self.aborts += 1
        self.aborted_at = asyncio.get_running_loop().time()

    def pause(self) -> None:
        self.paused = True
        self.drained.clear()
        if self.conn is not None:
            self.conn.sink_paused()

    def resume(self) -> None:
        self.paused = False
        self.drained.set()
        if self.conn is not None:
            self.conn.sink_resumed()

    @property
    def written(self) -> bytes:
        return b"".join(bytes(w) for w in self.writes)


class Closes:
    """Records close_ready(code, reason) calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, str]] = []

    def __call__(self, code: int, reason: str) -> None:
        self.calls.append((code, reason))


MakeConn = Callable[..., tuple[Connection, FakeSink, Closes]]


@pytest.fixture
async def make_conn() -> AsyncIterator[MakeConn]:
    made: list[Connection] = []
    loop = asyncio.get_running_loop()
    scheduler = FlushScheduler(loop)

    def make(queue_limit: int = 1 << 20) -> tuple[Connection, FakeSink, Closes]:
        sink = FakeSink()
        closes = Closes()
        conn = Connection(
            socket_id=f"1.{len(made) + 1}",
            app_id="1",
            sink=sink,
            scheduler=scheduler,
            heartbeat=Heartbeat(loop.time(), 120, 30, 0),
            queue_limit=queue_limit,
            close_ready=closes,
        )
        sink.conn = conn
        made.append(conn)
        return conn, sink, closes

    yield make
    for conn in made:
        conn.closed()  # cancels any abort timer left behind


async def turns(n: int = 3) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


# Writing ------------------------------------------------------------------------------------


async def test_frames_wait_for_the_flush_then_go_out_in_one_coalesced_write(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    frames = [b"first", b"second", b"third"]
    for frame in frames:
        conn.send(frame)
    assert sink.writes == []  # send() never writes
    await turns(1)
    assert sink.writes == [b"".join(frames)]  # one system call for all three, in order
    assert conn.queued_bytes == 0


async def test_a_frame_alone_is_written_as_the_same_bytes_object(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    frame = text_frame(b'{"event":"x","data":"{}"}')
    conn.send(frame)
    await turns(1)
    assert len(sink.writes) == 1
    assert sink.writes[0] is frame


async def test_the_same_frame_is_shared_by_several_connections(make_conn: MakeConn) -> None:
    pairs = [make_conn() for _ in range(3)]
    frame = text_frame(b"shared")
    for conn, _, _ in pairs:
        conn.send(frame)
    await turns(1)
    assert all(sink.writes[0] is frame for _, sink, _ in pairs)


async def test_send_json_wraps_the_payload_in_a_text_frame(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    conn.send_json(b'{"event":"pusher:pong","data":"{}"}')
    await turns(1)
    assert sink.written == text_frame(b'{"event":"pusher:pong","data":"{}"}')


async def test_a_large_frame_is_written_in_write_budget_slices(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    frame = bytes(range(256)) * (WRITE_BUDGET * 5 // 2 // 256)  # 2.5 budgets
    conn.send(frame)
    await turns(1)
    assert [len(w) for w in sink.writes] == [WRITE_BUDGET, WRITE_BUDGET, WRITE_BUDGET // 2]
    assert all(isinstance(w, memoryview) and w.obj is frame for w in sink.writes)  # no copy
    assert sink.written == frame


async def test_frames_after_a_large_one_keep_their_order(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    big = b"B" * (WRITE_BUDGET + 10)
    conn.send(b"a")
    conn.send(big)
    conn.send(b"c")
    await turns(1)
    assert sink.written == b"a" + big + b"c"


async def test_frames_sent_after_a_flush_are_flushed_on_a_later_turn(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    conn.send(b"one")
    await turns(1)
    conn.send(b"two")
    await turns(1)
    assert sink.writes == [b"one", b"two"]


# Back-pressure ------------------------------------------------------------------------------


async def test_a_paused_sink_stops_writing_and_one_drain_task_resumes_it(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    sink.pause()
    conn.send(b"a")
    await turns()
    conn.send(b"b")  # while the drain task waits: no second flush, no second task
    conn.send(b"c")
    await turns()
    assert sink.writes == []
    assert sink.drain_waits == 1
    assert conn.queued_bytes == 3
    sink.resume()
    await turns()
    assert sink.written == b"abc"
    assert sink.drain_waits == 1
    assert conn.queued_bytes == 0


async def test_a_sink_that_pauses_mid_frame_gets_the_rest_after_each_drain(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    sink.pause_after_write = True
    frame = b"x" * (WRITE_BUDGET * 3)
    conn.send(frame)
    conn.send(b"tail")
    await turns()
    assert [len(w) for w in sink.writes] == [WRITE_BUDGET]  # then the transport pushed back
    for expected_writes in (2, 3, 4):
        sink.resume()  # drains; pauses again after the next write
        await turns()
        assert len(sink.writes) == expected_writes
    assert sink.written == frame + b"tail"
    # One wait per push-back with bytes still queued; the last write left nothing to wait for.
    assert sink.drain_waits == 3
    sink.resume()
    await turns()
    assert sink.drain_waits == 3


async def test_a_drain_that_fails_marks_the_connection_closed(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    sink.pause()
    conn.send(b"a")
    await turns()
    sink.drain_error = ConnectionResetError("peer gone")
    sink.resume()
    await turns()
    assert conn.state is ConnectionState.CLOSED
    assert sink.writes == []
    assert closes.calls == []


# Closing ------------------------------------------------------------------------------------


async def test_overflow_closes_with_4100_discarding_unstarted_frames(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn(queue_limit=100)
    sink.pause()
    conn.send(b"q" * 60)
    conn.send(b"r" * 30)
    conn.send(b"s" * 20)  # 110 > 100: over the limit
    assert conn.state is ConnectionState.CLOSING
    assert conn.close_code == CloseCode.OVER_CAPACITY
    assert conn.queued_bytes == 0  # nothing had begun: all dropped
    conn.send(b"t")  # ignored once closing
    sink.resume()
    await turns()
    assert sink.writes == []
    assert conn.state is ConnectionState.CLOSED
    assert closes.calls == [(4100, CLOSE_REASONS[CloseCode.OVER_CAPACITY])]


async def test_overflow_finishes_a_half_written_frame_before_closing(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn(queue_limit=WRITE_BUDGET)
    sink.pause_after_write = True
    big = b"B" * (WRITE_BUDGET * 3)
    conn.send(big)  # an empty queue takes any frame
    await turns()
    assert len(sink.writes) == 1  # one slice out, the transport pushed back
    conn.send(b"small")  # 2 budgets still queued: over the limit
    assert conn.state is ConnectionState.CLOSING
    assert conn.queued_bytes == WRITE_BUDGET * 2  # the rest of the started frame stays
    sink.pause_after_write = False
    sink.resume()
    await turns()
    assert sink.written == big  # the stream ends on a frame boundary, "small" dropped
    assert conn.state is ConnectionState.CLOSED
    assert closes.calls == [(4100, CLOSE_REASONS[CloseCode.OVER_CAPACITY])]


async def test_a_normal_close_sends_what_was_queued_first(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    conn.send(b"one")
    conn.send(b"two")
    conn.close(CloseCode.RECONNECT)
    assert closes.calls == []  # not before the queue is written
    await turns()
    assert sink.written == b"onetwo"
    assert conn.state is ConnectionState.CLOSED
    assert closes.calls == [(4200, CLOSE_REASONS[CloseCode.RECONNECT])]


async def test_a_normal_close_waits_for_a_paused_sink(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    sink.pause()
    conn.send(b"pending")
    await turns()
    conn.close(CloseCode.RECONNECT)
    await turns()
    assert closes.calls == []
    assert conn.state is ConnectionState.CLOSING
    sink.resume()
    await turns()
    assert sink.written == b"pending"
    assert closes.calls == [(4200, CLOSE_REASONS[CloseCode.RECONNECT])]


async def test_close_with_an_explicit_reason(make_conn: MakeConn) -> None:
    conn, _, closes = make_conn()
    conn.close(4009, "Origin not allowed")
    await turns()
    assert closes.calls == [(4009, "Origin not allowed")]
    assert conn.close_reason == "Origin not allowed"


async def test_close_of_an_idle_connection_is_ready_on_the_next_turn(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    conn.close(CloseCode.PONG_NOT_RECEIVED)
    assert conn.state is ConnectionState.CLOSING
    await turns(1)
    assert sink.writes == []
    assert closes.calls == [(4201, CLOSE_REASONS[CloseCode.PONG_NOT_RECEIVED])]


async def test_send_after_close_is_ignored(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    conn.close(CloseCode.RECONNECT)
    conn.send(b"while closing")
    await turns()
    conn.send(b"after closed")
    await turns()
    assert sink.writes == []
    assert conn.queued_bytes == 0
    assert len(closes.calls) == 1


async def test_a_second_close_does_not_change_the_first(make_conn: MakeConn) -> None:
    conn, _, closes = make_conn()
    conn.close(CloseCode.RECONNECT)
    conn.close(CloseCode.OVER_CAPACITY)
    await turns()
    assert conn.close_code == CloseCode.RECONNECT
    assert closes.calls == [(4200, CLOSE_REASONS[CloseCode.RECONNECT])]


async def test_the_abort_timer_cuts_off_a_close_that_never_completes(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    sink.pause()  # the peer never reads
    conn.send(b"stuck")
    started = asyncio.get_running_loop().time()
    conn.close(CloseCode.RECONNECT, grace=0.05)
    await turns()
    assert sink.aborts == 0
    await asyncio.sleep(0.2)
    assert sink.aborts == 1
    assert sink.aborted_at is not None
    assert sink.aborted_at - started >= 0.05  # not before the grace
    assert closes.calls == []


async def test_closed_cancels_the_abort_timer(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    sink.pause()
    conn.send(b"stuck")
    conn.close(CloseCode.RECONNECT, grace=0.02)
    conn.closed()  # the socket went away by itself
    await asyncio.sleep(0.1)
    assert sink.aborts == 0
    assert conn.state is ConnectionState.CLOSED


async def test_a_write_that_raises_connection_reset_marks_closed(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    sink.write_error = ConnectionResetError("transport closing")
    conn.send(b"a")
    await turns()
    assert conn.state is ConnectionState.CLOSED
    assert closes.calls == []
    sink.write_error = None
    conn.send(b"b")  # the handler will clean up; nothing more is written meanwhile
    await turns()
    assert sink.writes == []


# Direct writes ------------------------------------------------------------------------------


async def test_write_now_writes_when_nothing_is_queued(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    frame = b"frame"
    assert conn.write_now(frame)
    assert sink.writes == [frame]
    assert sink.writes[0] is frame


async def test_write_now_refuses_behind_queued_frames_to_keep_order(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    conn.send(b"first")  # queued, marked for the next flush
    assert not conn.write_now(b"second")
    assert sink.writes == []


async def test_write_now_refuses_on_a_paused_sink_and_after_close(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    sink.pause()
    assert not conn.write_now(b"x")
    sink.resume()
    conn.close(CloseCode.RECONNECT)
    assert not conn.write_now(b"x")


# Replies and refusals -----------------------------------------------------------------------

ERROR = b'{"event":"pusher:error","data":{"message":"bad","code":4300}}'


async def test_a_reply_is_written_at_once_when_nothing_is_queued(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    conn.reply(b"pong")
    assert sink.writes == [b"pong"]


async def test_replies_behind_an_unread_backlog_are_capped_then_dropped(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    sink.pause()  # the client does not read
    reply = text_frame(ERROR)
    for _ in range(10_000):
        conn.reply(reply)
    await turns()
    assert sink.writes == []
    assert conn.queued_bytes <= REPLY_BACKLOG_BYTES
    assert conn.queued_bytes > REPLY_BACKLOG_BYTES - len(reply)
    assert conn.state is ConnectionState.OPEN  # replies are not refusals: nobody is closed


async def test_replies_queue_again_once_the_client_has_read_the_backlog(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    sink.pause()
    reply = text_frame(ERROR)
    while conn.queued_bytes + len(reply) <= REPLY_BACKLOG_BYTES:
        conn.reply(reply)
    conn.reply(reply)  # over: dropped
    held = conn.queued_bytes
    await turns()
    sink.resume()
    await turns()
    assert len(sink.written) == held
    sink.pause()
    conn.send(b"event")  # a new backlog
    conn.reply(reply)
    assert conn.queued_bytes == len(b"event") + len(reply)


async def test_replies_do_not_hold_back_events_the_client_is_owed(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    sink.pause()
    for _ in range(1000):
        conn.reply(text_frame(ERROR))
    event = b"e" * (REPLY_BACKLOG_BYTES * 4)
    conn.send(event)
    assert conn.queued_bytes <= REPLY_BACKLOG_BYTES + len(event)
    assert conn.state is ConnectionState.OPEN


async def test_refusals_past_the_budget_close_with_4101(make_conn: MakeConn) -> None:
    conn, sink, closes = make_conn()
    for _ in range(BAD_FRAME_BURST):
        conn.refuse_frame(ERROR)
    assert conn.state is ConnectionState.OPEN
    assert sink.written.count(b"pusher:error") == BAD_FRAME_BURST
    for _ in range(5):  # within a second: at most one more is earned back
        conn.refuse_frame(ERROR)
    assert conn.state is not ConnectionState.OPEN
    assert conn.close_code == CloseCode.TOO_MANY_BAD_FRAMES == 4101
    await turns()
    assert closes.calls == [(4101, CLOSE_REASONS[CloseCode.TOO_MANY_BAD_FRAMES])]


async def test_refusals_that_are_not_bad_frames_never_close(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    for _ in range(3 * BAD_FRAME_BURST):
        conn.refuse_frame(ERROR, bad_frame=False)  # over a rate: answered, not held against it
    assert conn.state is ConnectionState.OPEN
    assert sink.written.count(b"pusher:error") == 3 * BAD_FRAME_BURST


# direct_write -------------------------------------------------------------------------------


def direct_allowed(conn: Connection, sink: FakeSink) -> bool:
    """The rule direct_write stands for: nothing queued ahead, open, the sink taking bytes."""
    return (
        not conn._marked
        and not conn._draining
        and conn.state is ConnectionState.OPEN
        and not sink.paused
    )


async def test_direct_write_follows_its_rule_and_keeps_the_order_through_any_sequence(
    make_conn: MakeConn,
) -> None:
    """Random sends, direct writes (as FanoutQueue makes them), pauses, resumes and loop turns:
    after every step direct_write is set exactly when its rule holds, no frame is written at
    once into a paused sink, and the client gets every frame once, in order."""
    rng = random.Random(14)
    for _ in range(150):
        conn, sink, _ = make_conn()
        frames = []
        for step in range(60):
            op = rng.choice(["send", "direct", "fanout", "pause", "resume", "turn", "fill"])
            frame = b"<%d>" % step
            if op == "send":
                conn.send(frame)
                frames.append(frame)
            elif op == "direct":  # as a reply is written (write_now)
                paused = sink.paused
                if conn.write_now(frame):
                    assert not paused
                else:
                    conn.send(frame)
                frames.append(frame)
            elif op == "fanout":  # as FanoutQueue writes
                write = conn.direct_write
                if write is not None:
                    assert not sink.paused
                    write(frame)
                else:
                    conn.send(frame)
                frames.append(frame)
            elif op == "pause":
                sink.pause()
            elif op == "resume":
                sink.resume()
            elif op == "fill":
                sink.pause_after_write = not sink.pause_after_write
            else:
                await turns(1)
            assert (conn.direct_write is not None) == direct_allowed(conn, sink), op
        sink.pause_after_write = False
        sink.resume()
        await turns(5)
        assert conn.direct_write is not None
        assert sink.written == b"".join(frames)


async def test_the_fan_out_writes_with_the_sinks_direct_and_a_reply_with_its_write(
    make_conn: MakeConn,
) -> None:
    conn, sink, _ = make_conn()
    direct: list[bytes] = []
    sink.direct = direct.append  # type: ignore[method-assign]  # unlike FakeSink's, its own
    conn._allow_direct()  # read again, as at any change of the rule
    assert conn.direct_write is not None
    conn.direct_write(b"event")
    assert conn.write_now(b"pong")
    assert direct == [b"event"] and sink.writes == [b"pong"]
    assert conn.batched is None  # FakeSink's: nothing for a write batch to send


async def test_a_closing_or_failed_connection_writes_nothing_at_once(make_conn: MakeConn) -> None:
    conn, sink, _ = make_conn()
    conn.close(CloseCode.NORMAL)
    assert conn.direct_write is None and not conn.write_now(b"x")
    conn, sink, _ = make_conn()
    sink.write_error = ConnectionResetError("gone")
    assert conn.write_now(b"x")  # handed over; the failure closes it
    assert conn.state is ConnectionState.CLOSED and conn.direct_write is None
    sink.resume()  # a resume after the failure does not allow it again
    assert conn.direct_write is None
