"""The broker interface: publishers hand events in, the relay receives them for delivery.

`publish()` never waits for delivery: it hands the event over and returns, which is what lets the
publish API answer in microseconds whatever the number of subscribers. An in-memory broker
serves one process; a Redis broker takes its place for several processes or machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Publication:
    """One event for one or more channels of one app, as accepted from a publisher."""

    app_id: str
    channels: tuple[str, ...]
    name: str
    data: str
    socket_id: str | None = None  # the publisher's own connection, left out of the delivery


Deliver = Callable[[Publication], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None:
        """Begin receiving publications; `deliver` is called for each, on the event loop."""

    def publish(self, publication: Publication) -> None:
        """Hand a publication over. Returns at once; delivery happens later."""

    async def close(self) -> None:
        """Deliver what was already accepted, then stop."""
