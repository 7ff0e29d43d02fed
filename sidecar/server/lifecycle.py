"""Stopping a process in order, within `shutdown.deadline`; the signals that start it.

A stop goes: shut every door (no new connections, no new publishes: a publisher still
connected gets 503), deliver what was accepted, close every client with 4200 (pusher-js
reconnects at once, to whoever serves next), give them the rest of the deadline to go, and
exit. Every wait is bounded by what is left of one deadline, taken when the signal came.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from sidecar.engine.broker import Broker
from sidecar.engine.relay import Relay
from sidecar.protocol.pusher import CloseCode

# Webhooks still waiting are sent for this long at most, within what is left of the deadline.
WEBHOOKS_CLOSE_TIMEOUT = 3.0


class Deadline:
    """A point in time some seconds from now; what is left of it, never negative."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self.at = clock() + seconds

    def remaining(self, keep: float = 0.0) -> float:
        """Seconds left, less `keep` (kept back for what must come after)."""
        return max(0.0, self.at - self._clock() - keep)


async def bounded(awaitable: Awaitable[object], seconds: float) -> bool:
    """Await for at most `seconds`; whether it finished (a timeout cancels it)."""
    try:
        await asyncio.wait_for(awaitable, timeout=max(seconds, 0.0))
    except TimeoutError:
        return False
    return True


async def drain_relay(relay: Relay, deadline: Deadline, keep: float = 0.0) -> None:
    """Publications the relay received are handed to their subscribers, then every client gets
    4200 and until the deadline (less `keep`) to go. The broker must be closed already: what it
    accepted has reached `relay.deliver`."""
    if relay.fanout is not None:
        # Delivery runs in slices over loop turns; a client closed before its turn in a slice
        # would lose an event that was accepted before the stop.
        await bounded(relay.fanout.wait_empty(), deadline.remaining(keep))
    relay.close_all(CloseCode.RECONNECT)
    await bounded(relay.wait_until_empty(), deadline.remaining(keep))
    relay.stop()


async def close_broker(broker: Broker, deadline: Deadline) -> None:
    """Until the broker has delivered what it accepted (or the deadline)."""
    with contextlib.suppress(Exception):
        await bounded(broker.close(), deadline.remaining())


def stop_signal() -> asyncio.Event:
    """Set on SIGTERM or SIGINT."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    return stopping


def run_loop(main: Coroutine[Any, Any, object]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main)
