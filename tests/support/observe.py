"""Helpers for the end-to-end tests of the admin listener: scrape, read samples, subscribe."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Callable
from typing import Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from tests.support.process import SidecarProcess, free_port


def admin_block(**extra: Any) -> dict[str, Any]:
    return {"host": "127.0.0.1", "port": free_port(), **extra}


def admin_url(sidecar: SidecarProcess, path: str) -> str:
    return f"http://127.0.0.1:{sidecar.config['admin']['port']}{path}"


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def scrape(sidecar: SidecarProcess, headers: dict[str, str] | None = None) -> Samples:
    """Every sample of /metrics, parsed by prometheus_client: (name, labels) -> value."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(sidecar, "/metrics"), headers=headers) as response,
    ):
        assert response.status == 200, await response.text()
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return samples


def sample(samples: Samples, name: str, **labels: str) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def total(samples: Samples, name: str) -> float:
    return sum(v for (n, _), v in samples.items() if n == name)


async def get_json(sidecar: SidecarProcess, path: str) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(sidecar, path)) as response,
    ):
        return response.status, await response.json()


async def wait_until(predicate: Callable[[], Any], timeout: float = 15.0) -> Any:
    """Poll an async predicate until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout}s: {value!r}")
        await asyncio.sleep(0.1)


async def wait_ready(sidecar: SidecarProcess) -> dict[str, Any]:
    async def ready() -> Any:
        try:
            status, body = await get_json(sidecar, "/readyz")
        except aiohttp.ClientError:
            return None
        return body if status == 200 else None

    return await wait_until(ready)


class Subscribers:
    """N raw WebSocket clients subscribed to one channel, counting the events they get."""

    def __init__(self, sidecar: SidecarProcess) -> None:
        self.sidecar = sidecar
        self.session = aiohttp.ClientSession()
        self.sockets: list[aiohttp.ClientWebSocketResponse] = []

    async def open(self, count: int, channel: str) -> None:
        ctx = ssl.create_default_context(cafile=str(self.sidecar.cert))
        for _ in range(count):
            ws = await self.session.ws_connect(self.sidecar.ws_url(), ssl=ctx)
            established = json.loads(await ws.receive_str(timeout=5))
            assert established["event"] == "pusher:connection_established"
            await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
            reply = json.loads(await ws.receive_str(timeout=5))
            assert reply["event"] == "pusher_internal:subscription_succeeded"
            self.sockets.append(ws)

    async def receive_all(self, events: int) -> None:
        """Each client reads `events` events (and nothing else is expected)."""
        for ws in self.sockets:
            for _ in range(events):
                frame = json.loads(await ws.receive_str(timeout=10))
                assert not frame["event"].startswith("pusher"), frame

    async def close(self) -> None:
        for ws in self.sockets:
            await ws.close()
        self.sockets.clear()
        await self.session.close()
