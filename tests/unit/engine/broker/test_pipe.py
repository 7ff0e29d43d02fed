"""The pipe broker's wire format and stream splitting, and hub/worker over a real socketpair."""

from __future__ import annotations

import asyncio
import socket

import pytest

from sidecar.engine.broker import frames, pipe
from sidecar.engine.broker.base import BrokerUnavailable, Publication
from sidecar.engine.broker.changes import (
    Change,
    CountDelta,
    MemberJoin,
    MemberLeave,
    OriginGone,
    Reset,
    TerminateUser,
)
from sidecar.engine.broker.pipe import (
    HubBroker,
    PublicationStream,
    WorkerBroker,
    decode_publication,
    encode_publication,
)


def wire(pub: Publication) -> bytes:
    return b"".join(encode_publication(pub))


def test_round_trip_keeps_every_field_and_the_data_literal() -> None:
    pub = Publication.of(
        "7", ("a", "b"), "ev", 'he said "hi" \u00e9', socket_id="1.2", user_id="ann"
    )
    head, data = encode_publication(pub)
    assert data is pub.data_json  # the data literal is written as is, never copied
    assert decode_publication(head, data) == pub
    # The acceptance time crosses too: latency is measured from the publisher's reply.
    assert decode_publication(head, data).accepted_at == pub.accepted_at


def test_stream_splits_frames_across_any_chunking() -> None:
    pubs = [Publication.of("1", (f"c{i}",), "e", "x" * (i * 1000)) for i in range(5)]
    stream_bytes = b"".join(wire(p) for p in pubs)
    for chunk in (1, 7, 4096, len(stream_bytes)):
        got: list[Publication] = []
        stream = PublicationStream(lambda k, h, d, got=got: got.append(decode_publication(h, d)))
        for start in range(0, len(stream_bytes), chunk):
            stream.data_received(stream_bytes[start : start + chunk])
        assert got == pubs, chunk


def test_stream_reports_loss() -> None:
    lost: list[bool] = []
    stream = PublicationStream(lambda k, h, d: None, lambda: lost.append(True))
    stream.connection_lost(None)
    assert lost == [True]


async def test_hub_sends_every_publication_to_every_worker_in_order() -> None:
    hub = HubBroker()
    received: dict[int, list[Publication]] = {0: [], 1: []}
    workers = []
    for worker_id in (0, 1):
        hub_end, worker_end = socket.socketpair()
        await hub.attach(worker_id, hub_end)
        worker = WorkerBroker(worker_end)
        await worker.start(received[worker_id].append)
        workers.append(worker)
    first = Publication.of("1", ("a",), "one", "1")
    second = Publication.of("1", ("a",), "two", "2")
    hub.publish(first)
    workers[1].publish(second)  # from a worker (the signed API): back through the hub
    for _ in range(100):
        if all(len(r) == 2 for r in received.values()):
            break
        await asyncio.sleep(0.01)
    assert received == {0: [first, second], 1: [first, second]}
    await hub.close()
    await asyncio.wait_for(asyncio.gather(*(w.close() for w in workers)), 5)


async def test_a_lost_worker_is_dropped_from_the_hub() -> None:
    hub = HubBroker()
    hub_end, worker_end = socket.socketpair()
    await hub.attach(3, hub_end)
    assert hub.workers == 1
    worker_end.close()
    for _ in range(100):
        if hub.workers == 0:
            break
        await asyncio.sleep(0.01)
    assert hub.workers == 0
    hub.publish(Publication.of("1", ("a",), "e", "x"))  # nobody to send to: no error


async def test_the_hub_writes_to_the_pipes_after_the_current_turn_in_one_batch() -> None:
    hub = HubBroker()
    hub_end, worker_end = socket.socketpair()
    await hub.attach(0, hub_end)
    worker_end.setblocking(False)
    hub.publish(Publication.of("1", ("a",), "one", "1"))
    hub.publish(Publication.of("1", ("a",), "two", "2"))
    # Nothing written yet: the publisher's reply goes out before any worker is woken.
    try:
        early = worker_end.recv(65536)
    except BlockingIOError:
        early = b""
    assert early == b""
    await asyncio.sleep(0.01)
    got: list[Publication] = []
    stream = PublicationStream(lambda k, h, d: got.append(decode_publication(h, d)))
    stream.data_received(worker_end.recv(65536))
    assert [p.name for p in got] == ["one", "two"]
    await hub.close()
    worker_end.close()


# Channel state changes and reports ----------------------------------------------------------


class Recorder:
    """A worker's view: publications and change batches, in the order they arrived."""

    def __init__(self) -> None:
        self.seen: list[object] = []

    def deliver(self, pub: Publication) -> None:
        self.seen.append(pub.name)

    def changed(self, origin: int, changes: list[Change]) -> None:
        self.seen.append((origin, changes))


