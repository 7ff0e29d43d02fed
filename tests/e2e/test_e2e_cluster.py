"""Several worker processes: spread connections, every publish everywhere, restarts, shutdown."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import ssl
import time
from collections.abc import Callable

import aiohttp
import pytest

from sidecar.api.client import SidecarClient
from tests.support.process import SidecarProcess
from tests.support.process_tree import worker_pids
from tests.support.pusher_server import APP, client_for

pytestmark = pytest.mark.e2e


async def connect_many(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, count: int, channel: str
) -> list[tuple[aiohttp.ClientWebSocketResponse, str]]:
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    sockets = []
    for _ in range(count):
        ws = await session.ws_connect(sidecar.ws_url(), ssl=ctx)
        established = json.loads(await ws.receive_str(timeout=5))
        socket_id = json.loads(established["data"])["socket_id"]
        await ws.send_json({"event": "pusher:subscribe", "data": {"channel": channel}})
        await ws.receive_str(timeout=5)
        sockets.append((ws, socket_id))
    return sockets


async def receive_event(ws: aiohttp.ClientWebSocketResponse) -> dict:
    frame = json.loads(await ws.receive_str(timeout=10))
    return frame


async def test_two_workers_share_connections_and_every_publish(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(workers=2, apps=[APP])
    assert len(worker_pids(sidecar)) == 2
    async with aiohttp.ClientSession() as session:
        sockets = await connect_many(session, sidecar, 40, "everyone")
        prefixes = {socket_id.split(".")[0] for _, socket_id in sockets}
        assert len(prefixes) == 2, "connections all landed on one worker"
        with SidecarClient(sidecar.socket, app_id=APP["id"]) as client:
            client.trigger("everyone", "via-socket", "1")
        client_for(sidecar).trigger("everyone", "via-signed-api", "2")
        for ws, _ in sockets:
            names = [(await receive_event(ws))["event"] for _ in range(2)]
            assert names == ["via-socket", "via-signed-api"]
        for ws, _ in sockets:
            await ws.close()


async def test_a_killed_worker_is_started_again(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    sidecar = start_sidecar(workers=2)
    before = worker_pids(sidecar)
    os.kill(before[0], signal.SIGKILL)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = worker_pids(sidecar)
        if len(now) == 2 and before[0] not in now:
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError(f"worker not restarted: {worker_pids(sidecar)}")
    async with aiohttp.ClientSession() as session:
        sockets = await connect_many(session, sidecar, 20, "after")
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
            client.trigger("after", "hello", "x")
        for ws, _ in sockets:
            assert (await receive_event(ws))["event"] == "hello"
            await ws.close()
    assert any(
        line.get("msg") == "worker exited; starting it again" for line in sidecar.log_lines()
    )


@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_delivers_accepted_publishes_then_closes_4200(
    start_sidecar: Callable[..., SidecarProcess], workers: int
) -> None:
    sidecar = start_sidecar(workers=workers)
    async with aiohttp.ClientSession() as session:
        sockets = await connect_many(session, sidecar, 10, "drain")
        with SidecarClient(sidecar.socket, app_id=sidecar.app["id"]) as client:
            for i in range(50):
                client.trigger("drain", "event", str(i))
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGTERM)
        for ws, _ in sockets:
            got = []
            while True:
                msg = await ws.receive(timeout=15)
                if msg.type is not aiohttp.WSMsgType.TEXT:
                    break
                got.append(json.loads(msg.data)["data"])
            assert got == [str(i) for i in range(50)]
            assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4200)
    assert sidecar.proc.wait(15) == 0
    assert not os.path.exists(sidecar.socket)
