"""Webhooks from the real `sidecar run` to a real local HTTP server: what happens on channels
(whichever worker holds the sockets) reaches the app signed, batched, and once."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.support.cluster_socket import APP, Socket, open_socket
from tests.support.observe import Samples, admin_block, sample, scrape, wait_until
from tests.support.process import SidecarProcess
from tests.support.process_tree import rss_bytes
from tests.support.webhook_receiver import ALL_KINDS, FAST_WEBHOOKS, Receiver, serve

pytestmark = pytest.mark.e2e


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    hooks = Receiver()
    runner = await serve(hooks)
    yield hooks
    await runner.cleanup()


def with_webhooks(
    start_sidecar: Callable[..., SidecarProcess], receiver: Receiver, **config: Any
) -> SidecarProcess:
    app = {
        **APP,
        "webhooks": [{"url": receiver.url, "events": ALL_KINDS}],
    }
    return start_sidecar(apps=[app], webhooks=FAST_WEBHOOKS, **config)


@pytest.mark.parametrize("workers", [1, 2])
async def test_occupied_and_vacated_reach_the_app_signed(
    start_sidecar: Callable[..., SidecarProcess], receiver: Receiver, workers: int
) -> None:
    sidecar = with_webhooks(start_sidecar, receiver, workers=workers)
    async with aiohttp.ClientSession() as session:
        first, second = await open_socket(session, sidecar), await open_socket(session, sidecar)
        await first.subscribe("room")
        await second.subscribe("room")
        assert len(await receiver.wait_for("channel_occupied", "room")) == 1
        await first.ws.close()
        await second.ws.close()
        assert len(await receiver.wait_for("channel_vacated", "room")) == 1
    assert len(receiver.named("channel_occupied", "room")) == 1  # the second socket: no news
    assert receiver.refused_signatures == 0


async def test_a_fast_resubscribe_sends_no_vacated(
    start_sidecar: Callable[..., SidecarProcess], receiver: Receiver
) -> None:
    sidecar = with_webhooks(start_sidecar, receiver)
    async with aiohttp.ClientSession() as session:
        sock = await open_socket(session, sidecar)
        await sock.subscribe("flicker")
        assert len(await receiver.wait_for("channel_occupied", "flicker")) == 1
        await sock.ws.close()
        again = await open_socket(session, sidecar)  # a page reload, well within vacate_delay
        await again.subscribe("flicker")
        await asyncio.sleep(2.0)  # past vacate_delay: a vacated would have been sent by now
        assert receiver.named("channel_vacated", "flicker") == []
        assert len(receiver.named("channel_occupied", "flicker")) == 1
        await again.ws.close()


async def test_presence_members_client_events_and_cache_miss(
    start_sidecar: Callable[..., SidecarProcess], receiver: Receiver
) -> None:
    sidecar = with_webhooks(start_sidecar, receiver)
    async with aiohttp.ClientSession() as session:
        ann, bob = await open_socket(session, sidecar), await open_socket(session, sidecar)
        await ann.join("presence-team", "ann")
        await bob.join("presence-team", "bob")
        added = await receiver.wait_for("member_added", "presence-team", 2)
        assert sorted(e["user_id"] for e in added) == ["ann", "bob"]

        await bob.send("client-typing", {"who": "bob"}, channel="presence-team")
        [event] = await receiver.wait_for("client_event", "presence-team")
        assert event["event"] == "client-typing"
        assert json.loads(event["data"]) == {"who": "bob"}
        assert event["socket_id"] == bob.socket_id
        assert event["user_id"] == "bob"

        await ann.subscribe("cache-prices")
        assert len(await receiver.wait_for("cache_miss", "cache-prices")) == 1

        await bob.ws.close()
        [removed] = await receiver.wait_for("member_removed", "presence-team")
        assert removed["user_id"] == "bob"
        await ann.ws.close()


async def test_an_endpoint_failing_at_first_gets_every_event_once(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    receiver = Receiver(fail_first=2)
    runner = await serve(receiver)
    try:
        sidecar = with_webhooks(start_sidecar, receiver)
        async with aiohttp.ClientSession() as session:
            sock = await open_socket(session, sidecar)
            await sock.subscribe("retry-me")
            assert len(await receiver.wait_for("channel_occupied", "retry-me")) == 1
            await sock.ws.close()
        assert receiver.requests >= 3
        await asyncio.sleep(0.3)
        assert len(receiver.named("channel_occupied", "retry-me")) == 1
    finally:
        await runner.cleanup()


# A public port that one client cannot wear down ---------------------------------------------


def silent_endpoint() -> socket.socket:
    """A webhook URL whose connections complete (the listen backlog) and are never answered."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    return server


