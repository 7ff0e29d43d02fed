"""A worker's end of the debug console (sidecar/observe/console.py).

The supervisor has the console pages; connections and subscriptions happen here. While the
supervisor says a console is open (a message on the worker's control line,
sidecar/server/control.py), the relay's tap and the signed API's are on; what they make waits in
a queue of its own (bounded, capped at WORKER_RATE items a second, drops counted) and goes to
the supervisor every FLUSH_INTERVAL, in one message on that line. When the last page closes,
the taps are None again and the queue is dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from sidecar.engine.relay import Relay
from sidecar.observe.console import VIEWER_RATE, Item, ItemQueue, ItemTap
from sidecar.observe.probe import PublishCounter

# Twice what one page is shown: the pages' own caps decide, this only bounds the pipe.
WORKER_RATE = 2 * VIEWER_RATE
WORKER_QUEUE = 1000
# Items leave at most this often: one frame per interval, however many loop turns they span.
FLUSH_INTERVAL = 0.05


class WorkerConsole:
    def __init__(
        self,
        relay: Relay,
        publishes: PublishCounter | None,
        send: Callable[[list[Item]], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.relay = relay
        self.publishes = publishes
        self.send = send
        self._clock = clock
        self._queue: ItemQueue | None = None
        self._flush: asyncio.TimerHandle | None = None

    @property
    def on(self) -> bool:
        return self._queue is not None

    def switch(self, on: bool) -> None:
        if on == self.on:
            return
        if on:
            self._queue = ItemQueue(WORKER_RATE, WORKER_QUEUE, self._clock())
            tap = ItemTap(self._add)
            self.relay.tap = tap
            if self.publishes is not None:
                self.publishes.tap = tap.publication
            return
        self.relay.tap = None
        if self.publishes is not None:
            self.publishes.tap = None
        self._queue = None
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None

    def _add(self, item: Item) -> None:
        queue = self._queue
        if queue is None:
            return
        queue.push(item, self._clock())
        if self._flush is None:
            loop = asyncio.get_running_loop()
            self._flush = loop.call_later(FLUSH_INTERVAL, self._send)

    def _send(self) -> None:
        self._flush = None
        if self._queue is not None and len(self._queue):
            self.send(self._queue.take())
