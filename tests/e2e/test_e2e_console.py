"""The debug console in headless Chromium, against a real sidecar with two workers.

A pusher-js client connects and subscribes (in a worker), an event is published over the
Unix socket and another from the console's form (in the supervisor): the page shows the
connection, the subscription and both events with their payloads, and the payloads never
reach the log. A screenshot is kept in tests/artifacts/console.png.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from sidecar.api.client import SidecarClient
from tests.support.chromium import Chromium, require_chromium
from tests.support.observe import Subscribers, admin_block, admin_url, wait_ready
from tests.support.process import ROOT, PusherJs, SidecarProcess

pytestmark = [pytest.mark.e2e, pytest.mark.chromium]

ARTIFACTS = ROOT / "tests" / "artifacts"
TOKEN = "console-e2e-token-0123456789"
# Payloads: each must show on the page, and never in the log.
UNIX_PAYLOAD = "unix-payload-5e1d9a"
FORM_PAYLOAD = "form-payload-8c2f4b"

ROWS = """[...document.querySelectorAll('#log tr')].filter(r => !r.hidden).map(r => ({
  kind: r.dataset.kind || 'dropped', channels: JSON.parse(r.dataset.channels || '[]'),
  text: r.textContent}))"""


def set_field(element_id: str, value: str) -> str:
    return f"document.getElementById({element_id!r}).value = {json.dumps(value)};"


async def rows_once(browser: Chromium, predicate: Callable[[list[dict[str, Any]]], bool]) -> Any:
    """The page's visible rows (newest first), once `predicate` holds for them."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        rows = await browser.evaluate(ROWS)
        if predicate(rows):
            return rows
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the page shows: {json.dumps(rows, indent=1)[:3000]}")
        await asyncio.sleep(0.1)


def has(rows: list[dict[str, Any]], kind: str, *texts: str) -> bool:
    return any(r["kind"] == kind and all(t in r["text"] for t in texts) for r in rows)


