"""Which nodes of a cluster are alive, in Redis: heartbeats, sweeping the dead, self-eviction.

Every `heartbeat` seconds a node refreshes its key `{prefix}:node:{n}:alive` (its node id, a
time to live of 3 heartbeats), its score in the sorted set `{prefix}:nodes` (last seen, on
Redis's clock) and its info hash `{prefix}:node:{n}:info` (node id, host, pid, start time,
workers: what `sidecar status` lists). It then looks at the listed nodes: one whose key is gone
is swept by one survivor (the first to take `{prefix}:sweep:{n}` with SET NX), which says so to
every replica (`publish_gone(n)`: the hub puts `NodeGone(n)` in the cluster's log) and then
takes it off the list. The sweep lock outlives the sweep by far: it is also the tombstone by
which a swept node that comes back learns it was swept.

Whom to sweep, and whether a node whose own key lapsed puts it back or gives up, is decided by
the rules in liveness_rules.py (the Redis-pause guard). A swept node calls `on_evicted`: the hub
closes its clients with 4200 and joins again as a new node.

Every Redis call has a deadline; the task never dies of an error and logs once per outage.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio
from redis.exceptions import RedisError
from redis.typing import EncodableT, FieldT

from sidecar.engine.broker.liveness_rules import HEALTHY_BEATS, KeyLapsed, LivenessRules

log = logging.getLogger("sidecar.cluster")

# Seconds a Redis call may take before the round gives up (shorter with a short heartbeat, so a
# stuck call cannot outlast the key it refreshes).
CALL_TIMEOUT = 1.0
# The sweep lock (and tombstone) lives this long: a swept node paused for less finds it.
TOMBSTONE_SECONDS = 3600.0


@dataclasses.dataclass(frozen=True, slots=True)
class LiveNode:
    """One node as `sidecar status` shows it."""

    node_num: int
    node_id: str
    host: str
    pid: int
    started: float  # Unix time
    workers: int
    last_seen: float  # Unix time, on Redis's clock

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class NodeLiveness:
    def __init__(
        self,
        redis: redis.asyncio.Redis,
        prefix: str,
        node_num: int,
        node_id: str,
        heartbeat: float,
        publish_gone: Callable[[int], Awaitable[None]],
        on_evicted: Callable[[], None],
        *,
        workers: int = 0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.node_num = node_num
        self.node_id = node_id
        self.heartbeat = heartbeat
        self.publish_gone = publish_gone
        self.on_evicted = on_evicted
        self.rules = LivenessRules(node_num, heartbeat)
        self.timeout = min(CALL_TIMEOUT, heartbeat)
        self.ttl_ms = int(HEALTHY_BEATS * heartbeat * 1000)
        self.info: dict[FieldT, EncodableT] = {
            "node_id": node_id,
            "host": socket.gethostname(),
            "pid": str(os.getpid()),
            "started": repr(time.time()),
            "workers": str(workers),
        }
        self._nodes: dict[int, LiveNode] = {}
        self._scores: dict[int, float] = {}  # node -> last seen (ms, Redis's clock)
        self._registered = False
        self._failing = False
        self._task: asyncio.Task[None] | None = None
        self._stopping = False

    # Keys ---------------------------------------------------------------------------------

    @property
    def nodes_key(self) -> str:
        return f"{self.prefix}:nodes"

    def alive_key(self, node_num: int) -> str:
        return f"{self.prefix}:node:{node_num}:alive"

    def info_key(self, node_num: int) -> str:
        return f"{self.prefix}:node:{node_num}:info"

    def sweep_key(self, node_num: int) -> str:
        return f"{self.prefix}:sweep:{node_num}"

    # Lifecycle -----------------------------------------------------------------------------

    async def start(self) -> None:
        """The first heartbeat now (so this node is listed before it serves), then a task."""
        await self.beat()
        self._task = asyncio.create_task(self._run(), name=f"liveness-{self.node_num}")

    async def stop(self) -> None:
        """Stop beating and drop the key: the others sweep what this node may have left."""
        self._stopping = True
        if self._task is not None:
            # redis-py may swallow a cancellation that lands inside a call: the flag ends the
            # loop at its next turn anyway, and the wait is bounded.
            self._task.cancel()
            await asyncio.wait({self._task}, timeout=self.timeout + self.heartbeat)
            self._task = None
        if not self.rules.evicted:
            with contextlib.suppress(RedisError, OSError, TimeoutError):
                async with asyncio.timeout(self.timeout):
                    await self.redis.delete(self.alive_key(self.node_num))

    def node_gone(self, node_num: int) -> None:
        """The hub applied `NodeGone(node_num)` from the log; about this node: evicted."""
        was = self.rules.evicted
        self._nodes.pop(node_num, None)
        if self.rules.told_gone(node_num) and not was:
            self._evicted()

    def live_nodes(self) -> list[LiveNode]:
        """The nodes listed with a live key at the last round, by start time."""
        return sorted(self._nodes.values(), key=lambda node: (node.started, node.node_num))

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat
        while not self.rules.evicted and not self._stopping:
            await asyncio.sleep(max(0.0, next_beat - loop.time()))
            # On schedule; a round that ran late (this process paused) does not bunch up beats.
            next_beat = max(next_beat + self.heartbeat, loop.time())
            try:
                await self.beat()
            except Exception:  # the task never dies: a bug here must not stop the heartbeats
                log.exception("cluster liveness round failed")

    # One round ------------------------------------------------------------------------------

    async def beat(self) -> None:
        """Refresh this node's key, then look at the others and sweep whom the rules say."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.timeout):
                alive, now_ms = await self._refresh()
            if alive is None:  # evicted
                return
            finished = time.monotonic()
        except (RedisError, OSError, TimeoutError) as exc:
            self.rules.beat_failed()
            if not self._failing:
                self._failing = True
                log.warning(
                    "cluster heartbeat failed (Redis: %s); trying again", type(exc).__name__
                )
            return
        if self._failing:
            self._failing = False
            log.info("cluster heartbeat back")
        self.rules.beat_succeeded(started, finished)
        try:
            async with asyncio.timeout(self.timeout):
                await self._look(alive, now_ms)
        except (RedisError, OSError, TimeoutError):
            return  # the next round looks again
        for node_num in self.rules.to_sweep(time.monotonic(), alive):
            await self._sweep(node_num)

    async def _refresh(self) -> tuple[dict[int, bool] | None, int]:
        """This node's key and listing refreshed; which listed nodes have a key, Redis's time."""
        key = self.alive_key(self.node_num)
        if self._registered:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(key, self.node_id, px=self.ttl_ms, xx=True)
                pipe.exists(self.sweep_key(self.node_num))
                kept, tombstoned = await pipe.execute()
            if not kept and self.rules.key_lapsed(bool(tombstoned)) is KeyLapsed.EVICTED:
                self._evicted()
                return None, 0
            if not kept:
                log.warning("cluster: this node's key had lapsed (Redis paused?); set again")
                await self.redis.set(key, self.node_id, px=self.ttl_ms)
        else:
            await self.redis.set(key, self.node_id, px=self.ttl_ms)
            self._registered = True
        seconds, micros = await self.redis.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        info_key = self.info_key(self.node_num)
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zadd(self.nodes_key, {str(self.node_num): now_ms})
            pipe.hset(info_key, mapping=self.info)
            pipe.pexpire(info_key, self.ttl_ms)
            pipe.zrange(self.nodes_key, 0, -1, withscores=True)
            *_, listed = await pipe.execute()
        scores = {int(_text(member)): float(score) for member, score in listed}
        others = [n for n in scores if n != self.node_num]
        async with self.redis.pipeline(transaction=False) as pipe:
            for node_num in others:
                pipe.exists(self.alive_key(node_num))
            found = await pipe.execute() if others else []
        alive = {self.node_num: True} | {n: bool(up) for n, up in zip(others, found, strict=True)}
        self._scores = scores
        return alive, now_ms

    async def _look(self, alive: dict[int, bool], now_ms: int) -> None:
        """The live nodes' info for `live_nodes()` (fetched once per node)."""
        live = [n for n, up in alive.items() if up]
        unknown = [n for n in live if n not in self._nodes]
        async with self.redis.pipeline(transaction=False) as pipe:
            for node_num in unknown:
                pipe.hgetall(self.info_key(node_num))
            infos = await pipe.execute() if unknown else []
        nodes = {n: self._nodes[n] for n in live if n in self._nodes}
        for node_num, info in zip(unknown, infos, strict=True):
            nodes[node_num] = _live_node(node_num, info, 0.0)
        for node_num, node in nodes.items():
            seen = self._scores.get(node_num, now_ms) / 1000
            nodes[node_num] = dataclasses.replace(node, last_seen=seen)
        self._nodes = nodes

    async def _sweep(self, node_num: int) -> None:
        """Sweep one node if no other survivor does: lock (tombstone), NodeGone, delist."""
        try:
            async with asyncio.timeout(self.timeout):
                locked = await self.redis.set(
                    self.sweep_key(node_num),
                    self.node_id,
                    nx=True,
                    px=int(max(TOMBSTONE_SECONDS, 100 * self.heartbeat) * 1000),
                )
        except (RedisError, OSError, TimeoutError):
            return
        if locked:
            try:
                await self.publish_gone(node_num)
            except Exception:
                log.exception("cluster: could not announce node %d gone; another will", node_num)
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    async with asyncio.timeout(self.timeout):
                        await self.redis.delete(self.sweep_key(node_num))
                return
            log.warning("cluster: node %d stopped beating; swept", node_num)
        try:
            async with asyncio.timeout(self.timeout):
                async with self.redis.pipeline(transaction=False) as pipe:
                    pipe.zrem(self.nodes_key, str(node_num))
                    pipe.delete(self.info_key(node_num))
                    await pipe.execute()
        except (RedisError, OSError, TimeoutError):
            pass  # still listed, key still gone: the lock keeps it from a second NodeGone
        self.rules.forget([node_num])

    def _evicted(self) -> None:
        log.warning("cluster: this node was swept by the others; joining again as a new node")
        try:
            self.on_evicted()
        except Exception:
            log.exception("cluster: on_evicted failed")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _live_node(node_num: int, raw: dict[Any, Any], last_seen: float) -> LiveNode:
    info = {_text(k): _text(v) for k, v in raw.items()}

    def number(name: str) -> float:
        try:
            return float(info.get(name, 0))
        except ValueError:
            return 0.0

    return LiveNode(
        node_num=node_num,
        node_id=info.get("node_id", str(node_num)),
        host=info.get("host", "?"),
        pid=int(number("pid")),
        started=number("started"),
        workers=int(number("workers")),
        last_seen=last_seen,
    )
