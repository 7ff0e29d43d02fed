"""A browser socket on the cluster tests' app that knows its worker (by its socket_id prefix) and
signs its own presence and private subscriptions; shared by the cluster state and webhook tests."""

from __future__ import annotations

import json
import ssl
from typing import TYPE_CHECKING, Any

import aiohttp
import pusher

if TYPE_CHECKING:
    from tests.support.process import SidecarProcess

APP = {"id": "9", "key": "cluster-key", "secret": "cluster-secret-0123", "client_events": True}
SIGNER = pusher.Pusher(app_id=APP["id"], key=APP["key"], secret=APP["secret"])


class Socket:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse, socket_id: str) -> None:
        self.ws = ws
        self.socket_id = socket_id
        self.worker = socket_id.split(".")[0]

    async def send(self, event: str, data: Any, channel: str | None = None) -> None:
        frame: dict[str, Any] = {"event": event, "data": data}
        if channel is not None:
            frame["channel"] = channel
        await self.ws.send_json(frame)

    async def next(self, timeout: float = 10) -> dict[str, Any]:
        return json.loads(await self.ws.receive_str(timeout=timeout))

    async def next_event(self, event: str, timeout: float = 10) -> dict[str, Any]:
        while True:
            frame = await self.next(timeout)
            if frame["event"] == event:
                return frame

    async def join(self, channel: str, user_id: str) -> dict[str, Any]:
        """Subscribe to a presence channel; return its members as subscription_succeeded says."""
        auth = SIGNER.authenticate(channel, self.socket_id, {"user_id": user_id})
        await self.send("pusher:subscribe", {"channel": channel, **auth})
        frame = await self.next_event("pusher_internal:subscription_succeeded")
        return json.loads(frame["data"])["presence"]

    async def subscribe(self, channel: str) -> list[dict[str, Any]]:
        """Subscribe; return the frames up to and including the succeeded (and a cache answer)."""
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith("private-"):
            data.update(SIGNER.authenticate(channel, self.socket_id))
        await self.send("pusher:subscribe", data)
        frames = [await self.next_event("pusher_internal:subscription_succeeded")]
        if "cache-" in channel:
            frames.append(await self.next())
        return frames

    async def silent(self, wait: float = 0.4) -> bool:
        try:
            frame = await self.ws.receive(timeout=wait)
        except TimeoutError:
            return True
        raise AssertionError(f"unexpected frame {frame}")


async def open_socket(session: aiohttp.ClientSession, sidecar: SidecarProcess) -> Socket:
    """A raw WebSocket on the app, once the sidecar said connection_established."""
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    ws = await session.ws_connect(sidecar.ws_url(APP["key"]), ssl=ctx)
    established = json.loads(await ws.receive_str(timeout=5))
    return Socket(ws, json.loads(established["data"])["socket_id"])
