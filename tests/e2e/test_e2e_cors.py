"""End to end: the Origin allow-list of the real `sidecar run`, for WebSockets and for CORS."""

from __future__ import annotations

import hashlib
import json
import ssl
import time
from collections.abc import AsyncIterator, Iterator

import aiohttp
import pytest

from sidecar.protocol.signatures import hmac_sha256_hex, string_to_sign
from tests.support.process import SidecarProcess, running_sidecar

pytestmark = pytest.mark.e2e

APP = {"id": "5", "key": "cors-key", "secret": "cors-secret-0123456789"}
ALLOWED = ["*.example.com", "http://localhost:*"]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    cors = {"allowed_origins": ALLOWED}
    with running_sidecar(tmp_path_factory.mktemp("cors"), apps=[APP], cors=cors) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def tls(sidecar: SidecarProcess) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(sidecar.cert))


def signed_events_url(sidecar: SidecarProcess, body: bytes) -> str:
    path = f"/apps/{APP['id']}/events"
    params = {
        "auth_key": APP["key"],
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    params["auth_signature"] = hmac_sha256_hex(APP["secret"], string_to_sign("POST", path, params))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    return f"https://localhost:{sidecar.port}{path}?{query}"


# WebSocket upgrades -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin", ["https://app.example.com", "http://shop.example.com", "http://localhost:3000", None]
)
async def test_allowed_origin_opens_the_socket(
    sidecar: SidecarProcess, session: aiohttp.ClientSession, origin: str | None
) -> None:
    async with session.ws_connect(sidecar.ws_url(), ssl=tls(sidecar), origin=origin) as ws:
        established = json.loads(await ws.receive_str(timeout=5))
        assert established["event"] == "pusher:connection_established"


@pytest.mark.parametrize(
    "origin", ["https://example.com", "https://example.com.evil.test", "https://127.0.0.1:8443"]
)
async def test_refused_origin_gets_403_json_before_the_upgrade(
    sidecar: SidecarProcess, session: aiohttp.ClientSession, origin: str
) -> None:
    # The plain request a browser makes for the upgrade: a refusal it can report, no socket.
    async with session.get(
        f"https://localhost:{sidecar.port}/app/{APP['key']}?protocol=7",
        ssl=tls(sidecar),
        headers={
            "Origin": origin,
            "Upgrade": "websocket",
            "Connection": "Upgrade",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version": "13",
        },
    ) as response:
        assert response.status == 403
        assert await response.json() == {"error": "Origin not allowed"}


# CORS on the signed HTTP API ----------------------------------------------------------------


async def test_preflight_and_signed_post_from_an_allowed_page(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    body = b'{"name":"e","channel":"cors-a","data":"x"}'
    url = signed_events_url(sidecar, body)
    origin = "https://app.example.com"
    async with session.options(
        url,
        ssl=tls(sidecar),
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "content-type",
        },
    ) as preflight:
        assert preflight.status == 200
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert preflight.headers["Access-Control-Allow-Methods"] == "POST"
        assert preflight.headers["Access-Control-Allow-Headers"].lower() == "content-type"
        assert "Access-Control-Allow-Credentials" not in preflight.headers
    async with session.post(
        url,
        data=body,
        ssl=tls(sidecar),
        headers={"Origin": origin, "Content-Type": "application/json"},
    ) as response:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
        assert response.headers["Vary"] == "Origin"


async def test_preflight_from_a_refused_page(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    async with session.options(
        f"https://localhost:{sidecar.port}/apps/{APP['id']}/events",
        ssl=tls(sidecar),
        headers={"Origin": "https://evil.test", "Access-Control-Request-Method": "POST"},
    ) as response:
        assert response.status == 403
        assert "not allowed" in (await response.json())["error"]
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_a_refused_page_cannot_read_the_reply(
    sidecar: SidecarProcess, session: aiohttp.ClientSession
) -> None:
    body = b'{"name":"e","channel":"cors-b","data":"x"}'
    async with session.post(
        signed_events_url(sidecar, body),
        data=body,
        ssl=tls(sidecar),
        headers={"Origin": "https://evil.test", "Content-Type": "application/json"},
    ) as response:
        # Signed, so accepted (the signature is the authority, not the page), but the browser
        # withholds the answer from a page that is not on the list.
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
