"""The broker: how a publication reaches every process that holds subscribers."""

from sidecar.engine.broker.base import Broker, Publication
from sidecar.engine.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "Publication"]
