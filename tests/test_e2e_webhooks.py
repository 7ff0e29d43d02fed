"""Webhooks from the real `sidecar run` to a real local HTTP server: what happens on channels
(whichever worker holds the sockets) reaches the app signed, batched, and once."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pusher
import pytest
from aiohttp import web

from tests.support import SidecarProcess, free_port
from tests.test_e2e_cluster_state import APP, Socket

pytestmark = pytest.mark.e2e

VALIDATOR = pusher.Pusher(app_id=APP["id"], key=APP["key"], secret=APP["secret"])
ALL_KINDS = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
]


class Receiver:
    """The app's webhook endpoint: keeps every event whose signature checks out."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.refused_signatures = 0
        self.fail_first = fail_first
        self.port = free_port()

    async def handle(self, request: web.Request) -> web.Response:
        self.requests += 1
        if self.requests <= self.fail_first:
            return web.Response(status=503)
        body = await request.text()
        checked = VALIDATOR.validate_webhook(
            request.headers["X-Pusher-Key"], request.headers["X-Pusher-Signature"], body
        )
        if checked is None:
            self.refused_signatures += 1
            return web.Response(status=401)
        self.events.extend(checked["events"])
        return web.Response(text="ok")

    def named(self, name: str, channel: str | None = None) -> list[dict[str, Any]]:
        return [
            e
            for e in self.events
            if e["name"] == name and (channel is None or e.get("channel") == channel)
        ]

    async def wait_for(self, name: str, channel: str, count: int = 1) -> list[dict[str, Any]]:
        for _ in range(200):
            if len(self.named(name, channel)) >= count:
                break
            await asyncio.sleep(0.05)
        return self.named(name, channel)


async def serve(receiver: Receiver) -> web.AppRunner:
    app = web.Application()
    app.router.add_post("/hooks", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", receiver.port).start()
    return runner


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
        "webhooks": [{"url": f"http://127.0.0.1:{receiver.port}/hooks", "events": ALL_KINDS}],
    }
    settings = {"batch_window": 0.05, "vacate_delay": 1.0, "retry_initial_delay": 0.1}
    return start_sidecar(apps=[app], webhooks=settings, **config)


async def connect(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> Socket:
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    ws = await session.ws_connect(sidecar.ws_url(APP["key"]), ssl=ctx)
    established = json.loads(await ws.receive_str(timeout=5))
    return Socket(ws, json.loads(established["data"])["socket_id"])


@pytest.mark.parametrize("workers", [1, 2])
async def test_occupied_and_vacated_reach_the_app_signed(
    start_sidecar: Callable[..., SidecarProcess], receiver: Receiver, workers: int
) -> None:
    sidecar = with_webhooks(start_sidecar, receiver, workers=workers)
    async with aiohttp.ClientSession() as session:
        first, second = await connect(session, sidecar), await connect(session, sidecar)
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
        sock = await connect(session, sidecar)
        await sock.subscribe("flicker")
        assert len(await receiver.wait_for("channel_occupied", "flicker")) == 1
        await sock.ws.close()
        again = await connect(session, sidecar)  # a page reload, well within vacate_delay
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
        ann, bob = await connect(session, sidecar), await connect(session, sidecar)
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
            sock = await connect(session, sidecar)
            await sock.subscribe("retry-me")
            assert len(await receiver.wait_for("channel_occupied", "retry-me")) == 1
            await sock.ws.close()
        assert receiver.requests >= 3
        await asyncio.sleep(0.3)
        assert len(receiver.named("channel_occupied", "retry-me")) == 1
    finally:
        await runner.cleanup()
