"""The whole log of a real sidecar after a workload that handles every kind of secret: no
secret, signature, auth token or payload appears in it, at the debug level even."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import ssl
import time
from collections.abc import Callable

import aiohttp
import pytest
import yaml

from sidecar.api.client import SidecarClient
from sidecar.protocol.signatures import channel_string, hmac_sha256_hex, string_to_sign
from tests.support.observe import admin_block, admin_url, wait_ready
from tests.support.process import SidecarProcess, free_port
from tests.support.pusher_server import client_for

pytestmark = pytest.mark.e2e

SECRET = "log-secret-5f0c1b8e9a"
ROTATED = "log-rotated-secret-77d2e41c"
TOKEN = "log-admin-token-3e9a7c2b41"
WRONG_TOKEN = "log-wrong-token-91ab07f3c6"
HOOK_PASSWORD = "hook-password-4c8e1f"
APP = {"id": "42", "key": "e2e-key", "secret": SECRET, "client_events": True}
# Payloads: each must reach its clients, and never the log.
UNIX_PAYLOAD = "unix-payload-a71c03"
SIGNED_PAYLOAD = "signed-payload-b82d14"
CLIENT_PAYLOAD = "client-payload-c93e25"
USER_INFO = "user-info-d04f36"


async def receive_until(ws: aiohttp.ClientWebSocketResponse, event: str) -> dict:
    while True:
        frame = json.loads(await ws.receive_str(timeout=5))
        if frame["event"] == event:
            return frame


def wrongly_signed(sidecar: SidecarProcess, body: bytes) -> tuple[str, str]:
    """A publish URL signed with a wrong secret (refused with 401), and its signature."""
    path = f"/apps/{APP['id']}/events"
    params = {
        "auth_key": APP["key"],
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    signature = hmac_sha256_hex("wrong-secret", string_to_sign("POST", path, params))
    query = "&".join(f"{k}={v}" for k, v in {**params, "auth_signature": signature}.items())
    return f"https://localhost:{sidecar.port}{path}?{query}", signature


async def test_no_secret_signature_token_or_payload_is_ever_logged(
    start_sidecar: Callable[..., SidecarProcess],
) -> None:
    hook = f"http://hookuser:{HOOK_PASSWORD}@127.0.0.1:{free_port()}/hooks"
    sidecar = start_sidecar(
        apps=[{**APP, "webhooks": [{"url": hook, "events": ["channel_occupied"]}]}],
        admin=admin_block(token=TOKEN),
        log={"level": "debug"},
        webhooks={"retry_initial_delay": 0.05, "batch_window": 0.01, "retry_horizon": 0.2},
    )
    await wait_ready(sidecar)
    # pusher's Python client signs with the secret it is given: this one's.
    secrets_seen: list[str] = [SECRET, ROTATED, TOKEN, WRONG_TOKEN, HOOK_PASSWORD]
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(sidecar.ws_url(APP["key"]), ssl=ctx)
        established = json.loads(await ws.receive_str(timeout=5))
        socket_id = json.loads(established["data"])["socket_id"]
        # A private channel, signed right and wrong; a presence channel with user_info.
        private = "private-orders"
        auth = f"{APP['key']}:{hmac_sha256_hex(SECRET, channel_string(socket_id, private))}"
        wrong = f"{APP['key']}:{hmac_sha256_hex('not-the-secret', f'{socket_id}:{private}')}"
        secrets_seen += [auth.split(":")[1], wrong.split(":")[1]]
        await ws.send_json(
            {"event": "pusher:subscribe", "data": {"channel": "private-x", "auth": wrong}}
        )
        await receive_until(ws, "pusher:subscription_error")
        await ws.send_json(
            {"event": "pusher:subscribe", "data": {"channel": private, "auth": auth}}
        )
        await receive_until(ws, "pusher_internal:subscription_succeeded")
        presence = "presence-room"
        channel_data = json.dumps({"user_id": "u1", "user_info": {"note": USER_INFO}})
        presence_auth = hmac_sha256_hex(SECRET, channel_string(socket_id, presence, channel_data))
        secrets_seen.append(presence_auth)
        await ws.send_json(
            {
                "event": "pusher:subscribe",
                "data": {
                    "channel": presence,
                    "auth": f"{APP['key']}:{presence_auth}",
                    "channel_data": channel_data,
                },
            }
        )
        await receive_until(ws, "pusher_internal:subscription_succeeded")
        # A second client gets the client event.
        other = await session.ws_connect(sidecar.ws_url(APP["key"]), ssl=ctx)
        other_id = json.loads(json.loads(await other.receive_str(timeout=5))["data"])["socket_id"]
        other_auth = hmac_sha256_hex(SECRET, channel_string(other_id, private))
        secrets_seen.append(other_auth)
        await other.send_json(
            {
                "event": "pusher:subscribe",
                "data": {"channel": private, "auth": f"{APP['key']}:{other_auth}"},
            }
        )
        await receive_until(other, "pusher_internal:subscription_succeeded")
        await ws.send_json({"event": "client-note", "channel": private, "data": CLIENT_PAYLOAD})
        assert (await receive_until(other, "client-note"))["data"] == CLIENT_PAYLOAD
        # Publishes: the Unix socket, the signed API, and a signed request that is refused.
        with SidecarClient(sidecar.socket, app_id=APP["id"]) as client:
            client.trigger(private, "unix", UNIX_PAYLOAD)
        assert (await receive_until(other, "unix"))["data"] == UNIX_PAYLOAD
        signed = client_for(sidecar, secret=SECRET)
        await asyncio.to_thread(signed.trigger, private, "signed", SIGNED_PAYLOAD)
        assert (await receive_until(other, "signed"))["data"] == SIGNED_PAYLOAD
        body = json.dumps({"name": "x", "channel": private, "data": SIGNED_PAYLOAD}).encode()
        url, signature = wrongly_signed(sidecar, body)
        secrets_seen.append(signature)
        async with session.post(url, data=body, ssl=ctx) as response:
            assert response.status == 401
        # The admin listener, with its token, in both ways, and with a wrong one.
        metrics = admin_url(sidecar, "/metrics")
        async with session.get(metrics, headers={"Authorization": f"Bearer {TOKEN}"}) as r:
            assert r.status == 200
        async with session.get(f"{metrics}?token={TOKEN}") as r:
            assert r.status == 200
        async with session.get(metrics, headers={"Authorization": f"Bearer {WRONG_TOKEN}"}) as r:
            assert r.status == 401
        # A reload that rotates the secret.
        rotated = {**sidecar.config}
        rotated["apps"] = [{**sidecar.config["apps"][0], "secret": ROTATED}]
        sidecar.config_path.write_text(yaml.safe_dump(rotated))
        assert sidecar.proc is not None
        os.kill(sidecar.proc.pid, signal.SIGHUP)
        (reloaded,) = await sidecar.wait_for_log(
            lambda e: e.get("msg") == "config reloaded" and e.get("level") == "info"
        )
        assert reloaded["apps"] == {"changed": {"42": ["secret"]}}
        await sidecar.wait_for_log(lambda e: "webhook" in e.get("msg", ""))
        await ws.close()
        await other.close()
    assert sidecar.stop() == 0
    log = sidecar.stderr() + sidecar.stdout()
    # The workload was seen: what the log must say, it says.
    messages = {e.get("msg") for e in sidecar.log_lines()}
    assert {"connection opened", "connection closed", "api request refused"} <= messages
    assert "config reloaded" in messages
    assert any(e.get("status") == 401 for e in sidecar.log_lines())
    for secret in secrets_seen:
        assert secret not in log, f"a secret reached the log: {secret[:6]}..."
    for payload in (UNIX_PAYLOAD, SIGNED_PAYLOAD, CLIENT_PAYLOAD, USER_INFO):
        assert payload not in log, f"a payload reached the log: {payload}"
