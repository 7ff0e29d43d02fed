"""The app's webhook endpoint for end-to-end tests: a real local HTTP server that keeps every
event whose signature checks out (the webhook tests and the Redis cluster tests share it)."""

from __future__ import annotations

import asyncio
from typing import Any

import pusher
from aiohttp import web

from tests.support.cluster_socket import APP
from tests.support.process import free_port

VALIDATOR = pusher.Pusher(app_id=APP["id"], key=APP["key"], secret=APP["secret"])
ALL_KINDS = [
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
]
# `webhooks:` settings that keep the tests short: batches, vacates and retries within a second.
FAST_WEBHOOKS = {"batch_window": 0.05, "vacate_delay": 1.0, "retry_initial_delay": 0.1}


class Receiver:
    """The app's webhook endpoint: keeps every event whose signature checks out."""

    def __init__(self, fail_first: int = 0) -> None:
        self.events: list[dict[str, Any]] = []
        self.requests = 0
        self.refused_signatures = 0
        self.fail_first = fail_first
        self.port = free_port()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hooks"

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

    async def wait_for(
        self, name: str, channel: str, count: int = 1, timeout: float = 10
    ) -> list[dict[str, Any]]:
        for _ in range(int(timeout / 0.05)):
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