async def eventually(check, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


async def attached(hub: HubBroker, worker_id: int) -> tuple[WorkerBroker, Recorder, socket.socket]:
    hub_end, worker_end = socket.socketpair()
    await hub.attach(worker_id, hub_end)
    worker = WorkerBroker(worker_end)
    recorder = Recorder()
    await worker.start(recorder.deliver, recorder.changed)
    return worker, recorder, worker_end


async def test_changes_are_stamped_with_their_origin_and_echoed_to_every_worker_in_order() -> None:
    hub = HubBroker()
    at_hub: list[tuple[int, list[Change]]] = []
    await hub.start(lambda p: None, lambda o, c: at_hub.append((o, c)))
    (_, r0, _), (w1, r1, _) = await attached(hub, 0), await attached(hub, 1)
    join = MemberJoin("1", "presence-a", "9.1", "ann", {"n": 1})
    w1.announce([join])
    await eventually(lambda: len(r1.seen) == 1)
    hub.publish(Publication.of("1", ("presence-a",), "after", "x"))
    hub.announce([TerminateUser("1", "ann")])
    await eventually(lambda: len(r0.seen) == 3 and len(r1.seen) == 3)
    # The second worker to attach is origin 2; the hub's own changes are origin 0.
    expected = [(2, [join]), "after", (0, [TerminateUser("1", "ann")])]
    assert r0.seen == r1.seen == expected
    assert at_hub == [(2, [join]), (0, [TerminateUser("1", "ann")])]
    await hub.close()


async def test_a_worker_that_attaches_late_starts_from_the_snapshot() -> None:
    hub = HubBroker(snapshot=lambda: {"1": {"news": {"o": [[1, 3]], "m": [], "s": []}}})
    await hub.start(lambda p: None)
    _, recorder, _ = await attached(hub, 0)
    await eventually(lambda: len(recorder.seen) == 1)
    assert recorder.seen == [(0, [Reset({"1": {"news": {"o": [[1, 3]], "m": [], "s": []}}})])]
    await hub.close()


async def test_a_lost_worker_releases_its_share_in_order() -> None:
    hub = HubBroker()
    at_hub: list[tuple[int, list[Change]]] = []
    await hub.start(lambda p: None, lambda o, c: at_hub.append((o, c)))
    _, r0, _ = await attached(hub, 0)
    _, _, dying_end = await attached(hub, 1)
    dying_end.close()
    await eventually(lambda: hub.workers == 1 and len(r0.seen) == 1)
    assert r0.seen == [(0, [OriginGone(2)])]
    assert at_hub == [(0, [OriginGone(2)])]
    await hub.close()


async def test_reports_reach_the_hub_only() -> None:
    hub = HubBroker()
    reports: list[tuple[str, dict]] = []
    await hub.start(lambda p: None, None, lambda a, e: reports.append((a, e)))
    worker, recorder, _ = await attached(hub, 0)
    worker.report("1", {"name": "cache_miss", "channel": "cache-a"})
    await eventually(lambda: len(reports) == 1)
    assert reports == [("1", {"name": "cache_miss", "channel": "cache-a"})]
    await asyncio.sleep(0.05)
    assert recorder.seen == []
    await hub.close()


async def test_a_worker_whose_pipe_is_gone_drops_what_it_sends() -> None:
    hub = HubBroker()
    await hub.start(lambda p: None)
    worker, _, _ = await attached(hub, 0)
    await hub.close()
    await asyncio.wait_for(worker.close(), 5)
    worker.publish(Publication.of("1", ("a",), "late", "x"))  # no error: the worker is stopping
    worker.announce([MemberLeave("1", "presence-a", "1.1")])
    worker.report("1", {"name": "cache_miss", "channel": "cache-a"})


async def test_closing_the_hub_releases_nothing() -> None:
    hub = HubBroker()
    at_hub: list[tuple[int, list[Change]]] = []
    await hub.start(lambda p: None, lambda o, c: at_hub.append((o, c)))
    worker, _, _ = await attached(hub, 0)
    await hub.close()
    await asyncio.wait_for(worker.close(), 5)
    await asyncio.sleep(0.05)
    assert at_hub == []


async def workers_of(hub: HubBroker, count: int) -> tuple[list[WorkerBroker], dict[int, list]]:
    received: dict[int, list] = {i: [] for i in range(count)}
    workers = []
    for worker_id in range(count):
        hub_end, worker_end = socket.socketpair()
        await hub.attach(worker_id, hub_end)
        worker = WorkerBroker(worker_end)
        await worker.start(received[worker_id].append)
        workers.append(worker)
    return workers, received


async def test_closing_waits_for_every_worker_to_finish_before_closing_the_pipes() -> None:
    hub = HubBroker()
    workers, received = await workers_of(hub, 2)
    closing = asyncio.ensure_future(hub.close(wait=5))
    await asyncio.sleep(0.05)
    # Accepted by a worker's own API while the hub waits: it must reach everyone.
    late = Publication.of("1", ("a",), "late", "x")
    workers[0].publish(late)
    hub.finished(0, workers[0].published)
    await asyncio.sleep(0.05)
    assert not closing.done(), "closed before the second worker finished"
    hub.finished(1, workers[1].published)
    await asyncio.wait_for(closing, 5)
    await asyncio.wait_for(asyncio.gather(*(w.close() for w in workers)), 5)
    assert received == {0: [late], 1: [late]}


async def test_closing_does_not_wait_past_its_time_for_a_worker_that_never_finishes() -> None:
    hub = HubBroker()
    workers, _ = await workers_of(hub, 2)
    hub.finished(0, workers[0].published)
    await asyncio.wait_for(hub.close(wait=0.2), 5)
    await asyncio.wait_for(asyncio.gather(*(w.close() for w in workers)), 5)


async def test_a_worker_that_finishes_alone_gets_its_pipe_closed_after_the_grace(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipe, "ALONE_GRACE", 0.05)
    hub = HubBroker()
    gone: list[list[Change]] = []
    await hub.start(lambda p: None, lambda origin, changes: gone.append(changes))
    workers, received = await workers_of(hub, 2)
    hub.finished(0, workers[0].published)
    hub.publish(Publication.of("1", ("a",), "before", "x"))  # within the grace: still theirs
    await asyncio.wait_for(workers[0].close(), 5)
    assert [p.name for p in received[0]] == ["before"]
    assert hub.workers == 1
    assert any(isinstance(c, OriginGone) for changes in gone for c in changes)
    await hub.close()
    await asyncio.wait_for(workers[1].close(), 5)


async def test_a_worker_counts_as_finished_only_once_its_publications_are_read() -> None:
    """`finished` comes on the control line, outside the pipe's order: the hub may hear it
    before it has read what the worker wrote ahead of it, and waits for that many."""
    hub = HubBroker()
    workers, received = await workers_of(hub, 2)
    hub.finished(1, workers[1].published)
    reading = hub._workers[0].stream.transport
    assert reading is not None
    reading.pause_reading()  # the hub reads nothing from worker 0 until told
    late = [Publication.of("1", ("a",), f"late{i}", "x") for i in range(3)]
    for pub in late:
        workers[0].publish(pub)
    assert workers[0].published == 3
    hub.finished(0, 3)
    closing = asyncio.ensure_future(hub.close(wait=5))
    await asyncio.sleep(0.1)
    assert not closing.done(), "closed before the publications ahead of `finished` were read"
    reading.resume_reading()
    await asyncio.wait_for(closing, 5)
    await asyncio.wait_for(asyncio.gather(*(w.close() for w in workers)), 5)
    assert received == {0: late, 1: late}


async def test_a_finished_count_not_yet_read_keeps_the_hub_waiting_until_its_time() -> None:
    hub = HubBroker()
    workers, _ = await workers_of(hub, 1)
    workers[0].publish(Publication.of("1", ("a",), "one", "x"))
    hub.finished(0, 2)  # says two; only one ever comes
    closing = asyncio.ensure_future(hub.close(wait=0.3))
    await asyncio.sleep(0.15)
    assert not closing.done()
    await asyncio.wait_for(closing, 5)
    await asyncio.wait_for(workers[0].close(), 5)


async def test_publications_dropped_on_a_closed_pipe_are_not_counted() -> None:
    hub = HubBroker()
    worker, _, _ = await attached(hub, 0)
    worker.publish(Publication.of("1", ("a",), "sent", "x"))
    await hub.close()
    await asyncio.wait_for(worker.close(), 5)
    worker.publish(Publication.of("1", ("a",), "dropped", "x"))
    assert worker.published == 1


async def test_a_worker_that_does_not_read_is_cut_off_past_the_backlog_bound() -> None:
    """Flow control: the hub holds at most max_backlog bytes for a stalled worker, then closes
    its pipe (its share released in order); a worker that reads keeps receiving everything."""
    bound = 256 * 1024
    hub = HubBroker(max_backlog=bound)
    at_hub: list[tuple[int, list[Change]]] = []
    await hub.start(lambda p: None, lambda o, c: at_hub.append((o, c)))
    _, reader, _ = await attached(hub, 0)
    stalled_hub_end, stalled_end = socket.socketpair()
    await hub.attach(1, stalled_hub_end)  # origin 2; nobody ever reads stalled_end
    sent = 0
    data = "x" * 4096
    try:
        for _ in range(400):  # up to ~16 MiB: far past the bound and the kernel's buffer
            for _ in range(10):
                hub.publish(Publication.of("1", ("news",), f"e{sent}", data))
                sent += 1
            await asyncio.sleep(0)
            await asyncio.sleep(0)
            if hub.workers == 1:
                break
        assert hub.workers == 1  # the stalled one is gone, well before everything was sent
        assert sent < 4000
        await eventually(lambda: (0, [OriginGone(2)]) in at_hub)
        await eventually(lambda: len(reader.seen) == sent + 1, timeout=5)
        assert [s for s in reader.seen if isinstance(s, tuple)] == [(0, [OriginGone(2)])]
        assert [s for s in reader.seen if isinstance(s, str)] == [f"e{i}" for i in range(sent)]
    finally:
        stalled_end.close()
        await hub.close()


async def test_a_worker_within_the_backlog_bound_is_kept() -> None:
    hub = HubBroker(max_backlog=64 * 1024 * 1024)
    await hub.start(lambda p: None)
    stalled_hub_end, stalled_end = socket.socketpair()
    await hub.attach(0, stalled_hub_end)
    try:
        for n in range(200):  # ~800 KiB held for a worker that is not reading yet
            hub.publish(Publication.of("1", ("news",), f"e{n}", "x" * 4096))
            await asyncio.sleep(0)
        await asyncio.sleep(0.05)
        assert hub.workers == 1
    finally:
        stalled_end.close()
        await hub.close()


# With a Redis hub: confirmed publications (CONFIRM/ACK) and channels made ready (READY) ------


async def unattached(confirms: bool = True) -> tuple[WorkerBroker, socket.socket, socket.socket]:
    """A started worker whose pipe's other end (returned first) the test writes itself."""
    hub_end, worker_end = socket.socketpair()
    worker = WorkerBroker(worker_end, confirms=confirms)
    await worker.start(lambda pub: None)
    return worker, hub_end, worker_end


async def confirming(hub: HubBroker) -> tuple[WorkerBroker, socket.socket]:
    hub_end, worker_end = socket.socketpair()
    await hub.attach(0, hub_end)
    worker = WorkerBroker(worker_end, confirms=True)
    await worker.start(lambda pub: None)
    return worker, worker_end


async def test_the_pipe_hub_confirms_a_worker_publication_at_once() -> None:
    hub = HubBroker()
    worker, worker_end = await confirming(hub)
    await asyncio.wait_for(worker.publish_confirmed(Publication.of("1", ("a",), "e", "x")), 2)
    await hub.close()
    worker_end.close()


async def test_a_refusal_in_the_ack_is_broker_unavailable() -> None:
    worker, hub_end, worker_end = await unattached()
    answered = asyncio.ensure_future(
        worker.publish_confirmed(Publication.of("1", ("a",), "e", "x"))
    )
    await asyncio.sleep(0.01)
    hub_end.sendall(frames.ack_frame(1, "Redis at h:1 is unreachable"))
    with pytest.raises(BrokerUnavailable, match="unreachable"):
        await asyncio.wait_for(answered, 2)
    hub_end.close()
    worker_end.close()


async def test_a_hub_that_goes_away_refuses_what_waits_for_its_ack() -> None:
    worker, hub_end, worker_end = await unattached()
    answered = asyncio.ensure_future(
        worker.publish_confirmed(Publication.of("1", ("a",), "e", "x"))
    )
    await asyncio.sleep(0.01)
    hub_end.close()
    with pytest.raises(BrokerUnavailable):
        await asyncio.wait_for(answered, 2)
    worker_end.close()


async def test_a_channel_is_ready_on_the_ready_of_its_own_subscribe_only() -> None:
    worker, hub_end, worker_end = await unattached()
    ready: list[tuple[str, str]] = []
    worker.on_ready = lambda app_id, channel: ready.append((app_id, channel))
    assert not worker.ready("1", "a")
    worker.announce([CountDelta("1", "a", 1)])  # subscribe number 1
    worker.announce([CountDelta("1", "a", -1)])
    worker.announce([CountDelta("1", "a", 1)])  # number 2: the hub subscribes again
    hub_end.sendall(frames.ready_frame([("1", "a", 1)]))  # late, for the first
    await asyncio.sleep(0.05)
    assert not worker.ready("1", "a") and ready == []
    hub_end.sendall(frames.ready_frame([("1", "a", 2)]))
    await eventually(lambda: ready, 1.0)
    assert ready == [("1", "a")]
    assert worker.ready("1", "a")
    worker.announce([CountDelta("1", "a", -1)])
    assert not worker.ready("1", "a")
    hub_end.close()
    worker_end.close()


async def test_without_a_redis_hub_every_channel_is_ready() -> None:
    worker, hub_end, worker_end = await unattached(confirms=False)
    worker.announce([CountDelta("1", "a", 1)])
    assert worker.ready("1", "a")
    hub_end.close()
    worker_end.close()
