"""Stopping a process in order, within `shutdown.deadline`; the signals that start it.

A stop goes: shut every door (no new connections, no new publishes: a publisher still
connected gets 503), deliver what was accepted, close every client with 4200 (pusher-js
reconnects at once, to whoever serves next), give them the rest of the deadline to go, and
exit. Every wait is bounded by what is left of one deadline, taken when the signal came.

The parts of a process register what they do at each step with its `StopSequence`, and what
they release at the end; the sequence runs the steps in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
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


class Step(enum.IntEnum):
    """The steps of a stop, in their order."""

    SHUT = 1  # no new connections nor publishes
    HAND_OVER = 2  # what was accepted is delivered: the broker closes
    LET_GO = 3  # every client gets 4200 and the rest of the deadline; webhooks go out


# What a part does at a step: at once (None), or an awaitable bounded by the deadline it is given.
StopAction = Callable[[Deadline], Awaitable[object] | None]
Release = Callable[[], Awaitable[object] | None]


class StopSequence:
    """What the parts of a process do at each step of its stop, and release at the end.

    At a step, every action registered for it is called in the order registered (what an
    action does at once, it has done before the next is called); what they return is awaited
    together, and the next step starts once all of it is done. Every action is given the one
    deadline of the stop and bounds its waits by it."""

    def __init__(self) -> None:
        self._actions: dict[Step, list[StopAction]] = {step: [] for step in Step}
        self._releases: list[Release] = []

    def at(self, step: Step, action: StopAction) -> None:
        self._actions[step].append(action)

    def on_release(self, release: Release) -> None:
        """`release` runs at the end of the process, stopped or failed: the last registered
        first (as things are let go of in the reverse order they were taken)."""
        self._releases.append(release)

    async def run(self, deadline: Deadline) -> None:
        for step in Step:
            pending = [action(deadline) for action in self._actions[step]]
            await asyncio.gather(*(p for p in pending if p is not None))

    async def release(self) -> None:
        """One after the other; an error in one does not keep the others from running."""
        errors: list[BaseException] = []
        while self._releases:
            try:
                done = self._releases.pop()()
                if done is not None:
                    await done
            except Exception as exc:
                errors.append(exc)
        if errors:
            raise errors[0]


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


# Signals: this is the one module that handles them. SIGTERM stops a process; SIGINT (Ctrl-C)
# too, but in a worker: it reaches the whole process group, and the supervisor decides. SIGHUP
# reloads the single process and the supervisor (which tells its workers over their pipes);
# a worker ignores it, as any process does while it starts (ignore_hangup).


def ignore_hangup() -> None:
    """Before the loop: a SIGHUP while starting (a deploy script reloading early) or to a
    worker (a terminal's hangup reaches the whole process group) is not an end."""
    signal.signal(signal.SIGHUP, signal.SIG_IGN)


def stop_signal(interrupt: bool = True) -> asyncio.Event:
    """Set on SIGTERM, or SIGINT (`interrupt`; otherwise SIGINT is ignored)."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    if interrupt:
        loop.add_signal_handler(signal.SIGINT, stopping.set)
    else:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    return stopping


def reload_signal(reload: Callable[[], Coroutine[Any, Any, object]]) -> None:
    """SIGHUP runs `reload` in a task of its own, from now on."""
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGHUP, lambda: loop.create_task(reload()))


def run_loop(main: Coroutine[Any, Any, object]) -> None:
    try:
        import uvloop

        uvloop.run(main)
    except ImportError:  # pragma: no cover - uvloop is a dependency where it builds
        asyncio.run(main)
