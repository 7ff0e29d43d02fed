"""A node's two connections to Redis: commands, and pub/sub; down and back without a hang.

The hub (sidecar/engine/broker/redis.py) is the node's only Redis client. It talks through
this link:
- `publish_many` sends PUBLISHes in one round trip (a pipeline) on the command client, and
  raises `LinkDown` at once when the link is down or within `timeout` when Redis does not
  answer (a paused Redis accepts connections but says nothing): never a hang. No command is
  retried: a retried PUBLISH could be delivered twice.
- `subscribe`/`unsubscribe` change the pub/sub connection's channels and return once Redis has
  confirmed them (each channel of a SUBSCRIBE is confirmed in order, on the same connection as
  the messages, so a message published after the confirmation is received).
- Messages are handed to `on_message(channel, data)` as they are read: the callback never
  waits (the hub queues its pipe writes), so the reader never blocks behind a worker.

The link reconnects forever, with back-off from 0.1 s doubling to 2 s. Once connected again it
subscribes every channel it had, then calls `on_up` (the hub registers the node again and
shares its state) and only then says `up`. A pub/sub connection silent for `probe_interval` is
sent a PING; no answer within `timeout` and it is rebuilt (a connection can look healthy and
receive nothing). A failed command also has the pub/sub connection checked at once.

`redis` (the command client) is shared with the node's liveness (cluster_nodes.py), whose
commands carry the same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, ConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from sidecar.config.broker import masked_url, redis_address
from sidecar.config.values import ConfigError

log = logging.getLogger("sidecar.broker")

# Every command's deadline: a publisher is answered 503 after this long at most.
COMMAND_TIMEOUT = 1.0
BACKOFF_FIRST = 0.1
BACKOFF_MAX = 2.0
# Silence on the pub/sub connection this long and it is probed with a PING.
PROBE_INTERVAL = 5.0
# Channels per SUBSCRIBE/UNSUBSCRIBE command: a few hundred keeps each command small.
SUBSCRIBE_BATCH = 500


class LinkDown(Exception):
    """Redis cannot be reached now (or did not answer in time)."""


class RedisLink:
    def __init__(
        self,
        url: str,
        on_message: Callable[[bytes, bytes], None],
        *,
        timeout: float = COMMAND_TIMEOUT,
        probe_interval: float = PROBE_INTERVAL,
        client_name: str | None = None,
    ) -> None:
        self.address = redis_address(url)
        self.shown_url = masked_url(url)
        self.timeout = timeout
        self.probe_interval = probe_interval
        self._on_message = on_message
        options: dict[str, Any] = {
            "socket_connect_timeout": timeout,
            "retry": Retry(NoBackoff(), 0),
            "health_check_interval": 0,
            # RESP2 everywhere: pub/sub messages are then plain replies on their connection
            # (redis-py 8 speaks RESP3 by default, where they are pushes read differently).
            "protocol": 2,
        }
        if client_name is not None:
            options["client_name"] = client_name
        self.redis = aioredis.Redis.from_url(url, socket_timeout=timeout, **options)
        # The pub/sub connection waits for messages without a deadline of its own: silence is
        # what the probe is for.
        self._pubsub_pool = ConnectionPool.from_url(url, socket_timeout=None, **options)
        self._conn: AbstractConnection | None = None
        self._confirmations: deque[list[Any]] = deque()  # [channels left, future], in order
        self._pong: asyncio.Future[None] | None = None
        self._heard = time.monotonic()
        self.channels: set[bytes] = set()  # what the pub/sub connection is to be subscribed to
        self.connected = False  # the pub/sub connection is there (on_up may still be running)
        self.up_event = asyncio.Event()  # set while up: connected, subscribed again, on_up done
        self.closing = False
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()  # a failure seen elsewhere: check the connection now
        self._session_up = False  # the current connection got as far as `up`
        # Called (and awaited) once connected again and subscribed, before `up`; raising
        # makes that attempt fail (tried again after back-off).
        self.on_up: Callable[[], Awaitable[None]] | None = None
        self.on_down: Callable[[], None] | None = None
        # Counters for metrics: round trips of publish_many, reconnects after a loss.
        self.round_trips = 0
        self.reconnects = 0
        self.on_round_trip: Callable[[float], None] | None = None

    @property
    def up(self) -> bool:
        return self.up_event.is_set()

    # Lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect (raising LinkDown when Redis does not answer now), then stay connected."""
        try:
            await asyncio.wait_for(self.redis.ping(), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._close_clients()
            raise LinkDown(describe(exc)) from None
        first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(first))
        await first

    async def close(self) -> None:
        self.closing = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_clients()

    async def _close_clients(self) -> None:
        with contextlib.suppress(Exception):
            await self.redis.aclose()
        with contextlib.suppress(Exception):
            await self._pubsub_pool.disconnect()

    # Commands ----------------------------------------------------------------------------

    async def publish_many(
        self,
        messages: Sequence[tuple[bytes, bytes]],
        sets: Sequence[tuple[bytes, bytes]] = (),
        ttl_ms: int = 0,
    ) -> None:
        """SET each of `sets` (key, value) for `ttl_ms`, then PUBLISH each (channel, data), in
        order, in one round trip."""
        if not self.connected:
            raise LinkDown("not connected to Redis")
        started = time.monotonic()
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for key, value in sets:
                    pipe.set(key, value, px=ttl_ms)
                for channel, data in messages:
                    pipe.publish(channel, data)
                await asyncio.wait_for(pipe.execute(), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._wake.set()
            raise LinkDown(describe(exc)) from None
        self.round_trips += 1
        if self.on_round_trip is not None:
            self.on_round_trip(time.monotonic() - started)

    async def get_many(self, keys: Sequence[bytes]) -> list[bytes | None]:
        """GET each key, in one round trip."""
        try:
            values = await asyncio.wait_for(self.redis.mget(keys), self.timeout)
        except (RedisError, OSError, TimeoutError) as exc:
            self._wake.set()
            raise LinkDown(describe(exc)) from None
        return cast(list[bytes | None], values)  # bytes: decode_responses is off

    async def subscribe(self, channels: Iterable[bytes]) -> None:
        """Subscribe, and return once Redis confirmed. Down: kept, and raises LinkDown (the
        channels are subscribed on reconnecting)."""
        new = [c for c in channels if c not in self.channels]
        self.channels.update(new)
        await self._command("SUBSCRIBE", new)

    async def unsubscribe(self, channels: Iterable[bytes]) -> None:
        gone = [c for c in channels if c in self.channels]
        self.channels.difference_update(gone)
        await self._command("UNSUBSCRIBE", gone)

    async def _command(self, command: str, channels: list[bytes]) -> None:
        if not channels:
            return
        conn = self._conn
        if conn is None:
            raise LinkDown("not connected to Redis")
        waits = []
        for start in range(0, len(channels), SUBSCRIBE_BATCH):
            batch = channels[start : start + SUBSCRIBE_BATCH]
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._confirmations.append([len(batch), future])
            waits.append(future)
            try:
                await conn.send_command(command, *batch)
            except (RedisError, OSError) as exc:
                self._wake.set()
                raise LinkDown(describe(exc)) from None
        try:
            await asyncio.wait_for(asyncio.gather(*waits), self.timeout)
        except TimeoutError:
            self._wake.set()
            raise LinkDown(f"Redis did not confirm {command} in time") from None

    # The pub/sub connection --------------------------------------------------------------

    async def _run(self, first: asyncio.Future[None]) -> None:
        delay = BACKOFF_FIRST
        while not self.closing:
            self._session_up = False
            try:
                await self._session(first)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not first.done():
                    first.set_exception(LinkDown(describe(exc)))
                    return
                log.warning(
                    "redis connection lost; reconnecting",
                    extra={"redis": self.address, "reason": describe(exc), "in_s": delay},
                )
            finally:
                await self._lost()
            if self._session_up:  # lost after it was up: start the back-off again
                delay = BACKOFF_FIRST
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)

    async def _session(self, first: asyncio.Future[None]) -> None:
        conn = self._pubsub_pool.make_connection()
        await asyncio.wait_for(conn.connect(), self.timeout)
        self._conn = conn
        self._heard = time.monotonic()
        reader = asyncio.create_task(self._read(conn))
        try:
            self.connected = True
            await self._command("SUBSCRIBE", sorted(self.channels))
            if self.on_up is not None:
                await self.on_up()
            self._session_up = True
            self.up_event.set()
            if not first.done():
                first.set_result(None)
            else:
                self.reconnects += 1
                log.info("redis connection back", extra={"redis": self.address})
            await self._watch(conn, reader)
        finally:
            reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader

    async def _watch(self, conn: AbstractConnection, reader: asyncio.Task[None]) -> None:
        """Until the reader fails or a probe goes unanswered."""
        while True:
            self._wake.clear()
            wake = asyncio.create_task(self._wake.wait())
            done, _ = await asyncio.wait(
                {reader, wake}, timeout=self.probe_interval, return_when=asyncio.FIRST_COMPLETED
            )
            wake.cancel()
            if reader in done:
                reader.result()  # raises what ended it
                raise LinkDown("the pub/sub connection closed")
            if wake in done or time.monotonic() - self._heard >= self.probe_interval:
                await self._probe(conn)

    async def _probe(self, conn: AbstractConnection) -> None:
        self._pong = asyncio.get_running_loop().create_future()
        try:
            await conn.send_command("PING")
            await asyncio.wait_for(self._pong, self.timeout)
        except TimeoutError:
            raise LinkDown("Redis did not answer a PING in time") from None
        finally:
            self._pong = None

    async def _read(self, conn: AbstractConnection) -> None:
        on_message = self._on_message
        while True:
            reply = await conn.read_response()
            self._heard = time.monotonic()
            if not isinstance(reply, list) or not reply:
                continue
            kind = reply[0]
            if kind == b"message":
                on_message(reply[1], reply[2])
            elif kind in (b"subscribe", b"unsubscribe"):
                self._confirmed()
            elif kind == b"pong" and self._pong is not None and not self._pong.done():
                self._pong.set_result(None)

    def _confirmed(self) -> None:
        if not self._confirmations:
            return
        head = self._confirmations[0]
        head[0] -= 1
        if head[0] <= 0:
            self._confirmations.popleft()
            if not head[1].done():
                head[1].set_result(None)

    async def _lost(self) -> None:
        was_up = self.up
        self.connected = False
        self.up_event.clear()
        conn, self._conn = self._conn, None
        while self._confirmations:
            _, future = self._confirmations.popleft()
            if not future.done():
                future.set_exception(LinkDown("the pub/sub connection was lost"))
                future.exception()  # retrieved: nobody may be waiting any more
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.disconnect(nowait=True)
        if was_up and self.on_down is not None:
            self.on_down()


def check_reachable(url: str, timeout: float = COMMAND_TIMEOUT) -> None:
    """At start, before anything else: Redis answers a PING at `url`, or ConfigError naming
    broker.url and the address (never the password). Runs its own short event loop."""

    async def ping() -> None:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            retry=Retry(NoBackoff(), 0),
            protocol=2,
        )
        try:
            await asyncio.wait_for(client.ping(), timeout)
        finally:
            await client.aclose()

    try:
        asyncio.run(ping())
    except (RedisError, OSError, TimeoutError) as exc:
        raise ConfigError(
            "broker.url",
            f"cannot reach Redis at {redis_address(url)} ({masked_url(url)}): {describe(exc)}",
        ) from None


def describe(exc: BaseException) -> str:
    """One line, no secret: what went wrong talking to Redis."""
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
