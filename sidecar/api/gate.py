"""The door of a publish API: open while the process serves, shut the moment it stops.

A stopping sidecar delivers every publication it accepted before its clients get 4200; a
publication it accepted after that would reach nobody. So the API's broker sits behind this
gate, and once shut, a publish or a terminate_connections is refused with 503 (a publisher
retries, and reaches the restarted process) rather than answered 200 and lost.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sidecar.engine.broker.base import Broker, Publication
from sidecar.engine.broker.changes import Change
from sidecar.http_glue import ApiError

SHUTTING_DOWN = "shutting down: not accepting publishes; retry shortly"


class PublishGate:
    """Stands in front of a broker for a publish API; `shut()` refuses from then on."""

    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self.open = True

    def shut(self) -> None:
        self.open = False

    def publish(self, publication: Publication) -> None:
        if not self.open:
            raise ApiError(503, SHUTTING_DOWN)
        self.broker.publish(publication)

    async def publish_confirmed(self, publication: Publication) -> None:
        if not self.open:
            raise ApiError(503, SHUTTING_DOWN)
        await self.broker.publish_confirmed(publication)

    def announce(self, changes: Sequence[Change]) -> None:
        if not self.open:
            raise ApiError(503, SHUTTING_DOWN)
        self.broker.announce(changes)

    def __getattr__(self, name: str) -> Any:
        # What else a broker offers (report, start, close) is the broker's own.
        return getattr(self.broker, name)
