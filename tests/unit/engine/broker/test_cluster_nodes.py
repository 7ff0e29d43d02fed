"""sidecar.engine.broker.cluster_nodes: heartbeats, sweeps and self-eviction on a real Redis.

Each test starts its own redis-server (tests/support/redis_server.py) and short heartbeats; the
decisions themselves are tested without Redis in test_liveness_rules.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio

from sidecar.engine.broker.cluster_nodes import NodeLiveness
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

HEARTBEAT = 0.2
PREFIX = "t"


class Node:
    """One NodeLiveness with what it announced."""

    def __init__(self, url: str, node_num: int) -> None:
        self.client = redis.asyncio.Redis.from_url(url, socket_timeout=1)
        self.gone: list[int] = []
        self.evicted = 0
        self.liveness = NodeLiveness(
            self.client,
            PREFIX,
            node_num,
            f"node-{node_num}",
            HEARTBEAT,
            self._publish_gone,
            self._on_evicted,
            workers=2,
        )

    async def _publish_gone(self, node_num: int) -> None:
        self.gone.append(node_num)

    def _on_evicted(self) -> None:
        self.evicted += 1

    def die(self) -> None:
        """As SIGKILL: no more heartbeats, nothing cleaned up."""
        task = self.liveness._task
        assert task is not None
        self.liveness._stopping = True  # a cancel alone may be swallowed inside redis-py
        task.cancel()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.liveness.stop()
        with contextlib.suppress(Exception):
            await self.client.aclose()


@pytest.fixture
async def nodes(redis_server: RedisServer) -> AsyncIterator[Callable[[int], Node]]:
    made: list[Node] = []

    def make(node_num: int) -> Node:
        node = Node(redis_server.url, node_num)
        made.append(node)
        return node

    try:
        yield make
    finally:
        for node in made:
            await node.close()


async def test_a_started_node_is_listed_with_its_key_and_info(
    nodes: Callable[[int], Node],
) -> None:
    one, two = nodes(1), nodes(2)
    await one.liveness.start()
    await two.liveness.start()
    client = one.client
    assert await client.get(f"{PREFIX}:node:1:alive") == b"node-1"
    assert 0 < await client.pttl(f"{PREFIX}:node:1:alive") <= 3 * HEARTBEAT * 1000
    assert {m for m, _ in await client.zrange(f"{PREFIX}:nodes", 0, -1, withscores=True)} == {
        b"1",
        b"2",
    }
    info = await client.hgetall(f"{PREFIX}:node:2:info")
    assert info[b"node_id"] == b"node-2" and info[b"workers"] == b"2"
    await eventually(
        lambda: [n.node_id for n in one.liveness.live_nodes()] == ["node-1", "node-2"], 5.0
    )
    (listed, _) = one.liveness.live_nodes()
    assert listed.workers == 2 and listed.pid > 0
    assert abs(listed.last_seen - time.time()) < 5


async def test_a_dead_node_is_swept_once_by_one_survivor(nodes: Callable[[int], Node]) -> None:
    one, two, three = nodes(1), nodes(2), nodes(3)
    for node in (one, two, three):
        await node.liveness.start()
    await asyncio.sleep(4 * HEARTBEAT)
    three.die()
    started = time.monotonic()
    await eventually(lambda: one.gone + two.gone == [3], 5.0)
    took = time.monotonic() - started
    assert took < 3 * HEARTBEAT + 4 * HEARTBEAT + 1  # its key's life, two rounds, slack
    await asyncio.sleep(6 * HEARTBEAT)
    assert one.gone + two.gone == [3]  # never a second NodeGone
    assert await one.client.zscore(f"{PREFIX}:nodes", "3") is None
    assert await one.client.exists(f"{PREFIX}:sweep:3") == 1  # the tombstone
    assert [n.node_num for n in one.liveness.live_nodes()] == [1, 2]
    assert one.evicted == two.evicted == 0


async def test_a_stopped_node_drops_its_key_and_is_swept_soon(
    nodes: Callable[[int], Node],
) -> None:
    one, two = nodes(1), nodes(2)
    await one.liveness.start()
    await two.liveness.start()
    await asyncio.sleep(4 * HEARTBEAT)
    await two.liveness.stop()
    assert await one.client.exists(f"{PREFIX}:node:2:alive") == 0
    await eventually(lambda: one.gone == [2], 5.0)  # whatever it left behind is released


async def test_a_swept_node_that_comes_back_evicts_itself(nodes: Callable[[int], Node]) -> None:
    one, two = nodes(1), nodes(2)
    await one.liveness.start()
    await two.liveness.start()
    await asyncio.sleep(4 * HEARTBEAT)
    two.die()  # as if SIGSTOPped for longer than 3 heartbeats
    await eventually(lambda: one.gone == [2], 5.0)
    await two.liveness.beat()  # SIGCONT: its next heartbeat
    assert two.evicted == 1
    assert await one.client.exists(f"{PREFIX}:node:2:alive") == 0  # no ghost key
    two.liveness.node_gone(2)  # the NodeGone it then reads from the log: once is enough
    assert two.evicted == 1


async def test_node_gone_for_itself_evicts_and_for_another_does_not(
    nodes: Callable[[int], Node],
) -> None:
    one = nodes(1)
    await one.liveness.start()
    one.liveness.node_gone(5)
    assert one.evicted == 0
    one.liveness.node_gone(1)
    assert one.evicted == 1
    await asyncio.sleep(2 * HEARTBEAT)
    assert one.liveness._task is not None and one.liveness._task.done()  # no more heartbeats


async def test_the_redis_pause_trap_sweeps_nobody_and_evicts_nobody(
    nodes: Callable[[int], Node], redis_server: RedisServer
) -> None:
    """SIGSTOP Redis for longer than 3 heartbeats: every key expires on Redis's clock."""
    trio = [nodes(1), nodes(2), nodes(3)]
    for node in trio:
        await node.liveness.start()
    await asyncio.sleep(5 * HEARTBEAT)  # every node healthy: each may sweep
    redis_server.stop()
    try:
        await asyncio.sleep(8 * HEARTBEAT)
    finally:
        redis_server.cont()
    await asyncio.sleep(10 * HEARTBEAT)
    assert [node.gone for node in trio] == [[], [], []]
    assert [node.evicted for node in trio] == [0, 0, 0]
    for n in (1, 2, 3):
        assert await trio[0].client.exists(f"{PREFIX}:node:{n}:alive") == 1
    assert [n.node_num for n in trio[0].liveness.live_nodes()] == [1, 2, 3]


