"""End to end with the real pusher-js client over wss, trusting the generated certificate."""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess

import pytest

from sidecar.api.client import SidecarClient
from tests.support.process import PusherJs, SidecarProcess, sidecar_command

pytestmark = [pytest.mark.e2e, pytest.mark.node]


def publish_cli(sidecar: SidecarProcess, *args: str, stdin: bytes | None = None) -> None:
    subprocess.run(
        [*sidecar_command(), "publish", "--socket", sidecar.socket, *args],
        check=True,
        input=stdin,
        timeout=20,
    )


async def connect(pusher_js: PusherJs, sidecar: SidecarProcess, id: str, channel: str) -> str:
    pusher_js.send(cmd="connect", id=id, key=sidecar.app["key"], options=sidecar.pusher_options())
    (connected,) = await pusher_js.expect(lambda r: r["type"] == "connected" and r["id"] == id)
    pusher_js.send(cmd="subscribe", id=id, channel=channel)
    await pusher_js.expect(lambda r: r["type"] == "subscribed" and r["id"] == id)
    return connected["socket_id"]


async def test_cli_publish_reaches_pusher_js(sidecar: SidecarProcess, pusher_js: PusherJs) -> None:
    await connect(pusher_js, sidecar, "a", "orders")
    publish_cli(sidecar, "orders", "created", '{"id": 42}')
    (event,) = await pusher_js.expect(lambda r: r["type"] == "event")
    assert event == {
        "id": "a",
        "type": "event",
        "channel": "orders",
        "event": "created",
        "data": {"id": 42},
    }


async def test_cli_publish_from_file_and_stdin(
    sidecar: SidecarProcess, pusher_js: PusherJs, tmp_path
) -> None:
    await connect(pusher_js, sidecar, "a", "news")
    (tmp_path / "payload.json").write_text('{"from": "file"}')
    publish_cli(sidecar, "news", "from-file", f"@{tmp_path / 'payload.json'}")
    publish_cli(sidecar, "news", "from-stdin", "-", stdin=b"plain text, not JSON")
    events = await pusher_js.expect(lambda r: r["type"] == "event", count=2)
    assert [(e["event"], e["data"]) for e in events] == [
        ("from-file", {"from": "file"}),
        ("from-stdin", "plain text, not JSON"),
    ]


async def test_python_client_publish_and_socket_id_exclusion(
    sidecar: SidecarProcess, pusher_js: PusherJs
) -> None:
    sender = await connect(pusher_js, sidecar, "sender", "chat")
    await connect(pusher_js, sidecar, "other", "chat")
    with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
        client.trigger("chat", "message", {"text": "hi"}, socket_id=sender)
        client.trigger_batch([{"channel": "chat", "name": "last", "data": "done"}])
    events = await pusher_js.expect(lambda r: r["type"] == "event", count=3, timeout=5)
    await asyncio.sleep(0.3)  # room for a wrongly delivered extra event to show up
    received = [(r["id"], r["event"]) for r in pusher_js.reports if r["type"] == "event"]
    assert sorted(received) == [("other", "last"), ("other", "message"), ("sender", "last")]
    assert events


async def test_unknown_app_key_gets_4001(sidecar: SidecarProcess, pusher_js: PusherJs) -> None:
    pusher_js.send(cmd="connect", id="x", key="no-such-key", options=sidecar.pusher_options())
    (error,) = await pusher_js.expect(lambda r: r["type"] == "error" and r["code"] == 4001)
    assert "App key" in error["message"]
    await asyncio.sleep(0.5)
    # 4000-4099: pusher-js must not reconnect; it goes to "failed" or stays disconnected.
    states = [r["current"] for r in pusher_js.reports if r["type"] == "state"]
    assert "connected" not in states


async def test_one_megabyte_reaches_100_subscribers_byte_for_byte(
    sidecar: SidecarProcess, pusher_js: PusherJs
) -> None:
    pusher_js.send(
        cmd="subscribe_many",
        prefix="s",
        count=100,
        key=sidecar.app["key"],
        options=sidecar.pusher_options(),
        channel="big",
    )
    await pusher_js.expect(lambda r: r["type"] == "all_subscribed", timeout=60)
    # Letters only: pusher-js keeps data it cannot parse as JSON as the exact string.
    payload = "x" + secrets.token_urlsafe(1024 * 1024)[: 1024 * 1024 - 1]
    assert len(payload) == 1024 * 1024
    with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
        client.trigger("big", "blob", payload)
    events = await pusher_js.expect(lambda r: r["type"] == "event", count=100, timeout=60)
    digest = hashlib.sha256(payload.encode()).hexdigest()
    assert {e["id"] for e in events} == {f"s{i}" for i in range(100)}
    assert all(e["sha256"] == digest and e["length"] == len(payload) for e in events)
    assert json.dumps(events[0]).count("sha256") == 1
