"""The broker interface: publishers hand events in, the relay receives them for delivery.

The contract every broker keeps is stated on `Broker` below; an implementation's docstring says
only how it keeps it (sidecar/engine/broker/memory.py: one process; pipe.py: a hub and its
workers on one machine; a Redis broker: several machines).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from sidecar.engine.broker.changes import Change, OnChanges


@dataclass(frozen=True, slots=True)
class Publication:
    """One event for one or more channels of one app, as accepted from a publisher.

    `data_json` is the event's data already encoded as a JSON string literal (quotes included),
    which is how it sits inside every frame: encoded once where it was accepted, then carried
    between processes and spliced into each channel's frame without being decoded again.
    """

    app_id: str
    channels: tuple[str, ...]
    name: str
    data_json: bytes
    socket_id: str | None = None  # the publisher's own connection, left out of the delivery
    user_id: str | None = None  # a client event on a presence channel: who sent it
    # time.monotonic() where it was accepted, for publish-to-delivery latency. The monotonic
    # clock is the machine's, so it compares across this machine's processes (not machines).
    accepted_at: float = field(default_factory=time.monotonic, compare=False)

    @classmethod
    def of(
        cls,
        app_id: str,
        channels: tuple[str, ...],
        name: str,
        data: str,
        socket_id: str | None = None,
        user_id: str | None = None,
    ) -> Publication:
        return cls(app_id, channels, name, orjson.dumps(data), socket_id, user_id)

    @property
    def data(self) -> str:
        """The data as the string subscribers receive (decodes: for tests and tools)."""
        return orjson.loads(self.data_json)


class BrokerUnavailable(Exception):
    """A publication the broker could not take (Redis down or too slow): the publisher is told
    503, never 200 for an event that went nowhere. The message says why, without secrets."""


Deliver = Callable[[Publication], None]
# Called with (app_id, channel) once a channel held back by `ready()` is ready.
OnReady = Callable[[str, str], None]
# A webhook-shaped event raised in a worker (client_event, cache_miss), for the process that
# sends webhooks: (app_id, {"name": ..., ...}).
Report = Callable[[str, dict[str, Any]], None]
# Who handed a batch of changes in, as numbered by the process that orders them (the hub).
Origin = int
# The origin of changes the ordering process makes itself (terminate_connections, OriginGone),
# and of every change where one process is the whole cluster. Nodes are numbered from 1.
HUB_ORIGIN: Origin = 0


class Broker(Protocol):
    """How publications and channel state changes reach every process that holds subscribers.

    The ordering contract, which every implementation keeps and the relay relies on:

    1. **One total order per hub.** Publications (`publish`) and channel state changes
       (`announce`) are put in one sequence by the one place that orders them (the hub; the
       event loop for a single process). Every process started on the broker receives that
       same sequence, publications through `deliver` and changes through `changed`, in the
       same order, interleaved the same way. What one process handed over keeps its order.
       A process sees its own publications and changes come back (an echo): a presence join is
       answered only when it comes back, with the members the order gave it.
    2. **Origins numbered by the hub.** A batch of changes is handed over without an origin;
       the hub stamps it with the origin of the process it came from (`Origin`, 1, 2, ... in the
       order processes attach, a restarted process a new number; `HUB_ORIGIN` for its own), and
       `changed(origin, changes)` receives it so stamped. State is kept per origin so that a
       process's share can be released in one step.
    3. **`OriginGone(origin)`** is put in the order by the hub, once, when a process is lost
       (not at shutdown: a stop must not look like every channel vacated). After it, nothing
       more from that origin is in the order.
    4. **`Reset(snapshot)`** is the first change a process receives when it starts while others
       run: the whole state the order had made up to there, then everything after it.
    5. **Hand-over never waits.** `publish` and `announce` return at once (delivery happens on a
       later loop turn, after the publisher's reply is written); `close` returns once what was
       accepted before it was delivered (or handed on to the hub).
    6. **Reports** (`report`) are outside the order: a worker's webhook-shaped events reach the
       process that sends webhooks, not echoed, not ordered with the rest.

    The checks: tests/unit/engine/broker/test_contract.py runs one suite over every
    implementation.
    """

    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        """Begin receiving: `deliver` for each publication, `changed` for each batch of channel
        state changes (in the one order, with its origin), `reported` for reports from workers
        (where webhooks are sent from). All called on the event loop."""

    def publish(self, publication: Publication) -> None:
        """Hand a publication over. Returns at once; delivery happens later, in the order."""

    async def publish_confirmed(self, publication: Publication) -> None:
        """`publish`, for a publisher waiting for its answer: returns once the publication is
        in the order (with Redis: Redis took it), or raises `BrokerUnavailable` within about a
        second. Memory and pipe: `publish`, then return."""

    def announce(self, changes: Sequence[Change]) -> None:
        """Hand changes over: every process, this one included, receives them in the order."""

    def ready(self, app_id: str, channel: str) -> bool:
        """Whether a subscription to `channel` made now can be answered at once: True unless
        the node has still to subscribe to it in Redis; then `on_ready(app_id, channel)` is
        called when it has (the relay holds `subscription_succeeded` until then)."""

    on_ready: OnReady | None
    # With Redis: a cache channel's last event for the relay to keep, not deliver (the node
    # starts hearing a channel that had events before). None elsewhere.
    on_cached: Deliver | None

    def report(self, app_id: str, event: dict[str, Any]) -> None:
        """Pass an event to the process that sends webhooks (no order, no echo)."""

    async def close(self) -> None:
        """Deliver what was already accepted, then stop."""
