"""SIGTERM on the real sidecar: every accepted publish delivered, every client told 4200, an exit
within shutdown.deadline; with pusher-js clients, in one process and with workers."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import ssl
import time
from collections.abc import Callable

import aiohttp
import pytest

from tests.support.observe import admin_block, get_json, wait_ready, wait_until
from tests.support.process import PusherJs, SidecarProcess
from tests.support.pusher_server import APP, client_for

pytestmark = pytest.mark.e2e

CLIENTS = 5
CHANNEL = "orders"


async def unix_publisher(sidecar: SidecarProcess, name: str, accepted: list[str]) -> None:
    """Publish over the Unix socket until the sidecar refuses or is gone; `accepted` gets the
    data of every publish answered 200."""
    connector = aiohttp.UnixConnector(path=sidecar.socket)
    url = f"http://sidecar/apps/{APP['id']}/events"
    async with aiohttp.ClientSession(connector=connector) as session:
        for i in range(100_000):
            data = f"{name}-{i}"
            body = {"name": "tick", "channels": [CHANNEL], "data": data}
            try:
                async with session.post(url, json=body) as response:
                    if response.status != 200:
                        assert response.status == 503, await response.text()
                        return
            except (aiohttp.ClientError, OSError):
                return
            accepted.append(data)
            await asyncio.sleep(0.002)


def signed_publisher(sidecar: SidecarProcess, accepted: list[str], stop: list[bool]) -> None:
    """The signed API on the TLS port (a worker accepts these itself), from a thread."""
    client = client_for(sidecar)
    for i in range(100_000):
        if stop:
            return
        data = f"signed-{i}"
        try:
            client.trigger(CHANNEL, "tick", data)
        except Exception:  # refused (503) or the port closed: the publisher is done
            return
        accepted.append(data)
        time.sleep(0.005)


@pytest.mark.node
@pytest.mark.parametrize("workers", [1, 2])
async def test_sigterm_with_publishes_in_flight_every_client_gets_each_accepted_one_then_4200(
    start_sidecar: Callable[..., SidecarProcess], workers: int
) -> None:
    sidecar = start_sidecar(apps=[APP], workers=workers)
    driver = await PusherJs.start(sidecar.cert)
    try:
        driver.send(
            cmd="subscribe_many",
            prefix="c",
            count=CLIENTS,
            key=APP["key"],
            options=sidecar.pusher_options(),
            channel=CHANNEL,
        )
        await driver.expect(lambda r: r["type"] == "all_subscribed", timeout=30)
        by_socket: list[list[str]] = [[] for _ in range(3)]
        signed: list[str] = []
        stop: list[bool] = []
        publishers = [
            asyncio.ensure_future(unix_publisher(sidecar, f"u{n}", by_socket[n])) for n in range(3)
        ]
        signed_thread = asyncio.ensure_future(
            asyncio.to_thread(signed_publisher, sidecar, signed, stop)
        )

        async def publishing() -> bool:
            return min(map(len, by_socket)) >= 20 and len(signed) >= 5

        await wait_until(publishing)
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(asyncio.gather(*publishers), 20)
        stop.append(True)
        await asyncio.wait_for(signed_thread, 20)
        # Every client, once (pusher-js reports a close as an error, sometimes twice).
        everyone = {f"c{i}" for i in range(CLIENTS)}
        for client in sorted(everyone):
            await driver.expect(
                lambda r, c=client: r["type"] == "error" and r["code"] == 4200 and r["id"] == c,
                timeout=20,
            )
        accepted = {data for published in (*by_socket, signed) for data in published}
        for i in range(CLIENTS):
            seen = {
                r["data"] for r in driver.reports if r["type"] == "event" and r["id"] == f"c{i}"
            }
            missing = accepted - seen
            assert not missing, f"c{i} lost {len(missing)} accepted publishes: {sorted(missing)}"
        assert await asyncio.to_thread(sidecar.proc.wait, 15) == 0
    finally:
        await driver.close()
    assert "stopped" in [line.get("msg") for line in sidecar.log_lines()]


async def test_a_client_that_never_answers_the_close_does_not_hold_the_exit(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """The close handshake waits 5 s for a silent client; a 1 s deadline ends it sooner."""
    sidecar = start_sidecar(shutdown={"deadline": 1})
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    async with aiohttp.ClientSession() as session:
        # aiohttp answers a close frame only from receive(), which is never called again.
        sockets = [await session.ws_connect(sidecar.ws_url(), ssl=ctx) for _ in range(4)]
        for ws in sockets:
            await ws.receive_str(timeout=5)
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(sidecar.proc.wait, 4.5)
        assert exit_code == 0
        for ws in sockets:
            with contextlib.suppress(Exception):
                await ws.close()


async def test_readyz_says_not_ready_once_stopping(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    """A load balancer asking /readyz moves on at the signal; /healthz still answers."""
    sidecar = start_sidecar(admin=admin_block())
    await wait_ready(sidecar)
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    async with aiohttp.ClientSession() as session:
        # A client that does not answer the close yet keeps the process draining meanwhile.
        ws = await session.ws_connect(sidecar.ws_url(), ssl=ctx)
        await ws.receive_str(timeout=5)
        assert sidecar.proc is not None
        sidecar.proc.send_signal(signal.SIGTERM)

        async def not_ready() -> object:
            status, body = await get_json(sidecar, "/readyz")
            return body if status == 503 else None

        body = await wait_until(not_ready, timeout=5)
        assert body["checks"]["listening"]["stopping"] is True
        status, _ = await get_json(sidecar, "/healthz")
        assert status == 200
        msg = await ws.receive(timeout=10)
        assert (msg.type, msg.data) == (aiohttp.WSMsgType.CLOSE, 4200)
    assert await asyncio.to_thread(sidecar.proc.wait, 15) == 0
