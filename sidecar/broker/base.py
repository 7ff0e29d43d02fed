"""The broker interface: publishers hand events in, the relay receives them for delivery.

`publish()` never waits for delivery: it hands the event over and returns, which is what lets the
publish API answer in microseconds whatever the number of subscribers. An in-memory broker
serves one process; a Redis broker takes its place for several processes or machines.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import orjson


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

    @classmethod
    def of(
        cls,
        app_id: str,
        channels: tuple[str, ...],
        name: str,
        data: str,
        socket_id: str | None = None,
    ) -> Publication:
        return cls(app_id, channels, name, orjson.dumps(data), socket_id)

    @property
    def data(self) -> str:
        """The data as the string subscribers receive (decodes: for tests and tools)."""
        return orjson.loads(self.data_json)


Deliver = Callable[[Publication], None]


class Broker(Protocol):
    async def start(self, deliver: Deliver) -> None:
        """Begin receiving publications; `deliver` is called for each, on the event loop."""

    def publish(self, publication: Publication) -> None:
        """Hand a publication over. Returns at once; delivery happens later."""

    async def close(self) -> None:
        """Deliver what was already accepted, then stop."""
