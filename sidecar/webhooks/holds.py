"""channel_vacated and member_removed wait a few seconds; a quick comeback cancels the pair.

A page reload or a network blip unsubscribes and resubscribes within a second or two; hosted
Pusher waits ~3 s before telling the app a channel emptied or a member left, so the app does not
see vacated/occupied (or removed/added) flicker. A channel_occupied (member_added) for the same
channel (channel and user) within the delay cancels the held event and is itself swallowed.
"""

from __future__ import annotations

from typing import Any

Event = dict[str, Any]

# The held kind -> the kind that cancels it.
HELD = {"channel_vacated": "channel_occupied", "member_removed": "member_added"}
CANCELLING = {cancel: held for held, cancel in HELD.items()}


def pair_key(event: Event) -> tuple[Any, ...]:
    """What a held event and the one that cancels it share: the channel (and the user)."""
    if event.get("name") in ("channel_vacated", "channel_occupied"):
        return ("channel", event.get("channel"))
    return ("member", event.get("channel"), event.get("user_id"))


class Holds:
    """Held events in arrival order: with one delay for all, also the order they fall due."""

    def __init__(self, delay: float, limit: int) -> None:
        self.delay = delay
        self.limit = limit
        self._held: dict[tuple[Any, ...], tuple[float, Event]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def add(self, event: Event, now: float) -> list[Event]:
        """Take an event; return what is to be passed on now (in order)."""
        name = event.get("name")
        if name in HELD:
            key = pair_key(event)
            # A second vacated with no occupied between replaces the first; popping first keeps
            # the dict in due order (the new entry goes to the end).
            self._held.pop(key, None)
            passed = []
            if len(self._held) >= self.limit:
                # Full (a mass disconnect): the oldest goes out early rather than being lost.
                oldest = next(iter(self._held))
                passed.append(self._held.pop(oldest)[1])
            self._held[key] = (now + self.delay, event)
            return passed
        if name in CANCELLING and self._held.pop(pair_key(event), None) is not None:
            return []
        return [event]

    def due(self, now: float) -> list[Event]:
        """Pop the held events whose delay has passed, oldest first."""
        out = []
        while self._held:
            key, (due, event) = next(iter(self._held.items()))
            if due > now:
                break
            del self._held[key]
            out.append(event)
        return out

    def next_due(self) -> float | None:
        if not self._held:
            return None
        return next(iter(self._held.values()))[0]

    def release_all(self) -> list[Event]:
        out = [event for _, event in self._held.values()]
        self._held.clear()
        return out
