"""What the relay tells a debug console, when one is open (sidecar/observe/console.py).

The relay holds `Relay.tap`: None while no console is open, so each hook costs one attribute
test, and only where a connection opens or closes, a channel is joined or left, or a client
event is accepted: never per delivery.
"""

from __future__ import annotations

from typing import Protocol

from sidecar.engine.broker.base import Publication


class RelayTap(Protocol):
    def opened(self, app_id: str, socket_id: str) -> None:
        """A connection was established."""

    def closed(self, app_id: str, socket_id: str, code: int, channels: int) -> None:
        """A connection is gone (`code`: its close code), leaving `channels` subscriptions."""

    def subscribed(self, app_id: str, socket_id: str, channel: str) -> None:
        """A connection is in a channel (a presence join once accepted)."""

    def unsubscribed(self, app_id: str, socket_id: str, channel: str) -> None:
        """A connection left a channel it was in (not when it closes: see `closed`)."""

    def client_event(self, publication: Publication) -> None:
        """A client event was accepted and handed to the broker."""
