"""The live dashboard in headless Chromium: after a burst of publishes the page shows the counts.

A screenshot is kept in tests/artifacts/dashboard.png. DASHBOARD_LOAD_SECONDS (default 2)
sets how long a steady load runs first, so the charts have something to draw.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from sidecar.api.client import SidecarClient
from tests.support.chromium import Chromium, require_chromium
from tests.support.observe import Subscribers, admin_url, wait_ready
from tests.support.process import ROOT, SidecarProcess, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.chromium]

ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "dashboard-token-0123456789"
LOAD_SECONDS = float(os.environ.get("DASHBOARD_LOAD_SECONDS", "2"))


def text_of(element_id: str) -> str:
    return f"document.getElementById({element_id!r}).textContent"


async def steady_load(sidecar: SidecarProcess, seconds: float, rate: float = 40) -> int:
    """Publish to a few channels at `rate` a second for `seconds`; how many were published."""
    published = 0
    with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            channel = ("news", "news", "orders", "audit")[published % 4]
            publisher.trigger(channel, "tick", {"n": published, "pad": "x" * (published % 300)})
            published += 1
            await asyncio.sleep(1 / rate)
    return published


async def test_dashboard_shows_new_counts_after_a_burst(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    require_chromium()
    sidecar = start_sidecar(
        admin={"host": "127.0.0.1", "port": admin_port(), "token": TOKEN}, workers="auto"
    )
    await wait_ready(sidecar)
    news, orders, audit = Subscribers(sidecar), Subscribers(sidecar), Subscribers(sidecar)
    browser = await Chromium.start(tmp_path / "chromium")
    try:
        await news.open(12, "news")
        await orders.open(5, "orders")
        await audit.open(2, "audit")
        await browser.navigate(admin_url(sidecar, f"/dashboard?token={TOKEN}"))
        await browser.wait_for(f"{text_of('live')} === 'live'")
        assert await browser.evaluate(text_of("connections")) == "19"

        loaded = await steady_load(sidecar, LOAD_SECONDS)
        burst = 60
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            for n in range(burst):
                publisher.trigger("news", "burst", {"n": n})
        per_channel = [loaded // 4 * 2 + (loaded % 4 > 0) + (loaded % 4 > 1)]
        per_channel += [loaded // 4 + (loaded % 4 > 2), loaded // 4]
        delivered = 12 * (per_channel[0] + burst) + 5 * per_channel[1] + 2 * per_channel[2]
        await browser.wait_for(f"{text_of('published')} === '{loaded + burst:,}'")
        await browser.wait_for(f"{text_of('delivered')} === '{delivered:,}'")
        busiest = await browser.evaluate(
            "[...document.querySelectorAll('#busiest tr')].map(r => r.cells[0].textContent)"
        )
        assert busiest[:3] == ["news", "orders", "audit"]
        recent = await browser.evaluate(
            "[...document.querySelectorAll('#recent tr')].map(r => r.cells[2].textContent)"
        )
        assert recent and recent[0] == "burst"
        assert "left" in await browser.evaluate(text_of("cert"))
        assert await browser.evaluate(text_of("workers")) == "2/2 workers" or os.cpu_count() == 1
        # Let one more tick draw the burst into the charts before the picture is taken.
        await asyncio.sleep(1.2)
        shot = ARTIFACTS / "dashboard.png"
        await browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    finally:
        await browser.close()
        for group in (news, orders, audit):
            await group.close()


def admin_port() -> int:
    return free_port()
