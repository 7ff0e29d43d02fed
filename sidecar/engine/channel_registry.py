"""Which connections are subscribed to which channel, for one app."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sidecar.engine.connection import Connection


class ChannelRegistry:
    """channel name -> subscribed connections (a dict as an insertion-ordered set)."""

    __slots__ = ("_channels",)

    def __init__(self) -> None:
        self._channels: dict[str, dict[Connection, None]] = {}

    def subscribe(self, channel: str, conn: Connection) -> bool:
        """Add the subscription; True when the channel had no subscriber before (occupied)."""
        subscribers = self._channels.get(channel)
        if subscribers is None:
            self._channels[channel] = {conn: None}
            return True
        subscribers[conn] = None
        return False

    def unsubscribe(self, channel: str, conn: Connection) -> bool:
        """Remove the subscription; True when the channel has no subscriber left (vacated)."""
        subscribers = self._channels.get(channel)
        if subscribers is None or conn not in subscribers:
            return False
        del subscribers[conn]
        if not subscribers:
            del self._channels[channel]
            return True
        return False

    def subscribers(self, channel: str) -> dict[Connection, None] | None:
        return self._channels.get(channel)

    def count(self, channel: str) -> int:
        subscribers = self._channels.get(channel)
        return len(subscribers) if subscribers else 0

    def __len__(self) -> int:
        return len(self._channels)

    def __iter__(self) -> Iterator[str]:
        return iter(self._channels)
