"""The broker across machines: each node's hub talks to Redis, its workers to the hub as before.

The contract is Broker's (sidecar/engine/broker/base.py), kept one level up: **the Redis pub/sub
channel `{prefix}:log` is the cluster's one order of changes**. A node's hub publishes every
batch of changes (its workers', its own) to the log, stamped with a cluster origin
(changes.py: `cluster_origin(node_num, local)`), and applies and forwards to its workers only
what comes back from the log, in Redis's order. Every node then holds the same replica of the
cluster's counts and members (the supervisor's ChannelState and each worker's), so queries
answer for the cluster and joins are decided once, in one order.

Publications go on `{prefix}:ch:{app_id}:{channel}`, one PUBLISH per channel, each message
the pipe's own frame for that one channel (frames.py): a hub forwards it to its workers as it
came, the data never decoded. A node subscribes to a channel when its workers' subscribers go
0 -> 1 (local_channels.py) and before it publishes the batch that needs it: a presence join is
answered on its echo, a public or private subscribe on the READY frame the hub sends once the
subscription is confirmed; a node receives only what its subscribers want. The log, the
channels and the node's own channel `{prefix}:node:{node_num}` are read on one connection,
so a node sees them in Redis's one order.

Everything the hub sends goes through one sender, in order, a batch per round trip: the
subscriptions a round needs (confirmed), then its PUBLISHes, then its unsubscriptions.
Publications are answered once Redis took them (`publish_confirmed`), or refused at once while
the link is down and within its deadline when Redis does not answer (`BrokerUnavailable`, a
503 for the publisher). Changes are kept (bounded) while the link is down and sent once it is
back, after the node's `Share`.

A node that starts while others run (`Reset` one level up): it publishes `hello` to the log and
asks one live node, which snapshots its replica at that point of the order and sends it to the
newcomer's own channel; the newcomer restores it and applies what the log said after its
hello. No answer within HELLO_TIMEOUT: the next live node; none: it starts empty.

After Redis was lost (killed, restarted empty, a connection cut): the link reconnects and
subscribes again (redis_link.py), the node registers again (cluster_nodes.py) and publishes
`Share(node_num, share)`: its own counts and members, which every replica puts in place of
what it held for this node (no webhooks).

Liveness (cluster_nodes.py: `NodeLiveness`) heartbeats the node and sweeps dead ones by
putting `NodeGone(node_num)` in the log. A node swept while alive (it was paused) takes a new
node number and `on_evicted` restarts its workers, whose clients are closed with 4200 and
reconnect as newcomers, so no ghost members.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, cast

import orjson

from sidecar.config.broker import BrokerConfig
from sidecar.config.values import ConfigError
from sidecar.engine.broker.base import HUB_ORIGIN, BrokerUnavailable, Deliver, Publication, Report
from sidecar.engine.broker.changes import (
    MAX_NODE_NUM,
    Change,
    NodeGone,
    OnChanges,
    OriginGone,
    Reset,
    Share,
    cluster_origin,
    decode_changes,
    encode_changes,
    node_of,
)
from sidecar.engine.broker.cluster_nodes import NodeLiveness
from sidecar.engine.broker.frames import (
    CHANGES,
    PublicationStream,
    ack_frame,
    cached_frame,
    decode_publication,
    encode_publication,
    meta_frame,
    ready_frame,
    split_frame,
)
from sidecar.engine.broker.local_channels import Key, LocalChannels
from sidecar.engine.broker.pipe import MAX_WORKER_BACKLOG, HubBroker
from sidecar.engine.broker.redis_link import LinkDown, RedisLink
from sidecar.engine.broker.redis_sender import Outgoing, RedisSender, numbered_message
from sidecar.protocol.channel_rules import is_cache

log = logging.getLogger("sidecar.broker")

# A node that starts while others run waits this long for a snapshot before asking another.
HELLO_TIMEOUT = 2.0
HELLO_ASKS = 3  # nodes asked at most, then it starts empty
# On the log, a message's first byte says what it is.
LOG_CHANGES, LOG_HELLO = b"c", b"h"


class RedisHubBroker(HubBroker):
    """The supervisor's broker with `broker.kind: redis` (same surface as HubBroker)."""

    confirms_publications = True  # the publish API awaits publish_confirmed

    def __init__(
        self,
        config: BrokerConfig,
        *,
        workers: int = 0,
        node_num: int | None = None,
        max_backlog: int = MAX_WORKER_BACKLOG,
        timeout: float | None = None,
        snapshot: Callable[[], Any] | None = None,
    ) -> None:
        super().__init__(max_backlog, snapshot)
        assert config.url is not None
        self.config = config
        self.prefix = config.prefix
        self.workers_planned = workers
        self._take_number(node_num)
        self.log_channel = f"{self.prefix}:log".encode()
        options = {"timeout": timeout} if timeout is not None else {}
        self.link = RedisLink(
            config.url, self._on_message, client_name=f"sidecar-{self.node_num:x}", **options
        )
        self.link.on_up = self._link_up
        self.link.on_down = self._link_down
        self.liveness: NodeLiveness | None = None
        self.local = LocalChannels()
        # What this node's own origins hold, shaped like a snapshot (ChannelState.share_of):
        # published after an outage. Set by the supervisor.
        self.share: Callable[[int], Any] | None = None
        # Called when this node was swept while alive: its workers are to be restarted.
        self.on_evicted: Callable[[], None] | None = None
        self._started = False
        self.sender = RedisSender(
            self.link,
            self.channel_of,
            self._wanted,
            self._say_ready,
            self.cache_key,
            self._say_cached,
        )
        self._last_published: dict[int, asyncio.Future[None]] = {}  # origin -> its latest
        self._applied: dict[int, int] = {}  # node -> number of its latest batch applied
        # Joining a running cluster: the hello's nonce, and the log after it (None: not seen).
        self._hello: bytes | None = None
        self._after_hello: list[tuple[int, list[Change], bytes]] | None = None
        self._snapshot: asyncio.Future[Any] | None = None
        self._rejoining: asyncio.Task[None] | None = None  # after an eviction

    # Names in Redis ------------------------------------------------------------------------

    def channel_of(self, app_id: str, channel: str) -> bytes:
        return f"{self.prefix}:ch:{app_id}:{channel}".encode()

    def cache_key(self, app_id: str, channel: str) -> bytes | None:
        """Where a cache channel's last event is kept (None: not a cache channel)."""
        return f"{self.prefix}:cache:{app_id}:{channel}".encode() if is_cache(channel) else None

    @property
    def cache_ttl(self) -> float:
        """limits.cache_ttl: how long Redis keeps a cache channel's last event (seconds)."""
        return self.sender.cache_ttl_ms / 1000

    @cache_ttl.setter
    def cache_ttl(self, seconds: float) -> None:
        self.sender.cache_ttl_ms = max(1, int(seconds * 1000))

    def node_channel_of(self, node_num: int) -> bytes:
        """The pub/sub channel that reaches one node alone (a snapshot for a newcomer)."""
        return f"{self.prefix}:node:{node_num}".encode()

    def _take_number(self, node_num: int | None = None) -> None:
        """This node's number (random unless given), its id for humans and its channel (kept,
        not made again for each message received)."""
        self.node_num = node_num or secrets.randbelow(MAX_NODE_NUM - 1) + 1
        self.node_id = f"{socket.gethostname()}-{os.getpid()}-{self.node_num:x}"
        self.node_channel = self.node_channel_of(self.node_num)

    def _origin(self, local: int) -> int:
        return cluster_origin(self.node_num, local)

    # Lifecycle -----------------------------------------------------------------------------

    async def start(
        self, deliver: Deliver, changed: OnChanges | None = None, reported: Report | None = None
    ) -> None:
        """Connect (Redis not answering: ConfigError naming broker.url and the address, never
        its password), join the cluster's order, start heartbeats."""
        await super().start(deliver, changed, reported)
        self.link.channels.update((self.log_channel, self.node_channel))
        try:
            await self.link.start()
        except LinkDown as exc:
            raise ConfigError(
                "broker.url",
                f"cannot reach Redis at {self.link.address} ({self.link.shown_url}): {exc}",
            ) from None
        self.sender.start()
        await self._join()
        self._started = True
        await self._start_liveness()

    async def _start_liveness(self) -> None:
        """NodeLiveness (cluster_nodes.py) plugs in here: heartbeats, sweeps, eviction."""
        self.liveness = NodeLiveness(
            self.link.redis,
            self.prefix,
            self.node_num,
            self.node_id,
            self.config.heartbeat,
            self._publish_gone,
            self._evicted,
            workers=self.workers_planned,
        )
        await self.liveness.start()

    async def close(self, wait: float = 0.0) -> None:
        await super().close(wait)
        if self.liveness is not None:
            await self.liveness.stop()
        await self.sender.stop(drain=self.link.timeout)  # what was accepted goes out first
        await self.link.close()

    @property
    def up(self) -> bool:
        return self.link.up

    # Publishing ----------------------------------------------------------------------------

    def publish(self, publication: Publication) -> None:
        """Without a publisher waiting (the console's form): lost while Redis is away."""
        if not self.link.up:
            self.sender.dropped += 1
            return
        self.sender.push(self._outgoing(publication))

    async def publish_confirmed(self, publication: Publication) -> None:
        done = self._publish_waiting(publication)
        try:
            await asyncio.wait_for(done, 2 * self.link.timeout)
        except TimeoutError:
            raise BrokerUnavailable("Redis did not answer in time") from None

    def _publish_waiting(self, publication: Publication) -> asyncio.Future[None]:
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.link.up:
            self.sender.dropped += 1
            done.set_exception(BrokerUnavailable(f"Redis at {self.link.address} is unreachable"))
        else:
            self.sender.push(self._outgoing(publication, done))
        return done

    def _outgoing(
        self, publication: Publication, done: asyncio.Future[None] | None = None
    ) -> Outgoing:
        """One message per channel, each the pipe frame of that channel alone, its acceptance
        time on the wall clock (a monotonic clock is one machine's); a cache channel's also
        kept as its last event."""
        messages, sets = [], []
        wall = publication.accepted_at + time.time() - time.monotonic()
        for channel in publication.channels:
            one = replace(publication, channels=(channel,), accepted_at=wall)
            frame = b"".join(encode_publication(one))
            messages.append((self.channel_of(publication.app_id, channel), frame))
            key = self.cache_key(publication.app_id, channel)
            if key is not None and not publication.name.startswith("client-"):
                sets.append((key, frame))
        return Outgoing(messages, done=done, sets=sets or None)

    def _worker_published(self, origin: int, head: bytes, data: bytes) -> None:
        publication = decode_publication(head, data)  # the meta only: data stays a literal
        done = self._publish_waiting(publication)
        # A client event has no CONFIRM after it: nobody else looks at how it went.
        done.add_done_callback(lambda f: f.cancelled() or f.exception())
        self._last_published[origin] = done

    def _worker_confirm(self, origin: int, stream: PublicationStream, seq: int) -> None:
        done = self._last_published.pop(origin, None)
        if done is None:
            stream.write(ack_frame(seq, "nothing to confirm"))
            return

        def answer(future: asyncio.Future[None]) -> None:
            error = None
            if future.cancelled():
                error = "cancelled"
            elif future.exception() is not None:
                error = str(future.exception())
            stream.write(ack_frame(seq, error))

        done.add_done_callback(answer)

    # Changes -------------------------------------------------------------------------------

    def announce(self, changes: Any) -> None:
        self._announce_from(HUB_ORIGIN, list(changes))

    def _worker_changed(self, origin: int, meta: bytes) -> None:
        _, changes = decode_changes(meta)
        self._announce_from(origin, changes)

    def _worker_gone(self, origin: int) -> None:
        self._announce_from(HUB_ORIGIN, [OriginGone(self._origin(origin))], released=origin)

    def _announce_from(
        self,
        local: int,
        changes: list[Change],
        released: int | None = None,
        done: asyncio.Future[None] | None = None,
    ) -> None:
        needs = self.local.release(released) if released is not None else None
        if local != HUB_ORIGIN:
            needs = self.local.apply(local, changes)
        body = encode_changes(self._origin(local), changes)
        numbered = (self.log_channel, LOG_CHANGES, body)
        self.sender.push(Outgoing([], needs, done, numbered=numbered))

    async def _publish_gone(self, node_num: int) -> None:
        """For NodeLiveness: NodeGone(node_num) in the log, returned once Redis took it."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._announce_from(HUB_ORIGIN, [NodeGone(node_num)], done=done)
        await asyncio.wait_for(done, 2 * self.link.timeout)

    def _wanted(self, key: Key) -> bool:
        return self.local.total(key) > 0

    def _say_cached(self, messages: list[bytes]) -> None:
        self._write_pending()  # what the workers were already due comes first
        frames = [cached_frame(decode_publication(*_local_time(m))) for m in messages]
        for attached in list(self._workers.values()):
            for head, data in frames:
                attached.stream.write(head, data)

    def _say_ready(self, origin: int, ready: list[tuple[str, str, int]]) -> None:
        stream = self._by_origin.get(origin)
        if stream is not None:
            stream.write(ready_frame(ready))

    # Receiving -----------------------------------------------------------------------------

    def _on_message(self, channel: bytes, data: bytes) -> None:
        if channel == self.log_channel:
            self._on_log(data)
        elif channel == self.node_channel:
            self._on_node_message(data)
        else:
            self._queue(_local_time(data))  # a publication, the data as it came

    def _on_log(self, data: bytes) -> None:
        kind, body = data[:1], data[1:]
        if kind == LOG_HELLO:
            self._on_hello(body)
            return
        if kind != LOG_CHANGES:
            return
        number, _, body = body.partition(b" ")
        origin, changes = decode_changes(body)
        seq = int(number)
        if seq:  # a batch sent again after a round without answer: applied once
            node = node_of(origin)
            if seq <= self._applied.get(node, 0):
                return
            self._applied[node] = seq
        if self._snapshot is not None:  # joining: what comes after our hello waits
            if self._after_hello is not None:
                self._after_hello.append((origin, changes, body))
            return
        self._apply(origin, changes, body)

    def _apply(self, origin: int, changes: list[Change], body: bytes) -> None:
        self._order(origin, changes, meta_frame(CHANGES, body))
        if self.liveness is not None:
            for change in changes:
                if isinstance(change, NodeGone):
                    self.liveness.node_gone(change.node_num)

    def _on_hello(self, body: bytes) -> None:
        node_num, ask, nonce = orjson.loads(body)
        if node_num == self.node_num and self._snapshot is not None:
            if nonce.encode() == self._hello:
                self._after_hello = []
            return
        if ask == self.node_num and self.snapshot is not None and self._started:
            # Our replica at this point of the order is what the newcomer starts from.
            reply = orjson.dumps([nonce, self.snapshot()])
            self.sender.push(Outgoing([(self.node_channel_of(node_num), reply)]))

    def _on_node_message(self, data: bytes) -> None:
        nonce, snapshot = orjson.loads(data)
        waiting = self._snapshot
        if waiting is not None and self._hello == nonce.encode() and not waiting.done():
            waiting.set_result(snapshot)

    async def _join(self) -> None:
        """Start from a live node's snapshot when others run (module docstring)."""
        try:
            listed = await asyncio.wait_for(
                # The most recently seen first: a dead node not yet swept is last.
                self.link.redis.zrange(f"{self.prefix}:nodes", 0, HELLO_ASKS - 1, desc=True),
                self.link.timeout,
            )
        except Exception as exc:
            log.warning("cluster: cannot list the nodes (%s); starting empty", exc)
            return
        others = [int(n) for n in cast(list[bytes], listed) if int(n) != self.node_num]
        for ask in others:
            self._hello = secrets.token_hex(8).encode()
            self._after_hello = None
            self._snapshot = asyncio.get_running_loop().create_future()
            hello = orjson.dumps([self.node_num, ask, self._hello.decode()])
            try:
                await self.link.publish_many([(self.log_channel, LOG_HELLO + hello)])
                snapshot = await asyncio.wait_for(self._snapshot, HELLO_TIMEOUT)
            except (TimeoutError, LinkDown):
                continue
            self._restore(snapshot)
            return
        self._snapshot = None
        self._after_hello = None

    def _restore(self, snapshot: Any) -> None:
        after, self._after_hello = self._after_hello or [], None
        self._snapshot = None
        if self._changed is not None:
            self._changed(HUB_ORIGIN, [Reset(snapshot)])
        for origin, changes, body in after:
            self._apply(origin, changes, body)
        log.info("cluster: joined from a snapshot", extra={"node": self.node_id})

    # Redis lost and back -------------------------------------------------------------------

    async def _link_up(self) -> None:
        """Connected again and subscribed: register again, then share this node's state."""
        if not self._started:
            return  # the first connection: start() does the rest
        if self.liveness is not None:
            await self.liveness.beat()
        if self.share is not None:
            share = Share(self.node_num, self.share(self.node_num))
            # Number 0: not one of the sender's batches (a Share is whole: never deduplicated).
            data = numbered_message(
                LOG_CHANGES, 0, encode_changes(self._origin(HUB_ORIGIN), [share])
            )
            await self.link.publish_many([(self.log_channel, data)])
        self.sender.wake()  # what was kept goes out now
        log.info("cluster: redis back; this node's state shared", extra={"node": self.node_id})

    def _link_down(self) -> None:
        if self._closing:
            return
        log.warning("cluster: redis unreachable; publishes refused until it is back")
        self.sender.wake()

    def _evicted(self) -> None:
        """Swept while alive: a new node number, and the workers restarted (their clients
        closed with 4200 reconnect, and join as this new node's)."""
        old = self.node_num
        self.link.channels.discard(self.node_channel)
        self._take_number()
        self.link.channels.add(self.node_channel)
        log.warning("cluster: node %x swept; joining again as %x", old, self.node_num)
        # Kept: the loop holds a task only weakly.
        self._rejoining = asyncio.get_running_loop().create_task(self._rejoin())
        if self.on_evicted is not None:
            self.on_evicted()

    async def _rejoin(self) -> None:
        with contextlib.suppress(LinkDown):
            await self.link.subscribe([self.node_channel])
        await self._start_liveness()


def _local_time(message: bytes) -> tuple[bytes, bytes]:
    """A publication from Redis as a pipe frame whose acceptance time is this machine's
    monotonic clock again (never later than now: clocks of machines differ a little)."""
    head, data = split_frame(message)
    publication = decode_publication(head, data)
    now = time.monotonic()
    accepted = min(now, publication.accepted_at - time.time() + now)
    return encode_publication(replace(publication, accepted_at=accepted))
