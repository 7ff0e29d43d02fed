"""The debug console's feed: what happens, as items, to each open console page. No I/O.

Items are small JSON-ready dicts made where something happens: a publication (with the
first PREVIEW_BYTES of its data), a connection opened or closed, a channel joined or left, a
channel occupied or vacated, a presence member added or removed. Made only while a console
is open: until then every tap is None (PublishCounter.tap, Relay.tap,
ChannelState.on_transitions, a worker's), so the relay formats and copies nothing.

Each open page is a `Viewer` with its own `ItemQueue`: bounded, rate-capped, oldest dropped
first, every drop counted and shown in the stream as a `{"kind": "dropped", "count": n}`
marker. A page that reads slowly only loses its own items; the relay never waits for it.

With workers, connections and subscriptions happen in the workers: the supervisor tells them
over their pipe to turn their taps on or off (sidecar/engine/broker/pipe.py), and each sends its
items back on the same pipe, capped by a queue of its own (sidecar/observe/console_worker.py).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import orjson

from sidecar.engine.broker.base import Publication
from sidecar.engine.transitions import MemberAdded, MemberRemoved, Occupied, Transition, Vacated

log = logging.getLogger("sidecar.observe")

Item = dict[str, Any]
# Bytes of an event's data shown in the console: enough to recognise a payload, and a bound on
# what an item costs to make and send whatever the event's size (8 MiB by default).
PREVIEW_BYTES = 1024
# A JSON string literal takes at most 6 bytes per byte of text it decodes to (`\u0001`):
# decoding this many bytes of the literal always yields a full preview.
_LITERAL_BYTES_PER_BYTE = 6
# Items a second a console page is sent at most (a person reads far fewer), and the queue it
# may fall behind by (five seconds of that) before its oldest are dropped.
VIEWER_RATE = 100
VIEWER_QUEUE = 500
# Where a publication came from.
SOURCES = ("unix", "api", "client", "console")


def payload_preview(data_json: bytes, limit: int = PREVIEW_BYTES) -> tuple[str, bool]:
    """The event's data (a JSON string literal, quotes included) as text of at most `limit`
    UTF-8 bytes, and whether it was cut. A large literal is never decoded whole."""
    cut = len(data_json) > limit * _LITERAL_BYTES_PER_BYTE + 2
    if cut:
        literal = data_json[: limit * _LITERAL_BYTES_PER_BYTE + 1]
        # Cut mid-escape or mid-character: shorten until it closes as a valid literal (an
        # escape is at most 12 bytes, a surrogate pair).
        for end in range(len(literal), max(1, len(literal) - 13), -1):
            with contextlib.suppress(orjson.JSONDecodeError):
                text = orjson.loads(literal[:end] + b'"')
                break
        else:
            return "", True
    else:
        text = orjson.loads(data_json)
    encoded = text.encode()
    if len(encoded) <= limit:
        return text, cut
    return encoded[:limit].decode("utf-8", "ignore"), True


def event_item(publication: Publication, source: str, now: float) -> Item:
    preview, truncated = payload_preview(publication.data_json)
    item: Item = {
        "kind": "event",
        "t": now,
        "app": publication.app_id,
        "channels": list(publication.channels),
        "event": publication.name,
        "source": source,
        "size": len(publication.data_json) - 2,  # as the dashboard counts: the literal's
        "data": preview,
        "truncated": truncated,
    }
    if publication.socket_id is not None:
        item["socket_id"] = publication.socket_id
    if publication.user_id is not None:
        item["user_id"] = publication.user_id
    return item


def transition_item(transition: Transition, now: float) -> Item | None:
    """Occupied, vacated, member added or removed (cluster-wide, in the one shared order)."""
    match transition:
        case Occupied(app_id, channel):
            return {"kind": "occupied", "t": now, "app": app_id, "channel": channel}
        case Vacated(app_id, channel):
            return {"kind": "vacated", "t": now, "app": app_id, "channel": channel}
        case MemberAdded(app_id, channel, user_id, _, socket_id):
            return {
                "kind": "member_added",
                "t": now,
                "app": app_id,
                "channel": channel,
                "user_id": user_id,
                "socket_id": socket_id,
            }
        case MemberRemoved(app_id, channel, user_id):
            return {
                "kind": "member_removed",
                "t": now,
                "app": app_id,
                "channel": channel,
                "user_id": user_id,
            }
    return None


def dropped_marker(count: int) -> Item:
    return {"kind": "dropped", "count": count}


class ItemQueue:
    """Items waiting to be sent: at most `rate` a second (a token bucket of one second's
    worth) and `size` in all (the oldest go first). Drops are counted and stand in the
    stream where they happened as one marker per run of drops."""

    def __init__(self, rate: int, size: int, now: float) -> None:
        self.rate = rate
        self.size = size
        self.dropped = 0  # in all, since the queue was made
        self._tokens = float(rate)
        self._at = now
        self._items: deque[Item] = deque()
        self._lost_in_front = 0  # dropped off the front since the last take()

    def __len__(self) -> int:
        return len(self._items)

    def push(self, item: Item, now: float) -> bool:
        """Queue `item` (a marker from elsewhere adds its count); False when it was dropped."""
        if item["kind"] == "dropped":
            self._note_dropped(item["count"])
            return True
        self._tokens = min(float(self.rate), self._tokens + (now - self._at) * self.rate)
        self._at = now
        if self._tokens < 1:
            self._note_dropped(1)
            return False
        self._tokens -= 1
        self._append(item)
        return True

    def take(self) -> list[Item]:
        """Everything queued, oldest first, behind a marker for what fell off the front."""
        items = list(self._items)
        self._items.clear()
        if self._lost_in_front:
            items.insert(0, dropped_marker(self._lost_in_front))
            self._lost_in_front = 0
        return items

    def _note_dropped(self, count: int) -> None:
        self.dropped += count
        items = self._items
        if items and items[-1]["kind"] == "dropped":
            items[-1]["count"] += count  # our own marker (never one we were given)
        else:
            self._append(dropped_marker(count))

    def _append(self, item: Item) -> None:
        items = self._items
        if len(items) >= self.size:
            oldest = items.popleft()
            if oldest["kind"] == "dropped":
                self._lost_in_front += oldest["count"]
            else:
                self._lost_in_front += 1
                self.dropped += 1
        items.append(item)


class Viewer:
    """One open console page: what it asked to see, and its queue."""

    def __init__(self, channel_filter: str, now: float, rate: int, size: int) -> None:
        self.channel_filter = channel_filter
        self.queue = ItemQueue(rate, size, now)
        # Set by the page's stream: called when there is something to send.
        self.wake: Callable[[], None] | None = None
        self.closed = False  # the sidecar is stopping: the stream ends

    def wants(self, item: Item) -> bool:
        """With a filter, only items on a channel whose name contains it (and drop markers)."""
        wanted = self.channel_filter
        if not wanted or item["kind"] == "dropped":
            return True
        channel = item.get("channel")
        if channel is not None:
            return wanted in channel
        return any(wanted in c for c in item.get("channels", ()))

    def offer(self, item: Item, now: float) -> None:
        if self.wants(item):
            self.queue.push(item, now)
            if self.wake is not None:
                self.wake()


class ItemTap:
    """The relay's tap (sidecar.engine.tap.RelayTap) and a publish API's: each happening made
    into an item and handed to `sink`."""

    def __init__(self, sink: Callable[[Item], None], wall: Callable[[], float] = time.time):
        self.sink = sink
        self.wall = wall

    def opened(self, app_id: str, socket_id: str) -> None:
        self.sink({"kind": "connected", "t": self.wall(), "app": app_id, "socket_id": socket_id})

    def closed(self, app_id: str, socket_id: str, code: int, channels: int) -> None:
        self.sink(
            {
                "kind": "disconnected",
                "t": self.wall(),
                "app": app_id,
                "socket_id": socket_id,
                "code": code,
                "subscriptions": channels,  # not "channels": that names an event's
            }
        )

    def subscribed(self, app_id: str, socket_id: str, channel: str) -> None:
        self._channel_item("subscribed", app_id, socket_id, channel)

    def unsubscribed(self, app_id: str, socket_id: str, channel: str) -> None:
        self._channel_item("unsubscribed", app_id, socket_id, channel)

    def _channel_item(self, kind: str, app_id: str, socket_id: str, channel: str) -> None:
        item = {"kind": kind, "t": self.wall(), "app": app_id, "channel": channel}
        item["socket_id"] = socket_id
        self.sink(item)

    def client_event(self, publication: Publication) -> None:
        self.sink(event_item(publication, "client", self.wall()))

    def publication(self, publication: Publication, source: str) -> None:
        """A publish API's tap (PublishCounter.tap)."""
        self.sink(event_item(publication, source, self.wall()))