async def test_a_redis_restarted_empty_gets_every_node_back_without_a_sweep(
    nodes: Callable[[int], Node], redis_server: RedisServer
) -> None:
    one, two = nodes(1), nodes(2)
    await one.liveness.start()
    await two.liveness.start()
    await asyncio.sleep(4 * HEARTBEAT)
    redis_server.restart()
    await asyncio.sleep(8 * HEARTBEAT)
    assert one.gone == two.gone == [] and one.evicted == two.evicted == 0
    assert await one.client.zcard(f"{PREFIX}:nodes") == 2
    assert await one.client.exists(f"{PREFIX}:node:2:info") == 1


async def test_redis_gone_leaves_the_task_running_and_logs_once(
    nodes: Callable[[int], Node], redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    one = nodes(1)
    await one.liveness.start()
    redis_server.kill()
    with caplog.at_level("WARNING", logger="sidecar.cluster"):
        await asyncio.sleep(6 * HEARTBEAT)
    failures = [r for r in caplog.records if "heartbeat failed" in r.getMessage()]
    assert len(failures) == 1
    assert one.liveness._task is not None and not one.liveness._task.done()
    redis_server.start()
    await eventually(lambda: bool(one.liveness.live_nodes()), timeout=5)
    assert one.evicted == 0


async def test_a_node_number_and_prefix_are_kept_apart(nodes: Callable[[int], Node]) -> None:
    """Two clusters on one Redis (two prefixes) never see each other's nodes."""
    a, b = nodes(1), nodes(2)
    b.liveness.prefix = "other"
    await a.liveness.start()
    await b.liveness.start()
    await asyncio.sleep(3 * HEARTBEAT)
    assert [n.node_num for n in a.liveness.live_nodes()] == [1]
    assert [n.node_num for n in b.liveness.live_nodes()] == [2]
