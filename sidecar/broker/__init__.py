"""The broker: how a publication reaches every process that holds subscribers."""

from sidecar.broker.base import Broker, Publication
from sidecar.broker.memory import MemoryBroker

__all__ = ["Broker", "MemoryBroker", "Publication"]
