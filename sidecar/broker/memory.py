"""The in-memory broker: one process, delivery on the next turn of the event loop."""

from __future__ import annotations

import asyncio

from sidecar.broker.base import Deliver, Publication


class MemoryBroker:
    def __init__(self) -> None:
        self._deliver: Deliver | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending = 0
        self._idle = asyncio.Event()
        self._idle.set()

    async def start(self, deliver: Deliver) -> None:
        self._deliver = deliver
        self._loop = asyncio.get_running_loop()

    def publish(self, publication: Publication) -> None:
        if self._loop is None:
            raise RuntimeError("broker not started")
        # Deliver after the publisher's reply is written: call_soon runs once the handler's
        # current step (which writes the 200) is done.
        self._pending += 1
        self._idle.clear()
        self._loop.call_soon(self._run, publication)

    def _run(self, publication: Publication) -> None:
        try:
            assert self._deliver is not None
            self._deliver(publication)
        finally:
            self._pending -= 1
            if not self._pending:
                self._idle.set()

    async def close(self) -> None:
        await self._idle.wait()
