"""A worker's channel state changes, sent once per loop turn.

Subscribing and unsubscribing are frequent (a reconnect storm is thousands per second) and only
the net count matters: the deltas of one turn are summed per channel and leave in one batch.
Presence joins and leaves are kept one by one, in order: each join waits for its answer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from sidecar.engine.broker.changes import Change, CountDelta


class ChangeOutbox:
    def __init__(self, send: Callable[[list[Change]], None]) -> None:
        self._send = send
        self._counts: dict[tuple[str, str], int] = {}
        self._ordered: list[Change] = []
        self._scheduled = False

    def count(self, app_id: str, channel: str, delta: int) -> None:
        key = (app_id, channel)
        self._counts[key] = self._counts.get(key, 0) + delta
        self._schedule()

    def add(self, change: Change) -> None:
        self._ordered.append(change)
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        changes: list[Change] = [
            CountDelta(app_id, channel, delta)
            for (app_id, channel), delta in self._counts.items()
            if delta
        ]
        changes += self._ordered
        self._counts = {}
        self._ordered = []
        if changes:
            self._send(changes)
