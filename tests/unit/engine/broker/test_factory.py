"""sidecar.engine.broker.factory: the broker for each role, from the configuration."""

from __future__ import annotations

import socket

import pytest

from sidecar.config.model import BrokerConfig
from sidecar.engine.broker.factory import make_broker
from sidecar.engine.broker.memory import MemoryBroker
from sidecar.engine.broker.pipe import HubBroker, WorkerBroker
from sidecar.engine.broker.redis import RedisHubBroker


def test_a_single_process_gets_the_memory_broker() -> None:
    assert isinstance(make_broker("single", BrokerConfig()), MemoryBroker)


def test_the_supervisor_gets_the_hub() -> None:
    assert isinstance(make_broker("hub", BrokerConfig()), HubBroker)


def test_a_worker_gets_its_end_of_the_pipe() -> None:
    ours, theirs = socket.socketpair()
    try:
        assert isinstance(make_broker("worker", BrokerConfig(), pipe=ours), WorkerBroker)
    finally:
        ours.close()
        theirs.close()


def test_a_worker_without_its_pipe_is_refused() -> None:
    with pytest.raises(ValueError, match="pipe"):
        make_broker("worker", BrokerConfig())  # type: ignore[call-overload]  # the mistake tested


def test_an_unknown_role_is_refused() -> None:
    with pytest.raises(ValueError, match="role"):
        make_broker("edge", BrokerConfig())  # type: ignore[call-overload]  # the mistake tested


def test_a_kind_this_version_does_not_have_is_refused() -> None:
    with pytest.raises(ValueError, match="kafka"):
        make_broker("hub", BrokerConfig(kind="kafka"))


REDIS = BrokerConfig(kind="redis", url="redis://127.0.0.1:1/0")


def test_with_redis_the_supervisor_gets_the_redis_hub_and_workers_confirm() -> None:
    hub = make_broker("hub", REDIS)
    assert isinstance(hub, RedisHubBroker)
    assert hub.prefix == "sidecar"
    ours, theirs = socket.socketpair()
    try:
        worker = make_broker("worker", REDIS, pipe=ours)
        assert isinstance(worker, WorkerBroker)
        assert not worker.ready("1", "news")  # waits for the hub's READY
        plain = make_broker("worker", BrokerConfig(), pipe=ours)
        assert isinstance(plain, WorkerBroker)
        assert plain.ready("1", "news")
    finally:
        ours.close()
        theirs.close()


def test_redis_is_not_for_a_single_process() -> None:
    with pytest.raises(ValueError, match="supervisor"):
        make_broker("single", REDIS)


def test_the_servers_make_their_brokers_here_and_the_relay_makes_none() -> None:
    """The seam holds: no server and no engine module constructs a broker by hand."""
    import inspect

    from sidecar.engine import relay
    from sidecar.server import single, supervisor, worker

    for module in (relay, single, supervisor, worker):
        source = inspect.getsource(module)
        for name in ("MemoryBroker(", "HubBroker(", "WorkerBroker(", "RedisHubBroker("):
            assert name not in source, (module.__name__, name)
