"""sidecar.observe.worker_stats: the supervisor asks a worker for snapshots over a socketpair."""

from __future__ import annotations

import asyncio
import socket

from sidecar.observe.snapshot import ChannelCount, Snapshot, key
from sidecar.observe.worker_stats import WorkerStatsClient, serve_worker_stats


async def test_answers_come_back_in_order_and_say_whether_full() -> None:
    asked: list[bool] = []

    def snapshot(full: bool) -> Snapshot:
        asked.append(full)
        snap = Snapshot(counters={key("n"): len(asked)})
        if full:
            snap.channels = [ChannelCount("1", "x" * 100_000, 1)]  # a long answer, split
        return snap

    ours, theirs = socket.socketpair()
    await serve_worker_stats(theirs, snapshot)
    client = await WorkerStatsClient.connect(ours)
    answers = await asyncio.gather(client.ask(True), client.ask(False), client.ask(True))
    assert asked == [True, False, True]
    assert [a.counter("n") if a else None for a in answers] == [1, 2, 3]
    assert answers[0] is not None and len(answers[0].channels[0].channel) == 100_000
    assert answers[1] is not None and answers[1].channels == []
    client.close()


async def test_a_worker_that_never_answers_gives_none_after_the_timeout() -> None:
    ours, theirs = socket.socketpair()
    client = await WorkerStatsClient.connect(ours)
    assert await client.ask(False, timeout=0.05) is None
    # A late answer to the timed-out request is read and dropped, not given to the next one.
    theirs.sendall(b"\x00\x00\x00\x02{}")
    await asyncio.sleep(0.01)
    client.close()
    theirs.close()


async def test_a_worker_gone_gives_none_at_once() -> None:
    ours, theirs = socket.socketpair()
    client = await WorkerStatsClient.connect(ours)
    pending = asyncio.ensure_future(client.ask(False, timeout=5))
    await asyncio.sleep(0.01)
    theirs.close()
    assert await asyncio.wait_for(pending, 1) is None
    assert not client.connected
    assert await client.ask(False) is None