Switch = Callable[[bool], None]


class ConsoleFeed:
    """The open console pages of this process (the supervisor's, or the single process's),
    and the switches that turn the taps on with the first page and off after the last."""

    def __init__(
        self,
        rate: int = VIEWER_RATE,
        size: int = VIEWER_QUEUE,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.rate = rate
        self.size = size
        self.viewers: set[Viewer] = set()
        self.switches: list[Switch] = []
        self._clock = clock
        self.items = ItemTap(self.add, wall)  # the relay's tap, where the relay is local
        self._wall = wall
        self._label: str | None = None

    @property
    def active(self) -> bool:
        return bool(self.viewers)

    def open(self, channel_filter: str = "") -> Viewer:
        viewer = Viewer(channel_filter, self._clock(), self.rate, self.size)
        self.viewers.add(viewer)
        if len(self.viewers) == 1:
            self._switch(True)
        return viewer

    def close(self, viewer: Viewer) -> None:
        if viewer in self.viewers:
            self.viewers.discard(viewer)
            if not self.viewers:
                self._switch(False)

    def shutdown(self) -> None:
        """Every page's stream ends (the sidecar is stopping)."""
        for viewer in self.viewers:
            viewer.closed = True
            if viewer.wake is not None:
                viewer.wake()

    def _switch(self, on: bool) -> None:
        for switch in self.switches:
            try:
                switch(on)
            except Exception:  # one tap's bug must not leave the others in the wrong state
                log.exception("console tap switch failed")

    # What happens ----------------------------------------------------------------------------

    def add(self, item: Item) -> None:
        now = self._clock()
        for viewer in self.viewers:
            viewer.offer(item, now)

    def add_all(self, items: Iterable[Item], worker: int | None = None) -> None:
        """Items sent by a worker (tagged with its id), markers of its own drops included."""
        for item in items:
            if worker is not None and item["kind"] != "dropped":
                item["worker"] = worker
            self.add(item)

    def publication(self, publication: Publication, source: str) -> None:
        """A publish API's tap (PublishCounter.tap)."""
        self.add(event_item(publication, self._label or source, self._wall()))

    def transitions(self, transitions: list[Transition]) -> None:
        """The webhook-sending channel state's tap (ChannelState.on_transitions)."""
        now = self._wall()
        for transition in transitions:
            item = transition_item(transition, now)
            if item is not None:
                self.add(item)

    @contextlib.contextmanager
    def labelled(self, source: str) -> Iterator[None]:
        """Publications tapped inside are shown as from `source`: the console's own form
        publishes through the Unix socket's API (the same checks, gate and counters), and
        is shown as the console's. Publishing is synchronous, so nothing else gets in."""
        self._label = source
        try:
            yield
        finally:
            self._label = None
