"""sidecar.engine.outbox: one batch of changes per loop turn, counts netted per channel."""

from __future__ import annotations

import asyncio

from sidecar.engine.broker.changes import Change, CountDelta, MemberJoin, MemberLeave
from sidecar.engine.outbox import ChangeOutbox


async def test_one_batch_per_turn_with_net_counts_and_ordered_joins() -> None:
    sent: list[list[Change]] = []
    outbox = ChangeOutbox(sent.append)
    outbox.count("1", "news", 1)
    outbox.add(MemberJoin("1", "presence-a", "1.1", "ann"))
    outbox.count("1", "news", 1)
    outbox.count("1", "gone", 1)
    outbox.count("1", "gone", -1)  # on and off in one turn: nothing to say
    outbox.add(MemberLeave("1", "presence-a", "1.1"))
    assert sent == []
    await asyncio.sleep(0)
    assert sent == [
        [
            CountDelta("1", "news", 2),
            MemberJoin("1", "presence-a", "1.1", "ann"),
            MemberLeave("1", "presence-a", "1.1"),
        ]
    ]
    await asyncio.sleep(0)
    assert len(sent) == 1  # nothing new: nothing sent


async def test_a_turn_with_only_netted_counts_sends_nothing() -> None:
    sent: list[list[Change]] = []
    outbox = ChangeOutbox(sent.append)
    outbox.count("1", "news", 1)
    outbox.count("1", "news", -1)
    await asyncio.sleep(0)
    assert sent == []
