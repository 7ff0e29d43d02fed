"""The Broker contract (sidecar/engine/broker/base.py), one suite over every implementation.

Each implementation is driven as a small cluster: `nodes` are the processes that hold
subscribers (the one process with the memory broker; workers on their pipes with the hub),
`orderer` is the broker of the process that puts things in order (the same one process; the
supervisor's hub). A Redis broker joins by adding a cluster class and a fixture parameter.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from sidecar.engine.broker.base import HUB_ORIGIN, Broker, Publication
from sidecar.engine.broker.changes import Change, CountDelta, OriginGone, Reset, TerminateUser
from sidecar.engine.broker.memory import MemoryBroker
from sidecar.engine.broker.pipe import HubBroker, WorkerBroker

SNAPSHOT = {"1": {"news": {"o": [[1, 2]], "m": [], "s": []}}}


@dataclass
class Node:
    """One process's broker and what it received, publications and change batches in order."""

    broker: Broker
    seen: list[object] = field(default_factory=list)
    reports: list[tuple[str, dict]] = field(default_factory=list)

    def deliver(self, pub: Publication) -> None:
        self.seen.append(pub.name)

    def changed(self, origin: int, changes: list[Change]) -> None:
        self.seen.append((origin, changes))

    def reported(self, app_id: str, event: dict) -> None:
        self.reports.append((app_id, event))


class MemoryCluster:
    """One process: it is the only node and it orders everything itself."""

    many = False

    async def start(self, nodes: int) -> None:
        assert nodes == 1
        broker = MemoryBroker()
        self.node = Node(broker)
        await broker.start(self.node.deliver, self.node.changed, self.node.reported)
        self.nodes = [self.node]
        self.orderer: Broker = broker
        self.ordered = self.node  # where the order's changes are seen by the orderer

    async def add(self) -> Node:
        pytest.skip("one process: no node starts while others run")

    async def lose(self, node: Node) -> None:
        pytest.skip("one process: no node is ever gone while the broker runs")

    async def close(self) -> None:
        await asyncio.wait_for(self.node.broker.close(), 5)


class PipeCluster:
    """The supervisor's hub and workers on socketpairs, as sidecar/server/supervisor.py has it."""

    many = True

    async def start(self, nodes: int) -> None:
        self.hub = HubBroker()
        self.ordered = Node(self.hub)
        await self.hub.start(self.ordered.deliver, self.ordered.changed, self.ordered.reported)
        self.orderer = self.hub
        self.nodes: list[Node] = []
        self._ends: dict[int, socket.socket] = {}
        self._worker_ids: dict[int, int] = {}
        for _ in range(nodes):
            await self.add()  # no snapshot yet: the first nodes start with the cluster

    async def add(self) -> Node:
        hub_end, worker_end = socket.socketpair()
        worker_id = len(self._worker_ids)
        await self.hub.attach(worker_id, hub_end)
        worker = WorkerBroker(worker_end)
        node = Node(worker)
        await worker.start(node.deliver, node.changed)
        self._ends[id(node)] = worker_end
        self._worker_ids[id(node)] = worker_id
        self.nodes.append(node)
        return node

    async def lose(self, node: Node) -> None:
        self.nodes.remove(node)
        self._ends.pop(id(node)).close()

    async def close(self) -> None:
        for node in self.nodes:
            # The worker's word on its control line (sidecar/server/control.py).
            assert isinstance(node.broker, WorkerBroker)
            self.hub.finished(self._worker_ids[id(node)], node.broker.published)
        await self.hub.close(wait=2)
        for node in self.nodes:
            await asyncio.wait_for(node.broker.close(), 5)


Cluster = MemoryCluster | PipeCluster


@pytest.fixture(params=["memory", "pipe"])
async def cluster(request: pytest.FixtureRequest) -> AsyncIterator[Cluster]:
    made: Cluster = MemoryCluster() if request.param == "memory" else PipeCluster()
    await made.start(2 if made.many else 1)
    yield made
    await made.close()


