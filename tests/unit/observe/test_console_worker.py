"""sidecar.observe.console_worker: a worker's taps go on and off as it is told, and what they
make leaves in batches, capped (the line that carries both: tests/unit/server/test_control.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.engine.broker.base import Publication
from sidecar.engine.relay import Relay
from sidecar.observe import console_worker
from sidecar.observe.console_worker import WorkerConsole
from sidecar.observe.probe import PublishCounter
from tests.support.relay_browser import browser_factory, started_relay, turns


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    async with started_relay() as r:
        yield r


class Sent:
    def __init__(self) -> None:
        self.batches: list[list[dict[str, Any]]] = []

    def __call__(self, items: list[dict[str, Any]]) -> None:
        self.batches.append(items)

    @property
    def items(self) -> list[dict[str, Any]]:
        return [i for batch in self.batches for i in batch]


async def until(predicate: Any, timeout: float = 2.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.01)


async def test_taps_are_none_until_switched_on_and_none_again_after(relay: Relay) -> None:
    counter = PublishCounter(relay.broker, source="api")
    sent = Sent()
    console = WorkerConsole(relay, counter, sent)
    browser = browser_factory(relay)
    browser()
    assert relay.tap is None and counter.tap is None
    console.switch(True)
    assert relay.tap is not None and counter.tap is not None
    one = browser()
    one.subscribe("news")
    counter.publish(Publication.of("1", ("news",), "signed", "d"))
    await turns()
    console.switch(False)
    assert relay.tap is None and counter.tap is None
    browser()
    await asyncio.sleep(console_worker.FLUSH_INTERVAL * 2)
    assert sent.batches == []  # switched off before the flush: the queue went with it
    console.switch(True)
    browser()
    await until(lambda: sent.batches)
    assert [i["kind"] for i in sent.items] == ["connected"]


async def test_items_leave_in_one_batch_per_interval_capped(
    relay: Relay, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(console_worker, "WORKER_RATE", 5)
    sent = Sent()
    console = WorkerConsole(relay, None, sent)
    console.switch(True)
    browser = browser_factory(relay)
    for _ in range(8):
        browser()
    await until(lambda: sent.batches)
    (batch,) = sent.batches
    assert [i["kind"] for i in batch] == ["connected"] * 5 + ["dropped"]
    assert batch[-1]["count"] == 3
