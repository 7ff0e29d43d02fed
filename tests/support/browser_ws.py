"""A browser's WebSocket to a running sidecar over TLS (aiohttp): connect, read the next frame."""

from __future__ import annotations

import json
import ssl
from typing import Any

import aiohttp

from tests.support.process import SidecarProcess


def tls_context(sidecar: SidecarProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(sidecar.cert))


async def open_ws(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, **kwargs: Any
) -> aiohttp.ClientWebSocketResponse:
    ws = await session.ws_connect(
        kwargs.pop("url", None) or sidecar.ws_url(), ssl=tls_context(sidecar), **kwargs
    )
    established = json.loads(await ws.receive_str(timeout=5))
    assert established["event"] == "pusher:connection_established"
    return ws


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 5) -> dict[str, Any]:
    return json.loads(await ws.receive_str(timeout=timeout))
