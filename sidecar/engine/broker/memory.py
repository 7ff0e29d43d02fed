"""The in-memory broker: one process, delivery on the next turn of the event loop.

The contract is Broker's (sidecar/engine/broker/base.py); here the event loop's queue is the one
order and the process is the whole cluster: its changes carry HUB_ORIGIN, no process is ever
gone (no OriginGone) and none joins late (no Reset).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from sidecar.engine.broker.base import HUB_ORIGIN, Deliver, OnReady, Publication, Report
from sidecar.engine.broker.changes import Change, OnChanges

# The only process: its changes come from the hub's own origin.
ORIGIN = HUB_ORIGIN


class MemoryBroker:
    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._changed: OnChanges | None = None
        self._reported: Report | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self.on_ready: OnReady | None = None  # never called: every channel is ready at once
        self.on_cached: Deliver | None = None  # never called: every event reaches the cache

    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        self.bind(deliver, changed, reported)

    def bind(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        """start() without awaiting, for a caller already on the loop (a relay of its own)."""
        self._deliver = deliver
        self._changed = changed
        self._reported = reported
        self._loop = asyncio.get_running_loop()

    def publish(self, publication: Publication) -> None:
        if self._deliver is None:
            raise RuntimeError("broker not started")
        self._later(self._deliver, publication)

    async def publish_confirmed(self, publication: Publication) -> None:
        self.publish(publication)

    def ready(self, app_id: str, channel: str) -> bool:
        return True

    def announce(self, changes: Sequence[Change]) -> None:
        if self._changed is not None:
            self._later(self._changed, ORIGIN, list(changes))
        elif self._loop is None:
            raise RuntimeError("broker not started")

    def report(self, app_id: str, event: dict[str, Any]) -> None:
        if self._reported is not None:
            self._reported(app_id, event)

    def _later(self, call: Callable[..., None], *args: Any) -> None:
        if self._loop is None:
            raise RuntimeError("broker not started")
        # Deliver after the publisher's reply is written: call_soon runs once the handler's
        # current step (which writes the 200) is done. Publications and changes share the
        # loop's one queue, so they keep the order they were handed over in.
        self._pending += 1
        self._idle.clear()
        self._loop.call_soon(self._run, call, args)

    def _run(self, call: Callable[..., None], args: tuple[Any, ...]) -> None:
        try:
            call(*args)
        finally:
            self._pending -= 1
            if not self._pending:
                self._idle.set()

    async def close(self) -> None:
        await self._idle.wait()
