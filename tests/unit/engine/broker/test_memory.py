"""sidecar.engine.broker.memory: one process, delivery on the next loop turn, in order."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from sidecar.engine.broker.base import Publication
from sidecar.engine.broker.changes import CountDelta
from sidecar.engine.broker.memory import MemoryBroker


def pub(n: int, app_id: str = "1") -> Publication:
    return Publication.of(app_id, ("news",), f"event-{n}", str(n))


async def started() -> tuple[MemoryBroker, list[Publication]]:
    delivered: list[Publication] = []
    broker = MemoryBroker()
    await broker.start(delivered.append)
    return broker, delivered


async def test_publish_before_start_raises() -> None:
    broker = MemoryBroker()
    with pytest.raises(RuntimeError, match="not started"):
        broker.publish(pub(1))


async def test_publish_returns_before_delivery() -> None:
    broker, delivered = await started()
    broker.publish(pub(1))
    assert delivered == []  # handed over, not delivered yet


async def test_delivery_happens_on_the_next_loop_turn_in_order() -> None:
    broker, delivered = await started()
    publications = [pub(n) for n in range(5)]
    for p in publications:
        broker.publish(p)
    await asyncio.sleep(0)
    assert delivered == publications
    assert all(a is b for a, b in zip(delivered, publications, strict=True))


async def test_deliver_runs_on_the_event_loop_thread() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Any] = []
    broker = MemoryBroker()
    await broker.start(lambda p: seen.append(asyncio.get_running_loop()))
    broker.publish(pub(1))
    await asyncio.sleep(0)
    assert seen == [loop]


async def test_close_with_nothing_pending_returns_at_once() -> None:
    broker, _ = await started()
    await asyncio.wait_for(broker.close(), timeout=0.5)


async def test_close_waits_until_accepted_publications_were_delivered() -> None:
    broker, delivered = await started()
    for n in range(3):
        broker.publish(pub(n))
    closing = asyncio.ensure_future(broker.close())
    assert not closing.done()
    await asyncio.wait_for(closing, timeout=1)
    assert [p.name for p in delivered] == ["event-0", "event-1", "event-2"]


async def test_close_waits_for_a_publication_accepted_after_close_began() -> None:
    broker, delivered = await started()
    broker.publish(pub(1))
    closing = asyncio.ensure_future(broker.close())
    broker.publish(pub(2))  # accepted before close() got to look: it must be delivered too
    await asyncio.wait_for(closing, timeout=1)
    assert [p.name for p in delivered] == ["event-1", "event-2"]


async def test_a_deliver_that_raises_does_not_block_close() -> None:
    loop = asyncio.get_running_loop()
    errors: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: errors.append(context))
    delivered: list[Publication] = []

    def deliver(p: Publication) -> None:
        if p.name == "event-1":
            raise ValueError("boom")
        delivered.append(p)

    try:
        broker = MemoryBroker()
        await broker.start(deliver)
        for n in range(3):
            broker.publish(pub(n))
        await asyncio.wait_for(broker.close(), timeout=1)
    finally:
        loop.set_exception_handler(previous)
    assert [p.name for p in delivered] == ["event-0", "event-2"]  # the others still delivered
    assert len(errors) == 1
    assert isinstance(errors[0]["exception"], ValueError)


async def test_changes_come_back_in_order_with_publications_from_origin_0() -> None:
    seen: list[object] = []
    broker = MemoryBroker()
    await broker.start(lambda p: seen.append(p.name), lambda o, c: seen.append((o, c)))
    broker.publish(pub(1))
    broker.announce([CountDelta("1", "news", 1)])
    broker.publish(pub(2))
    assert seen == []
    await broker.close()
    assert seen == ["event-1", (0, [CountDelta("1", "news", 1)]), "event-2"]


async def test_reports_go_straight_to_the_observer() -> None:
    reports: list[tuple[str, dict[str, Any]]] = []
    broker = MemoryBroker()
    await broker.start(lambda p: None, None, lambda a, e: reports.append((a, e)))
    broker.report("1", {"name": "cache_miss", "channel": "cache-x"})
    assert reports == [("1", {"name": "cache_miss", "channel": "cache-x"})]


async def test_announce_before_start_raises() -> None:
    with pytest.raises(RuntimeError, match="not started"):
        MemoryBroker().announce([CountDelta("1", "news", 1)])
