"""The broker interface: publishers hand events in, the relay receives them for delivery.

Besides publications a broker carries channel state changes (sidecar/engine/broker/changes.py): who
subscribed and joined where, so that every process agrees on counts and presence members.

`publish()` never waits for delivery: it hands the event over and returns, which is what lets the
publish API answer in microseconds whatever the number of subscribers. An in-memory broker
serves one process; a Redis broker takes its place for several processes or machines.
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


Deliver = Callable[[Publication], None]
# A webhook-shaped event raised in a worker (client_event, cache_miss), for the process that
# sends webhooks: (app_id, {"name": ..., ...}).
Report = Callable[[str, dict[str, Any]], None]


class Broker(Protocol):
    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        """Begin receiving: `deliver` for each publication, `changed` for each batch of channel
        state changes (in the same one order as publications, everywhere), `reported` for
        reports from workers (where webhooks are sent from). All on the event loop."""

    def publish(self, publication: Publication) -> None:
        """Hand a publication over. Returns at once; delivery happens later."""

    def announce(self, changes: Sequence[Change]) -> None:
        """Hand changes over: every process, this one included, receives them in order."""

    def report(self, app_id: str, event: dict[str, Any]) -> None:
        """Pass an event to the process that sends webhooks (no order, no echo)."""

    async def close(self) -> None:
        """Deliver what was already accepted, then stop."""
