"""The signed HTTP API on the TLS port, driven by the official `pusher` server library."""

from __future__ import annotations

import json
import ssl
import time
from collections.abc import Callable

import aiohttp
import pusher
import pytest

from tests.support.process import SidecarProcess
from tests.support.pusher_server import APP, client_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def signed_sidecar(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return start_sidecar(apps=[APP])


async def test_pusher_library_triggers_over_tls(signed_sidecar: SidecarProcess) -> None:
    ctx = ssl.create_default_context(cafile=str(signed_sidecar.cert))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(signed_sidecar.ws_url(APP["key"]), ssl=ctx)
        await ws.receive_str(timeout=5)
        await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "orders"}})
        await ws.receive_str(timeout=5)
        client = client_for(signed_sidecar)
        assert client.trigger("orders", "created", {"id": 1}) == {}
        assert client.trigger(["orders", "other"], "updated", {"id": 2}) == {}
        client.trigger_batch([{"channel": "orders", "name": "batched", "data": {"id": 3}}])
        received = [json.loads(await ws.receive_str(timeout=5)) for _ in range(3)]
        assert [(f["event"], json.loads(f["data"])) for f in received] == [
            ("created", {"id": 1}),
            ("updated", {"id": 2}),
            ("batched", {"id": 3}),
        ]
        await ws.close()


def test_wrong_secret_is_401_with_json(signed_sidecar: SidecarProcess) -> None:
    client = client_for(signed_sidecar, secret="not-the-secret-at-all")
    with pytest.raises(pusher.errors.PusherBadAuth) as info:
        client.trigger("orders", "created", {"id": 1})
    assert "auth_signature does not match" in str(info.value)


async def test_unsigned_and_stale_requests_are_401(signed_sidecar: SidecarProcess) -> None:
    ctx = ssl.create_default_context(cafile=str(signed_sidecar.cert))
    base = f"https://localhost:{signed_sidecar.port}/apps/{APP['id']}/events"
    body = b'{"name":"e","channel":"a","data":"x"}'
    stale = {
        "auth_key": APP["key"],
        "auth_timestamp": str(int(time.time()) - 3600),
        "auth_version": "1.0",
        "body_md5": "0" * 32,
        "auth_signature": "0" * 64,
    }
    async with aiohttp.ClientSession() as session:
        for params, reason in (({}, "auth_key"), (stale, "more than 600 s")):
            async with session.post(base, data=body, params=params, ssl=ctx) as resp:
                assert resp.status == 401
                assert reason in (await resp.json())["error"]