async def eventually(check, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    assert check()


def pub(name: str) -> Publication:
    return Publication.of("1", ("news",), name, "x")


def count(n: int) -> list[Change]:
    return [CountDelta("1", "news", n)]


async def test_hand_over_returns_before_anything_is_received(cluster: Cluster) -> None:
    node = cluster.nodes[0]
    node.broker.publish(pub("a"))
    node.broker.announce(count(1))
    assert node.seen == []
    await eventually(lambda: len(node.seen) == 2)


async def test_every_node_receives_one_order_of_publications_and_changes(
    cluster: Cluster,
) -> None:
    """What each node hands over comes back to every node (itself included) in one sequence,
    publications and changes interleaved the same way everywhere, each sender's own order kept."""
    for i in range(5):
        for node in cluster.nodes:
            node.broker.publish(pub(f"p{i}-{cluster.nodes.index(node)}"))
            node.broker.announce(count(i + 1))
        cluster.orderer.publish(pub(f"hub{i}"))
    total = 5 * (2 * len(cluster.nodes) + 1)
    await eventually(lambda: all(len(n.seen) == total for n in cluster.nodes))
    first = cluster.nodes[0].seen
    assert all(n.seen == first for n in cluster.nodes)
    for index in range(len(cluster.nodes)):
        mine = [s for s in first if isinstance(s, str) and s.endswith(f"-{index}")]
        assert mine == [f"p{i}-{index}" for i in range(5)]
    assert [s for s in first if isinstance(s, str) and s.startswith("hub")] == [
        f"hub{i}" for i in range(5)
    ]


async def test_origins_are_numbered_by_the_orderer_one_per_node(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.broker.announce(count(1))
        node.broker.announce(count(2))
    cluster.orderer.announce([TerminateUser("1", "ann")])
    total = 2 * len(cluster.nodes) + 1
    await eventually(lambda: all(len(n.seen) == total for n in cluster.nodes))
    batches = [s for s in cluster.nodes[0].seen if isinstance(s, tuple)]
    # The orderer's own batch carries HUB_ORIGIN, wherever it fell in the order.
    assert (HUB_ORIGIN, [TerminateUser("1", "ann")]) in batches
    origins = [o for o, changes in batches if changes != [TerminateUser("1", "ann")]]
    # Each node's two batches carry one origin; different nodes, different origins.
    assert len(set(origins)) == len(cluster.nodes)
    assert all(origins.count(o) == 2 for o in origins)
    if cluster.many:
        assert HUB_ORIGIN not in origins
    # The orderer sees every batch with the origin it gave, in the same order.
    await eventually(lambda: len(cluster.ordered.seen) >= total)
    assert [s for s in cluster.ordered.seen if isinstance(s, tuple)] == batches


async def test_a_node_that_is_gone_has_its_share_released_once_after_what_it_sent(
    cluster: Cluster,
) -> None:
    dying = cluster.nodes[-1]
    dying.broker.announce(count(3))
    await eventually(lambda: len(dying.seen) == 1)
    ((origin, _),) = dying.seen  # type: ignore[misc]
    await cluster.lose(dying)
    survivor = cluster.nodes[0]
    await eventually(lambda: (HUB_ORIGIN, [OriginGone(origin)]) in survivor.seen)
    await asyncio.sleep(0.05)
    assert survivor.seen == [(origin, count(3)), (HUB_ORIGIN, [OriginGone(origin)])]


async def test_a_node_that_starts_late_receives_the_state_first_then_what_follows(
    cluster: Cluster,
) -> None:
    if isinstance(cluster, PipeCluster):
        cluster.hub.snapshot = lambda: SNAPSHOT
    late = await cluster.add()
    cluster.orderer.publish(pub("after"))
    await eventually(lambda: len(late.seen) == 2)
    assert late.seen == [(HUB_ORIGIN, [Reset(SNAPSHOT)]), "after"]


async def test_reports_reach_the_orderer_without_order_or_echo(cluster: Cluster) -> None:
    node = cluster.nodes[-1]
    node.broker.report("1", {"name": "cache_miss", "channel": "cache-a"})
    await eventually(lambda: len(cluster.ordered.reports) == 1)
    assert cluster.ordered.reports == [("1", {"name": "cache_miss", "channel": "cache-a"})]
    await asyncio.sleep(0.05)
    assert all(n.seen == [] for n in cluster.nodes)


async def test_closing_delivers_what_was_accepted_before(cluster: Cluster) -> None:
    for node in cluster.nodes:
        node.broker.publish(pub(f"last-{cluster.nodes.index(node)}"))
    cluster.orderer.publish(pub("last-hub"))
    await cluster.close()
    expected = {f"last-{i}" for i in range(len(cluster.nodes))} | {"last-hub"}
    for node in cluster.nodes:
        assert set(node.seen) == expected  # type: ignore[arg-type]  # names only, here
    cluster.nodes = []  # closed: the fixture's close has nothing left to do
