"""Everything a node's hub sends to Redis, in one order, a round trip per batch.

One task takes what is waiting and sends it as a round: first the subscriptions the round
needs (awaited until Redis confirmed them, then the workers that asked are told READY), then
every PUBLISH of the round in one pipeline, then the unsubscriptions of channels nobody on the
node wants any more. Rounds never overlap, so what the hub handed over reaches Redis in the
order it was handed over, and a batch that needs a channel is published only once the node
hears that channel.

While the link is down, publications waiting are refused (their publishers get 503) and
changes stay, in order, up to MAX_KEPT_BATCHES, to be sent once the link is back. A round whose
answer did not come may still have reached Redis (a paused Redis runs what it had read once it
resumes): a batch of changes sent again keeps the number it was first sent with, and the
receivers drop a number they have already applied (redis.py: `_on_log`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from sidecar.engine.broker.base import BrokerUnavailable
from sidecar.engine.broker.local_channels import Key, Needs
from sidecar.engine.broker.redis_link import LinkDown, RedisLink

# Batches of changes kept while Redis is away; past it the oldest go (the node's Share after
# the outage puts its own state right; what its workers waited for then never comes back).
MAX_KEPT_BATCHES = 10_000
# A round that failed is tried again after this long (the link decides whether it is up).
RETRY_PAUSE = 0.05


def numbered_message(prefix: bytes, seq: int, body: bytes) -> bytes:
    """A batch for the log as it is published: `prefix + seq + b" " + body` (redis.py reads
    it back in _on_log)."""
    return b"%s%d %s" % (prefix, seq, body)


@dataclass
class Outgoing:
    """One batch: its PUBLISHes, and what it needs of the node's subscriptions."""

    messages: list[tuple[bytes, bytes]]
    needs: Needs | None = None
    done: asyncio.Future[None] | None = None  # a publisher (or a worker's ACK) waits for it
    sets: list[tuple[bytes, bytes]] | None = None  # cache channels' last events (SET, PX)
    # A batch of changes for the log: numbered when first sent (`seq`), its message then
    # `prefix + seq + b" " + body`, the same if it has to be sent again.
    numbered: tuple[bytes, bytes, bytes] | None = None  # (log channel, prefix, body)
    seq: int = 0

    @property
    def is_changes(self) -> bool:
        """A batch for the log: kept while the link is down (publications are refused)."""
        return self.numbered is not None


class RedisSender:
    def __init__(
        self,
        link: RedisLink,
        channel_of: Callable[[str, str], bytes],
        wanted: Callable[[Key], bool],
        say_ready: Callable[[int, list[tuple[str, str, int]]], None],
        cache_key: Callable[[str, str], bytes | None],
        say_cached: Callable[[list[bytes]], None],
    ) -> None:
        self.link = link
        self._channel_of = channel_of
        self._cache_key = cache_key  # None: not a cache channel
        self._say_cached = say_cached  # last events kept in Redis, to the workers
        self.cache_ttl_ms = 1_800_000
        self._wanted = wanted  # whether the node still has subscribers for a channel
        self._say_ready = say_ready  # (origin, [(app_id, channel, serial)]) to that worker
        self._outgoing: deque[Outgoing] = deque()
        self._wake = asyncio.Event()
        self.idle = asyncio.Event()  # nothing waiting to be sent
        self.idle.set()
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0  # publications refused, changes given up
        self.last_seq = 0  # the number of the node's latest batch of changes sent

    def start(self) -> None:
        self._task = asyncio.create_task(self._send(), name="redis-sender")

    async def stop(self, drain: float = 0.0) -> None:
        """Stop, after up to `drain` seconds for what waits to go out (if the link is up)."""
        if drain > 0 and self._outgoing and self.link.up:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), drain)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def wake(self) -> None:
        self._wake.set()

    def push(self, item: Outgoing) -> None:
        if item.is_changes and len(self._outgoing) >= MAX_KEPT_BATCHES:
            lost = self._outgoing.popleft()
            self.dropped += 1
            if lost.done is not None and not lost.done.done():
                lost.done.set_exception(BrokerUnavailable("too many changes kept"))
        self._outgoing.append(item)
        self.idle.clear()
        self._wake.set()

    async def _send(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._outgoing:
                if not self.link.up:
                    self._refuse_publications()
                    await self.link.up_event.wait()  # changes wait for Redis, in order
                    continue
                items = list(self._outgoing)
                try:
                    await self._send_round(items)
                except LinkDown:
                    # Publishers are told; changes are sent again (Redis may have taken them:
                    # the node's Share after the outage puts its own state right anyway).
                    self._refuse_publications()
                    await asyncio.sleep(RETRY_PAUSE)
                    continue
                for _ in items:
                    self._outgoing.popleft()
                for item in items:
                    if item.done is not None and not item.done.done():
                        item.done.set_result(None)
            if not self._outgoing:
                self.idle.set()

    async def _send_round(self, items: list[Outgoing]) -> None:
        subscribe: set[Key] = set()
        for item in items:
            if item.needs is not None:
                subscribe |= item.needs.subscribe
        if subscribe:
            await self.link.subscribe([self._channel_of(*key) for key in subscribe])
            # What the node could not hear before: the last event of its new cache channels,
            # to its workers ahead of READY (so subscription_succeeded is followed by it).
            keys = [k for key in subscribe if (k := self._cache_key(*key)) is not None]
            if keys:
                self._say_cached([v for v in await self.link.get_many(keys) if v is not None])
        self._ready(items)
        for item in items:
            if item.numbered is not None and not item.seq:
                self.last_seq += 1
                item.seq = self.last_seq
                channel, prefix, body = item.numbered
                item.messages = [(channel, numbered_message(prefix, item.seq, body))]
        sets = [pair for item in items if item.sets for pair in item.sets]
        messages = [message for item in items for message in item.messages]
        await self.link.publish_many(messages, sets, self.cache_ttl_ms)
        gone = {
            key
            for item in items
            if item.needs is not None
            for key in item.needs.unsubscribe
            if not self._wanted(key)
        }
        if gone:
            with contextlib.suppress(LinkDown):  # subscriptions end with the connection anyway
                await self.link.unsubscribe([self._channel_of(*key) for key in gone])

    def _ready(self, items: list[Outgoing]) -> None:
        by_origin: dict[int, list[tuple[str, str, int]]] = {}
        for item in items:
            if item.needs is not None:
                for origin, app_id, channel, serial in item.needs.ready:
                    by_origin.setdefault(origin, []).append((app_id, channel, serial))
                item.needs.ready.clear()  # said once, even if the round is sent again
        for origin, ready in by_origin.items():
            self._say_ready(origin, ready)

    def _refuse_publications(self) -> None:
        """The link is down: waiting publishers are told now; changes stay, in order."""
        kept: deque[Outgoing] = deque()
        for item in self._outgoing:
            if item.is_changes:
                kept.append(item)
            else:
                self.dropped += 1
                if item.done is not None and not item.done.done():
                    item.done.set_exception(
                        BrokerUnavailable(f"Redis at {self.link.address} is unreachable")
                    )
        self._outgoing = kept
