"""Big payloads cost memory once, not once per subscriber.

An 8 MiB event to 100 subscribers would take 800 MiB if every queue held its own copy. The
relay encodes it once and every queue holds the same bytes, feeding each socket in slices as
it drains: the process grows by a few payloads, whatever the number of subscribers.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Callable

import aiohttp
import pytest

from sidecar.api.client import SidecarClient
from tests.support.process import SidecarProcess
from tests.support.process_tree import rss_bytes

pytestmark = pytest.mark.e2e

PAYLOAD = 8 * 1024 * 1024
SUBSCRIBERS = 100
# The supervisor decodes and re-encodes the data (about 3 payloads at its peak), each worker holds
# one copy from its pipe and the transports' slices; allow allocator slack. A copy per
# subscriber would be 100 payloads.
MAX_GROWTH = 10 * PAYLOAD


@pytest.mark.parametrize("tls", [False, True], ids=["plaintext", "tls"])
async def test_8mib_event_to_100_subscribers_costs_a_few_payloads(
    start_sidecar: Callable[..., SidecarProcess], tls: bool
) -> None:
    overrides = {} if tls else {"tls": {"mode": "off", "dir": "certs"}}
    sidecar = start_sidecar(workers=2, **overrides)
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    url = sidecar.ws_url() if tls else sidecar.ws_url().replace("wss://", "ws://", 1)
    ctx = ssl.create_default_context(cafile=str(sidecar.cert)) if tls else False
    async with aiohttp.ClientSession() as session:
        sockets = [
            await session.ws_connect(url, ssl=ctx, max_msg_size=0) for _ in range(SUBSCRIBERS)
        ]
        for ws in sockets:
            await ws.receive_str(timeout=5)
            await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "big"}})
            await ws.receive_str(timeout=5)
        await asyncio.sleep(0.3)
        before = rss_bytes(pid)
        peak = before
        sampling = True

        def sample() -> None:
            nonlocal peak
            while sampling:
                peak = max(peak, rss_bytes(pid))
                time.sleep(0.002)

        sampler = threading.Thread(target=sample)
        sampler.start()
        payload = "p" * PAYLOAD

        def publish() -> None:
            with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
                client.trigger("big", "blob", payload)

        try:
            await asyncio.to_thread(publish)
            frames = await asyncio.gather(*(ws.receive_str(timeout=60) for ws in sockets))
        finally:
            sampling = False
            sampler.join()
        assert all(json.loads(frame)["data"] == payload for frame in frames)
        growth = peak - before
        assert growth < MAX_GROWTH, f"grew {growth / PAYLOAD:.1f} payloads"
        for ws in sockets:
            await ws.close()
