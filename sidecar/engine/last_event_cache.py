"""The last event of each cache channel, for new subscribers. No I/O; time is passed in.

Every worker receives every publication, so each keeps its own copy and answers its own
subscribers without asking anyone. The copy is bounded twice: an entry lives `ttl` seconds
after it was published (hosted Pusher keeps a cached event 30 minutes), and all entries
together hold at most `max_bytes` of event data (the oldest go first), since one event may
be megabytes. The data literal is the publication's own bytes: caching copies nothing.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import NamedTuple


class CachedEvent(NamedTuple):
    name: str
    data_json: bytes  # the JSON string literal, as spliced into frames
    stored_at: float


class LastEventCache:
    def __init__(self, ttl: float, max_bytes: int) -> None:
        self.ttl = ttl
        self.max_bytes = max_bytes
        self._entries: OrderedDict[tuple[str, str], CachedEvent] = OrderedDict()
        self._bytes = 0

    def store(self, app_id: str, channel: str, name: str, data_json: bytes, now: float) -> None:
        key = (app_id, channel)
        old = self._entries.pop(key, None)
        if old is not None:
            self._bytes -= len(old.data_json)
        if len(data_json) > self.max_bytes:
            return  # bigger than the whole cache: a miss is better than evicting everything
        self._entries[key] = CachedEvent(name, data_json, now)
        self._bytes += len(data_json)
        while self._bytes > self.max_bytes:
            self._drop_oldest()

    def get(self, app_id: str, channel: str, now: float) -> CachedEvent | None:
        entry = self._entries.get((app_id, channel))
        if entry is None:
            return None
        if now - entry.stored_at >= self.ttl:
            self._bytes -= len(self._entries.pop((app_id, channel)).data_json)
            return None
        return entry

    def expire(self, now: float) -> None:
        """Drop what outlived the TTL: entries are in publication order, oldest first."""
        while self._entries:
            entry = next(iter(self._entries.values()))
            if now - entry.stored_at < self.ttl:
                break
            self._drop_oldest()

    def _drop_oldest(self) -> None:
        _, entry = self._entries.popitem(last=False)
        self._bytes -= len(entry.data_json)

    @property
    def bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._entries)
