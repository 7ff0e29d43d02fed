"""A relay of its own for unit tests: it talks to itself through a memory broker.

The relay never makes its broker (sidecar/engine/broker/factory.py does, for the servers); tests
that want one relay alone get it here, made the way single.py makes it.
"""

from __future__ import annotations

from sidecar.config.apps import AppRegistry
from sidecar.config.model import BrokerConfig, LimitsConfig
from sidecar.engine.broker.factory import make_broker
from sidecar.engine.broker.memory import MemoryBroker
from sidecar.engine.relay import Relay


def local_relay(apps: AppRegistry, limits: LimitsConfig) -> Relay:
    """A relay with a memory broker of its own, not started (start it with start_local)."""
    return Relay(apps, limits, make_broker("single", BrokerConfig()))


def start_local(relay: Relay) -> None:
    """relay.start(), and its memory broker bound to it, as run_single does (on the loop)."""
    relay.start()
    assert isinstance(relay.broker, MemoryBroker)
    relay.broker.bind(relay.deliver, relay.on_changes, relay.notify)
