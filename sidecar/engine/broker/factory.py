"""The one place a broker is made: which kind, for which role, from the configuration.

Roles: `single` (one process holds everything), `hub` (the supervisor: orders what every worker
publishes and announces) and `worker` (a relay process attached to the hub by `pipe`). The
servers (sidecar/server/single.py, supervisor.py, worker.py) ask here; nothing else constructs
a broker, the relay included. With `kind: redis` the hub is redis.py's RedisHubBroker and the
workers keep the pipe (their broker confirms publications and readiness through the hub).
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any, Literal, overload

from sidecar.config.model import BrokerConfig
from sidecar.engine.broker.memory import MemoryBroker
from sidecar.engine.broker.pipe import HubBroker, WorkerBroker
from sidecar.engine.broker.redis import RedisHubBroker

Role = Literal["single", "hub", "worker"]


@overload
def make_broker(role: Literal["single"], config: BrokerConfig) -> MemoryBroker: ...
@overload
def make_broker(
    role: Literal["hub"],
    config: BrokerConfig,
    *,
    snapshot: Callable[[], Any] | None = None,
    workers: int = 0,
) -> HubBroker: ...
@overload
def make_broker(
    role: Literal["worker"], config: BrokerConfig, *, pipe: socket.socket
) -> WorkerBroker: ...
def make_broker(
    role: Role,
    config: BrokerConfig,
    *,
    pipe: socket.socket | None = None,
    snapshot: Callable[[], Any] | None = None,
    workers: int = 0,
) -> MemoryBroker | HubBroker | WorkerBroker:
    """The broker for `role`. `pipe`: a worker's end of its pipe to the hub (workers only).
    `snapshot`: the state a worker that attaches starts from (the hub only). `workers`: how
    many the node runs, as its cluster listing says (the hub, with Redis)."""
    if config.kind not in ("memory", "redis"):
        raise ValueError(f"broker.kind {config.kind!r} is not available in this version")
    redis = config.kind == "redis"
    if role == "single":
        if redis:  # the supervisor's hub is a node's one Redis client (cli.py runs one)
            raise ValueError("broker.kind redis runs a supervisor and workers, not one process")
        return MemoryBroker()
    if role == "hub":
        if redis:
            return RedisHubBroker(config, workers=workers, snapshot=snapshot)
        return HubBroker(snapshot=snapshot)
    if role == "worker":
        if pipe is None:
            raise ValueError("a worker's broker needs its pipe to the hub")
        return WorkerBroker(pipe, confirms=redis)
    raise ValueError(f"no broker for role {role!r}")
