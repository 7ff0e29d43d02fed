"""The pipe broker's wire format and stream splitting, and hub/worker over a real socketpair."""

from __future__ import annotations

import asyncio
import socket

from sidecar.broker.base import Publication
from sidecar.broker.pipe import (
    HubBroker,
    PublicationStream,
    WorkerBroker,
    decode_publication,
    encode_publication,
)


def wire(pub: Publication) -> bytes:
    return b"".join(encode_publication(pub))


def test_round_trip_keeps_every_field_and_the_data_literal() -> None:
    pub = Publication.of("7", ("a", "b"), "ev", 'he said "hi" \u00e9', socket_id="1.2")
    head, data = encode_publication(pub)
    assert data is pub.data_json  # the data literal is written as is, never copied
    assert decode_publication(head, data) == pub


def test_stream_splits_frames_across_any_chunking() -> None:
    pubs = [Publication.of("1", (f"c{i}",), "e", "x" * (i * 1000)) for i in range(5)]
    stream_bytes = b"".join(wire(p) for p in pubs)
    for chunk in (1, 7, 4096, len(stream_bytes)):
        got: list[Publication] = []
        stream = PublicationStream(lambda h, d, got=got: got.append(decode_publication(h, d)))
        for start in range(0, len(stream_bytes), chunk):
            stream.data_received(stream_bytes[start : start + chunk])
        assert got == pubs, chunk


def test_stream_reports_loss() -> None:
    lost: list[bool] = []
    stream = PublicationStream(lambda h, d: None, lambda: lost.append(True))
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
    stream = PublicationStream(lambda h, d: got.append(decode_publication(h, d)))
    stream.data_received(worker_end.recv(65536))
    assert [p.name for p in got] == ["one", "two"]
    await hub.close()
    worker_end.close()
