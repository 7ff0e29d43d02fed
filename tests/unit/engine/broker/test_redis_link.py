"""sidecar.engine.broker.redis_link against a real redis-server the test starts, kills, pauses."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from sidecar.config.values import ConfigError
from sidecar.engine.broker.redis_link import LinkDown, RedisLink, check_reachable
from tests.support.process import free_port
from tests.support.redis_server import RedisServer
from tests.support.waiting import eventually

TIMEOUT = 0.5  # short deadlines: the faults below are found within them


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[bytes, bytes]] = []

    def __call__(self, channel: bytes, data: bytes) -> None:
        self.messages.append((channel, data))


@pytest.fixture
async def link(redis_server: RedisServer) -> AsyncIterator[tuple[RedisLink, Received]]:
    received = Received()
    link = RedisLink(redis_server.url, received, timeout=TIMEOUT, probe_interval=0.5)
    await link.start()
    yield link, received
    await link.close()


async def test_start_against_nothing_fails_at_once_naming_no_secret() -> None:
    link = RedisLink(f"redis://:hunter2@127.0.0.1:{free_port()}/0", Received(), timeout=TIMEOUT)
    started = time.monotonic()
    with pytest.raises(LinkDown) as info:
        await link.start()
    assert time.monotonic() - started < 2
    assert "hunter2" not in str(info.value)
    assert link.shown_url.startswith("redis://:***@127.0.0.1:")


async def test_published_messages_arrive_in_order_once_subscribed(
    link: tuple[RedisLink, Received],
) -> None:
    link_, received = link
    await link_.subscribe([b"a", b"b"])
    await link_.publish_many([(b"a", b"1"), (b"b", b"2"), (b"a", b"3"), (b"c", b"lost")])
    await eventually(lambda: len(received.messages) == 3)
    assert received.messages == [(b"a", b"1"), (b"b", b"2"), (b"a", b"3")]
    assert link_.round_trips == 1
    await link_.unsubscribe([b"a"])
    await link_.publish_many([(b"a", b"4"), (b"b", b"5")])
    await eventually(lambda: len(received.messages) == 4)
    assert received.messages[-1] == (b"b", b"5")


async def test_many_channels_are_subscribed_in_batches(link: tuple[RedisLink, Received]) -> None:
    link_, received = link
    channels = [f"ch{i}".encode() for i in range(1200)]
    await link_.subscribe(channels)
    await link_.publish_many([(c, c) for c in channels])
    await eventually(lambda: len(received.messages) == 1200)


async def test_redis_killed_then_back_empty_resubscribes(
    redis_server: RedisServer, link: tuple[RedisLink, Received]
) -> None:
    link_, received = link
    ups: list[bool] = []

    async def on_up() -> None:
        ups.append(True)

    link_.on_up = on_up
    downs: list[bool] = []
    link_.on_down = lambda: downs.append(True)
    await link_.subscribe([b"a"])
    redis_server.kill()
    started = time.monotonic()
    with pytest.raises(LinkDown):
        await link_.publish_many([(b"a", b"x")])
    assert time.monotonic() - started < 2 * TIMEOUT + 0.5
    await eventually(lambda: not link_.up)
    assert downs == [True]
    with pytest.raises(LinkDown):  # down: refused at once
        await link_.publish_many([(b"a", b"x")])
    redis_server.start()  # empty, same port
    await eventually(lambda: link_.up)
    assert ups == [True]
    assert link_.reconnects == 1
    assert b"a" in redis_server.command("PUBSUB", "CHANNELS")
    await link_.publish_many([(b"a", b"after")])
    await eventually(lambda: received.messages == [(b"a", b"after")])


async def test_redis_paused_refuses_within_the_deadline_then_recovers(
    redis_server: RedisServer, link: tuple[RedisLink, Received]
) -> None:
    link_, received = link
    await link_.subscribe([b"a"])
    redis_server.stop()
    try:
        started = time.monotonic()
        with pytest.raises(LinkDown):
            await link_.publish_many([(b"a", b"x")])
        assert time.monotonic() - started < TIMEOUT + 0.5
        await eventually(lambda: not link_.up, 5)
        await asyncio.sleep(1.5)  # reconnect attempts meanwhile: none may hang
    finally:
        redis_server.cont()
    await eventually(lambda: link_.up)
    await link_.publish_many([(b"a", b"after")])
    await eventually(lambda: (b"a", b"after") in received.messages)


async def test_a_killed_pubsub_connection_is_rebuilt(
    redis_server: RedisServer, link: tuple[RedisLink, Received]
) -> None:
    link_, received = link
    await link_.subscribe([b"a", b"b"])
    assert b":1" in redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
    await eventually(lambda: link_.reconnects == 1 and link_.up)
    await link_.publish_many([(b"b", b"again")])
    await eventually(lambda: received.messages == [(b"b", b"again")])


async def test_subscribe_while_down_is_refused_and_kept(
    redis_server: RedisServer, link: tuple[RedisLink, Received]
) -> None:
    link_, received = link
    redis_server.kill()
    await eventually(lambda: not link_.connected)
    with pytest.raises(LinkDown):
        await link_.subscribe([b"later"])
    redis_server.start()
    await eventually(lambda: link_.up)
    await link_.publish_many([(b"later", b"1")])
    await eventually(lambda: received.messages == [(b"later", b"1")])


def test_the_start_check_names_broker_url_and_the_address(redis_server: RedisServer) -> None:
    check_reachable(redis_server.url)  # answers: nothing raised
    port = free_port()
    with pytest.raises(ConfigError) as info:
        check_reachable(f"redis://:hunter2@127.0.0.1:{port}/0", timeout=TIMEOUT)
    assert info.value.key == "broker.url"
    assert f"127.0.0.1:{port}" in str(info.value)
    assert "hunter2" not in str(info.value)