async def test_the_console_refuses_without_the_token(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(admin=admin_block(token=TOKEN), workers=2)
    await wait_ready(sidecar)
    async with aiohttp.ClientSession() as session:
        for path in ("/dashboard/console", "/dashboard/console/events"):
            async with session.get(admin_url(sidecar, path)) as response:
                assert response.status == 401, path
        publish = admin_url(sidecar, "/dashboard/console/publish")
        body = {"channel": "c", "event": "e", "data": {}}
        async with session.post(publish, json=body) as response:
            assert response.status == 401
        async with session.post(f"{publish}?token={TOKEN}", json=body) as response:
            assert response.status == 401  # the token in the URL is not enough for a POST
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(publish, json=body, headers=headers) as response:
            assert response.status == 200


async def test_the_console_shows_a_clients_connection_subscription_and_both_events(
    start_sidecar: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    require_chromium()
    sidecar = start_sidecar(admin=admin_block(token=TOKEN), workers=2)
    await wait_ready(sidecar)
    browser = await Chromium.start(tmp_path / "chromium", height=1000)
    driver = await PusherJs.start(sidecar.cert)
    try:
        await browser.navigate(admin_url(sidecar, f"/dashboard/console?token={TOKEN}"))
        await browser.wait_for("document.getElementById('live').textContent === 'live'")
        assert await browser.evaluate("document.getElementById('workers').textContent") == (
            "2 workers"
        )
        # A pusher-js client in a worker: connects, subscribes. Another comes and goes.
        options = sidecar.pusher_options()
        driver.send(cmd="connect", id="a", key=sidecar.app["key"], options=options)
        (connected,) = await driver.expect(lambda r: r["type"] == "connected")
        socket_id = connected["socket_id"]
        driver.send(cmd="subscribe", id="a", channel="orders")
        await driver.expect(lambda r: r["type"] == "subscribed" and r["id"] == "a")
        driver.send(cmd="connect", id="b", key=sidecar.app["key"], options=options)
        await driver.expect(lambda r: r["type"] == "connected" and r["id"] == "b")
        driver.send(cmd="subscribe", id="b", channel="news")
        await driver.expect(lambda r: r["type"] == "subscribed" and r["id"] == "b")
        # Over the Unix socket (the supervisor).
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            publisher.trigger("orders", "order-created", {"id": 42, "note": UNIX_PAYLOAD})
            publisher.trigger("news", "digest", {"body": "lorem ipsum " * 400})
        await driver.expect(lambda r: r["type"] == "event" and r["event"] == "order-created")
        driver.send(cmd="disconnect", id="b")
        # From the page's form.
        await browser.evaluate(
            set_field("channel", "orders")
            + set_field("event", "console-test")
            + set_field("data", json.dumps({"message": FORM_PAYLOAD, "from": "the form"}))
            + "document.getElementById('send-button').click();"
        )
        await browser.wait_for(
            "document.getElementById('send-result').textContent === 'Sent to orders'"
        )
        (from_form,) = await driver.expect(
            lambda r: r["type"] == "event" and r["event"] == "console-test"
        )
        assert from_form["data"] == {"message": FORM_PAYLOAD, "from": "the form"}

        rows = await rows_once(
            browser,
            lambda rows: (
                has(rows, "connected", socket_id)
                and has(rows, "subscribed", socket_id)
                and has(rows, "event", "order-created", UNIX_PAYLOAD)
                and has(rows, "event", "console-test", FORM_PAYLOAD)
                and has(rows, "disconnected")
            ),
        )
        (subscribed,) = [r for r in rows if r["kind"] == "subscribed" and socket_id in r["text"]]
        assert subscribed["channels"] == ["orders"]
        (unix,) = [r for r in rows if r["kind"] == "event" and "order-created" in r["text"]]
        assert "Unix socket" in unix["text"] and unix["channels"] == ["orders"]
        (form,) = [r for r in rows if r["kind"] == "event" and "console-test" in r["text"]]
        assert "console" in form["text"]
        (digest,) = [r for r in rows if r["kind"] == "event" and "digest" in r["text"]]
        assert "first 1 KiB shown" in digest["text"]  # cut for display
        # Newest first: the form's event above the Unix socket's, above the subscription.
        assert rows.index(form) < rows.index(unix) < rows.index(subscribed)

        await asyncio.sleep(1.3)  # the row highlight fades before the picture
        shot = ARTIFACTS / "console.png"
        await browser.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000

        # The filter keeps the rows on matching channels (and asks the stream for only those).
        await browser.evaluate(
            set_field("filter", "news")
            + "document.getElementById('filter').dispatchEvent(new Event('input'));"
        )
        filtered = await rows_once(
            browser, lambda rows: rows and all("news" in r["channels"] for r in rows)
        )
        assert has(filtered, "event", "digest")
    finally:
        await driver.close()
        await browser.close()
    assert sidecar.stop() == 0
    log = sidecar.stderr() + sidecar.stdout()
    for payload in (UNIX_PAYLOAD, FORM_PAYLOAD, "lorem ipsum"):
        assert payload not in log, f"a payload reached the log: {payload}"


@contextlib.asynccontextmanager
async def console_stream(sidecar: SidecarProcess) -> AsyncIterator[aiohttp.ClientResponse]:
    """The console's event stream, open past its `hello`."""
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with (
        aiohttp.ClientSession() as session,
        session.get(admin_url(sidecar, "/dashboard/console/events"), headers=headers) as stream,
    ):
        assert (await stream.content.readline()).startswith(b"event: hello")
        yield stream


async def read_items(
    stream: aiohttp.ClientResponse, enough: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    """The console stream's items (its `items` events, after `hello`) until `enough` of them."""
    items: list[dict[str, Any]] = []
    name = b"hello"
    while not enough(items):
        line = await asyncio.wait_for(stream.content.readline(), 10)
        if line.startswith(b"event: "):
            name = line[7:].strip()
        elif line.startswith(b"data: ") and name == b"items":
            items += json.loads(line[6:])
    return items


async def test_one_process_shows_the_same_over_its_stream(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """workers: 1: the relay, the publish APIs and the channel state are all local."""
    sidecar = start_sidecar(admin=admin_block(token=TOKEN), workers=1)
    await wait_ready(sidecar)
    subscribers = Subscribers(sidecar)
    async with console_stream(sidecar) as stream:
        await subscribers.open(1, "orders")
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as publisher:
            publisher.trigger("orders", "order-created", {"note": UNIX_PAYLOAD})
        items = await read_items(
            stream, lambda items: any(i.get("event") == "order-created" for i in items)
        )
    await subscribers.close()
    kinds = [i["kind"] for i in items]
    assert kinds == ["connected", "subscribed", "occupied", "event"]
    assert items[1]["channel"] == "orders" and items[1]["socket_id"] == items[0]["socket_id"]
    assert items[3]["source"] == "unix" and UNIX_PAYLOAD in items[3]["data"]
    assert "worker" not in items[0]


async def test_with_workers_their_items_reach_the_stream_tagged_with_the_worker(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """Without a browser: the console switches the workers' taps over their control lines,
    and what the taps make comes back on them."""
    sidecar = start_sidecar(admin=admin_block(token=TOKEN), workers=2)
    await wait_ready(sidecar)
    subscribers = Subscribers(sidecar)
    async with console_stream(sidecar) as stream:
        await asyncio.sleep(0.5)  # the switch reaches the workers on their lines
        await subscribers.open(4, "orders")
        items = await read_items(
            stream, lambda items: sum(1 for i in items if i["kind"] == "subscribed") >= 4
        )
    await subscribers.close()
    from_workers = [i for i in items if i["kind"] in ("connected", "subscribed")]
    assert {i["worker"] for i in from_workers} <= {0, 1}
    assert sum(1 for i in from_workers if i["kind"] == "connected") == 4
