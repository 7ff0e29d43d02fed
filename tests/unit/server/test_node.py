"""sidecar.server.node: what the single process and a worker share; the stop of a node in order,
the TLS port registered with its reloader."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, Config
from sidecar.config.origins import OriginPolicy
from sidecar.engine.broker import MemoryBroker
from sidecar.server.lifecycle import Deadline, Step
from sidecar.server.node import Node
from sidecar.server.prepare import Prepared
from sidecar.server.reload_plan import plan_reload
from sidecar.server.serving import Edge, Sites

APP = AppConfig("1", "key-one", "secret-one-0123")


def prepared() -> Prepared:
    config = Config(apps=(APP,))
    return Prepared(config, AppRegistry((APP,)), False, None, None, [], None, None)


class RecordingBroker(MemoryBroker):
    def __init__(self, said: list[str]) -> None:
        super().__init__()
        self.said = said

    async def close(self) -> None:
        self.said.append("broker closes")
        await super().close()


class FakeEdge:
    """What a node reaches in its TLS port."""

    def __init__(self, said: list[str]) -> None:
        self.said = said
        self.api = FakeApi()
        self.policy = OriginPolicy(["https://app.example.com"])
        self.cors = None
        self.certificates = None

    async def stop_accepting(self, sites: Sites) -> None:
        self.said.append("edge shuts")


class FakeApi:
    apps: AppRegistry
    max_body: int


async def test_a_node_stops_its_port_then_its_broker_then_its_clients() -> None:
    said: list[str] = []
    broker = RecordingBroker(said)
    node = Node(prepared(), broker)
    await node.start()
    node.serving(cast(Edge, FakeEdge(said)))
    node.stop_sequence.at(Step.LET_GO, lambda _: said.append("clients go"))
    try:
        await node.stop(Deadline(1))
    finally:
        await node.release()
    assert said == ["edge shuts", "broker closes", "clients go"]


@pytest.fixture
def restore_log_level() -> Iterator[None]:
    """A reload sets the root logger's level: put it back, or later tests see INFO lines."""
    root = logging.getLogger()
    level = root.level
    yield
    root.setLevel(level)


async def test_the_port_a_node_serves_takes_its_reloads(restore_log_level: None) -> None:
    node = Node(prepared(), MemoryBroker())
    edge = FakeEdge([])
    node.serving(cast(Edge, edge))
    two = AppConfig("2", "key-two", "secret-two-0123")
    config = Config(apps=(APP, two), allowed_origins=("https://later.example.com",))
    apps = AppRegistry((APP, two))
    await node.reloader.apply(plan_reload(node.reloader.config, config), apps)
    assert edge.api.apps is apps
    assert edge.policy.allows("https://later.example.com")
    assert node.relay.apps.by_id("2") is not None
    node.relay.stop()


async def test_the_deadline_is_the_running_configuration_s_less_a_margin() -> None:
    node = Node(prepared(), MemoryBroker())
    assert 0 < node.deadline(0.5).remaining() <= node.reloader.config.shutdown.deadline - 0.5
    node.relay.stop()


class StartedBroker(MemoryBroker):
    """Says what it was started with."""

    async def start(self, deliver: Any, changed: Any = None, reported: Any = None) -> None:
        self.started_with = (deliver, changed, reported)
        await super().start(deliver, changed, reported)


async def test_start_starts_the_relay_then_its_broker_with_the_relay_s_callbacks() -> None:
    broker = StartedBroker()
    node = Node(prepared(), broker)
    assert node.relay.fanout is None  # made, not started
    await node.start()
    assert node.relay.fanout is not None
    relay = node.relay
    assert broker.started_with == (relay.deliver, relay.on_changes, relay.notify)
    node.relay.stop()


async def test_release_lets_go_of_the_listeners_once_started() -> None:
    node = Node(prepared(), MemoryBroker())
    cleaned: list[bool] = []

    async def cleanup() -> None:
        cleaned.append(True)

    node.sites.cleanup = cleanup  # type: ignore[method-assign]
    await node.start()
    await node.release()
    assert cleaned == [True]
    node.relay.stop()