async def test_big_client_events_to_an_endpoint_that_never_answers_hold_bounded_memory(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """60 KiB client events, far more than max_queue_bytes, to an endpoint that never answers:
    the process grows by about the bound, not by what was sent (the queue held every event
    before: +850 MB in the attack). The drops are counted and logged."""
    endpoint = silent_endpoint()
    try:
        app = {
            **APP,
            "webhooks": [
                {"url": f"http://127.0.0.1:{endpoint.getsockname()[1]}/hooks", "events": ALL_KINDS}
            ],
        }
        sidecar = start_sidecar(
            apps=[app],
            workers=1,
            admin=admin_block(),
            webhooks={"max_queue_bytes": "2MiB", "batch_window": 0.05},
            limits={"client_events_per_second": 200},
        )
        assert sidecar.proc is not None
        data = json.dumps({"blob": "x" * (60 * 1024 - 16)})
        async with aiohttp.ClientSession() as session:
            senders = [await open_socket(session, sidecar) for _ in range(2)]
            for n, sock in enumerate(senders):
                await sock.subscribe(f"private-big-{n}")
            await asyncio.sleep(0.5)
            before = rss_bytes(sidecar.proc.pid)

            async def send(n: int, sock: Socket) -> None:
                for _ in range(BIG_EVENTS // 2):  # 100 a second each, under the limit
                    await sock.send("client-big", data, channel=f"private-big-{n}")
                    await asyncio.sleep(0.01)

            await asyncio.gather(*(send(n, sock) for n, sock in enumerate(senders)))
            samples = await wait_until(lambda: dropped_full(sidecar, BIG_EVENTS // 2))
            after = rss_bytes(sidecar.proc.pid)
        # Sent: 1,000 events, 60 MiB. Held: 2 MiB and the request in flight; the rest is the
        # TLS and frame buffers, the allocator's slack.
        assert after - before < 30 * 1024 * 1024, (before, after)
        assert sample(samples, "sidecar_webhook_events_dropped_total", reason="full") > 900
        [line] = await sidecar.wait_for_log(lambda e: "webhook queue full" in e.get("msg", ""))
        assert line["classes"]["client_events"] > 0  # the first drop, then once a minute
        assert "blob" not in sidecar.stderr()
    finally:
        endpoint.close()


BIG_EVENTS = 1000


async def dropped_full(sidecar: SidecarProcess, at_least: int) -> Samples | None:
    samples = await scrape(sidecar)
    name = "sidecar_webhook_events_dropped_total"
    if samples.get((name, (("reason", "full"),)), 0) >= at_least:
        return samples
    return None


class GatedReceiver(Receiver):
    """An endpoint that hangs every request until `gate` opens: down, then back."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def handle(self, request: web.Request) -> web.Response:
        await self.gate.wait()
        return await super().handle(request)


async def test_a_member_added_survives_a_churn_of_fresh_public_channels(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """An anonymous client subscribes to many fresh public channels while the endpoint is down;
    a user joining a presence room meanwhile still gets its member_added to the app (it was
    dropped as "full" behind the flood before)."""
    receiver = GatedReceiver()
    runner = await serve(receiver)
    try:
        app = {
            **APP,
            "webhooks": [{"url": receiver.url, "events": ALL_KINDS}],
        }
        settings = {"batch_window": 0.05, "batch_max_events": 5, "queue_limit": 20}
        sidecar = start_sidecar(apps=[app], webhooks={**settings, "timeout": 60})
        async with aiohttp.ClientSession() as session:
            anonymous, ann = (
                await open_socket(session, sidecar),
                await open_socket(session, sidecar),
            )
            for i in range(CHURN):
                await anonymous.subscribe(f"fresh-{i}")
                await asyncio.sleep(0.01)  # under any subscription rate limit
            await ann.join("presence-room", "ann")
            await sidecar.wait_for_log(lambda e: "webhook queue full" in e.get("msg", ""))
            receiver.gate.set()
            [added] = await receiver.wait_for("member_added", "presence-room")
            assert added["user_id"] == "ann"
            # The flood was cut at its own budget: most of the fresh channels were not sent.
            assert len(receiver.named("channel_occupied")) <= 20 + 5
    finally:
        receiver.gate.set()
        await runner.cleanup()


CHURN = 60
