"""sidecar.engine.broker.redis: RedisHubBroker, nodes sharing one real redis-server.

Each `Node` is a hub with its supervisor's replica (a ChannelState) and one worker attached by a
real socketpair (WorkerBroker, as the worker process runs it), all on the test's loop.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from sidecar.config.broker import BrokerConfig
from sidecar.config.values import ConfigError
from sidecar.engine.broker.base import BrokerUnavailable, Publication
from sidecar.engine.broker.changes import (
    Change,
    CountDelta,
    MemberJoin,
    MemberLeave,
    cluster_origin,
    encode_changes,
)
from sidecar.engine.broker.pipe import WorkerBroker
from sidecar.engine.broker.redis import RedisHubBroker
from sidecar.engine.channel_state import ChannelInfo, ChannelState
from tests.support.process import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

TIMEOUT = 0.5
Info0 = ChannelInfo(0, 0)


class Node:
    def __init__(self, url: str) -> None:
        config = BrokerConfig(kind="redis", url=url, prefix="t", heartbeat=0.5)
        self.hub = RedisHubBroker(config, workers=1, timeout=TIMEOUT)
        self.state = ChannelState()
        self.state.node_num = self.hub.node_num
        self.hub.snapshot = self.state.snapshot
        self.hub.share = self.state.share_of
        self.delivered: list[Publication] = []
        self.worker_changes: list[tuple[int, list[Change]]] = []
        self.ready: list[tuple[str, str]] = []
        self.heard: list[object] = []  # cached events and READYs, in the order they came
        self.worker: WorkerBroker | None = None
        self._sockets: list[socket.socket] = []

    async def start(self) -> Node:
        await self.hub.start(lambda _: None, self.state.apply_all)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sockets += [ours, theirs]
        await self.hub.attach(1, ours)
        self.worker = WorkerBroker(theirs, confirms=True)
        self.worker.on_ready = self._ready
        self.worker.on_cached = lambda pub: self.heard.append(("cached", pub.name, pub.data))
        await self.worker.start(
            self.delivered.append, lambda o, c: self.worker_changes.append((o, c))
        )
        return self

    def _ready(self, app_id: str, channel: str) -> None:
        self.ready.append((app_id, channel))
        self.heard.append(("ready", channel))

    def subscribed(self, channel: str) -> bool:
        assert self.worker is not None
        return self.worker.ready("1", channel)

    def received(self) -> list[tuple[str, str]]:
        return [(p.channels[0], p.data) for p in self.delivered]

    async def close(self) -> None:
        await self.hub.close()
        for sock in self._sockets:
            sock.close()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Callable[[], Awaitable[Node]]]:
    started: list[Node] = []

    async def start() -> Node:
        node = await Node(redis_server.url).start()
        started.append(node)
        return node

    yield start
    for node in started:
        await node.close()


async def test_start_without_redis_is_one_line_naming_broker_url_never_the_password() -> None:
    url = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    hub = RedisHubBroker(BrokerConfig(kind="redis", url=url), timeout=TIMEOUT)
    with pytest.raises(ConfigError) as info:
        await hub.start(lambda _: None)
    assert info.value.key == "broker.url"
    assert "127.0.0.1:" in str(info.value)
    assert "hunter2" not in str(info.value)
    assert "\n" not in str(info.value)


async def test_a_publication_reaches_the_nodes_subscribed_after_ready(
    nodes: Callable[[], Awaitable[Node]], redis_server: RedisServer
) -> None:
    a, b = await nodes(), await nodes()
    assert b.worker is not None and a.worker is not None
    assert not b.subscribed("news")
    b.worker.announce([CountDelta("1", "news", 1)])
    await eventually(lambda: b.ready == [("1", "news")])
    assert b.subscribed("news")
    assert b"t:ch:1:news" in redis_server.command("PUBSUB", "CHANNELS")
    # Every replica counts the subscriber (the cluster's one state).
    await eventually(lambda: a.state.info("1", "news") is not None)
    await a.worker.publish_confirmed(Publication.of("1", ("news", "other"), "e", "one"))
    await a.hub.publish_confirmed(Publication.of("1", ("news",), "e", "two"))
    await eventually(lambda: len(b.delivered) == 2)
    assert b.received() == [("news", "one"), ("news", "two")]
    assert b.delivered[0].name == "e"
    # Its acceptance time crossed Redis on the wall clock and is this machine's monotonic again.
    assert 0 <= time.monotonic() - b.delivered[0].accepted_at < 5
    await asyncio.sleep(0.1)
    assert a.delivered == []  # node a has no subscriber: it subscribed to nothing
    b.worker.announce([CountDelta("1", "news", -1)])
    await eventually(lambda: b"t:ch:1:news" not in redis_server.command("PUBSUB", "CHANNELS"))
    await eventually(lambda: a.state.info("1", "news") is None)


async def test_presence_is_decided_in_one_order_for_the_cluster(
    nodes: Callable[[], Awaitable[Node]],
) -> None:
    a, b = await nodes(), await nodes()
    assert a.worker is not None and b.worker is not None
    a.worker.announce([MemberJoin("1", "presence-room", "1.1", "ann", {"n": 1})])
    b.worker.announce([MemberJoin("1", "presence-room", "2.1", "bob", None)])
    for node in (a, b):
        await eventually(lambda node=node: len(node.state.members("1", "presence-room")) == 2)
    # Each worker sees every join (its own is its answer).
    await eventually(lambda: sum(len(c) for _, c in b.worker_changes) >= 2)
    b.worker.announce([MemberLeave("1", "presence-room", "2.1")])
    await eventually(lambda: list(a.state.members("1", "presence-room")) == ["ann"])


async def test_a_node_that_starts_late_gets_the_cluster_state(
    nodes: Callable[[], Awaitable[Node]],
) -> None:
    a = await nodes()
    assert a.worker is not None
    a.worker.announce([CountDelta("1", "news", 2), MemberJoin("1", "presence-r", "1.1", "ann")])
    await eventually(lambda: a.state.info("1", "news") is not None)
    late = await nodes()
    info = late.state.info("1", "news")
    assert info is not None and info.subscription_count == 2
    assert list(late.state.members("1", "presence-r")) == ["ann"]
    # and what its worker starts from (Reset at attach) is the same
    await eventually(lambda: bool(late.worker_changes))
    assert late.worker_changes[0][0] == 0


async def test_redis_killed_refuses_at_once_then_state_is_shared_again(
    nodes: Callable[[], Awaitable[Node]], redis_server: RedisServer
) -> None:
    a, b = await nodes(), await nodes()
    assert a.worker is not None and b.worker is not None
    b.worker.announce([CountDelta("1", "news", 1)])
    a.worker.announce([MemberJoin("1", "presence-r", "1.1", "ann")])
    await eventually(lambda: b.ready == [("1", "news")] and a.state.info("1", "news") is not None)
    redis_server.kill()
    await eventually(lambda: not a.hub.up and not b.hub.up, 5)
    started = time.monotonic()
    with pytest.raises(BrokerUnavailable):
        await a.hub.publish_confirmed(Publication.of("1", ("news",), "e", "lost"))
    with pytest.raises(BrokerUnavailable):
        await a.worker.publish_confirmed(Publication.of("1", ("news",), "e", "lost"))
    assert time.monotonic() - started < 0.5  # at once, not after a deadline
    redis_server.start()  # empty
    await eventually(lambda: a.hub.up and b.hub.up)
    # Both nodes subscribed again and shared their state: each replica knows the other's.
    await eventually(lambda: b"t:ch:1:news" in redis_server.command("PUBSUB", "CHANNELS"))
    await eventually(lambda: list(b.state.members("1", "presence-r")) == ["ann"])
    await eventually(lambda: a.state.info("1", "news") is not None)
    await a.hub.publish_confirmed(Publication.of("1", ("news",), "e", "after"))
    await eventually(lambda: b.received() == [("news", "after")])


async def test_redis_paused_publishes_refused_within_the_deadline(
    nodes: Callable[[], Awaitable[Node]], redis_server: RedisServer
) -> None:
    a = await nodes()
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(BrokerUnavailable):
            await a.hub.publish_confirmed(Publication.of("1", ("news",), "e", "x"))
        assert time.monotonic() - started < 3 * TIMEOUT
    finally:
        redis_server.cont()
    await eventually(lambda: a.hub.up)
    await a.hub.publish_confirmed(Publication.of("1", ("news",), "e", "after"))


async def test_a_worker_that_is_lost_gives_its_channels_back(
    nodes: Callable[[], Awaitable[Node]], redis_server: RedisServer
) -> None:
    a, b = await nodes(), await nodes()
    assert a.worker is not None
    a.worker.announce([CountDelta("1", "news", 1)])
    await eventually(lambda: b.state.info("1", "news") is not None)
    a.hub.detach(1)
    await eventually(lambda: b.state.info("1", "news") is None)
    await eventually(lambda: b"t:ch:1:news" not in redis_server.command("PUBSUB", "CHANNELS"))


async def test_a_cache_channels_last_event_reaches_a_node_that_starts_hearing_it(
    nodes: Callable[[], Awaitable[Node]],
) -> None:
    a, b = await nodes(), await nodes()
    assert b.worker is not None
    await a.hub.publish_confirmed(Publication.of("1", ("cache-prices", "news"), "price", "3"))
    await a.hub.publish_confirmed(Publication.of("1", ("cache-prices",), "price", "4"))
    await a.hub.publish_confirmed(Publication.of("1", ("cache-prices",), "client-x", "5"))
    b.worker.announce([CountDelta("1", "cache-prices", 1), CountDelta("1", "news", 1)])
    await eventually(lambda: len(b.ready) == 2)
    # The last event (not a client event) first, then READY: the relay replays it after
    # subscription_succeeded; a channel that is not a cache channel has nothing kept.
    assert b.heard[0] == ("cached", "price", "4")
    assert sorted(b.heard[1:]) == [("ready", "cache-prices"), ("ready", "news")]


async def test_a_batch_sent_again_after_a_round_without_answer_is_applied_once(
    nodes: Callable[[], Awaitable[Node]],
) -> None:
    """A paused Redis runs what it had read once it resumes, and the sender sends it again."""
    a = await nodes()
    batch = encode_changes(cluster_origin(12345, 1), [CountDelta("1", "twice", 1)])
    again = b"c7 " + batch
    later = b"c8 " + encode_changes(cluster_origin(12345, 1), [CountDelta("1", "twice", 1)])
    await a.hub.link.publish_many([(a.hub.log_channel, m) for m in (again, again, later)])
    await eventually(lambda: (a.state.info("1", "twice") or Info0).subscription_count == 2)
    await asyncio.sleep(0.1)
    info = a.state.info("1", "twice")
    assert info is not None and info.subscription_count == 2
