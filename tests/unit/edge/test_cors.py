"""sidecar.edge.cors: CORS on the signed API of the TLS port, as edge_application wires it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig, from_mapping
from sidecar.config.origins import OriginPolicy
from sidecar.edge.cors import PolicyOrigins, allow_cross_origin, resource_options
from sidecar.engine.broker import MemoryBroker
from sidecar.engine.channel_state import ChannelState
from sidecar.server.prepare import edge_application

APP = AppConfig(id="1", key="app-key", secret="app-secret-123")
EVENTS = "/apps/1/events"
CHANNELS = "/apps/1/channels"

AiohttpClient = Callable[[web.Application], Awaitable[TestClient]]
Make = Callable[..., Awaitable[TestClient]]


@pytest.fixture
def make(aiohttp_client: AiohttpClient) -> Make:
    async def build(**cors: Any) -> TestClient:
        config = from_mapping({"cors": cors} if cors else {})
        app = edge_application(config, AppRegistry((APP,)), MemoryBroker(), ChannelState())
        return await aiohttp_client(app)

    return build


def preflight(origin: str | None, method: str = "POST", headers: str = "content-type") -> dict:
    sent = {"Access-Control-Request-Method": method, "Access-Control-Request-Headers": headers}
    if origin is not None:
        sent["Origin"] = origin
    return sent


# Preflight ----------------------------------------------------------------------------------


async def test_preflight_from_an_allowed_origin(make: Make) -> None:
    client = await make(allowed_origins=["https://app.example.com"])
    response = await client.options(
        EVENTS,
        headers=preflight("https://app.example.com", headers="Content-Type, X-Pusher-Library"),
    )
    assert response.status == 200
    h = response.headers
    assert h["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert h["Access-Control-Allow-Methods"] == "POST"
    assert set(h["Access-Control-Allow-Headers"].upper().split(",")) == {
        "CONTENT-TYPE",
        "X-PUSHER-LIBRARY",
    }
    assert h["Access-Control-Max-Age"] == "3600"
    assert "Access-Control-Allow-Credentials" not in h
    assert h["Vary"] == "Origin"


@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.com", True),
        ("http://app.example.com", True),  # a pattern without a scheme takes either
        ("https://deep.app.example.com:8443", True),
        ("https://example.com", False),  # the bare domain is not a subdomain
        ("https://evilexample.com", False),
        ("https://example.com.evil.org", False),
        ("null", False),  # sandboxed frames and file:// pages
    ],
)
async def test_preflight_with_a_pattern(make: Make, origin: str, allowed: bool) -> None:
    client = await make(allowed_origins=["*.example.com"])
    response = await client.options(EVENTS, headers=preflight(origin))
    if allowed:
        assert response.status == 200
        assert response.headers["Access-Control-Allow-Origin"] == origin
    else:
        assert response.status == 403
        assert response.content_type == "application/json"
        assert "not allowed" in (await response.json())["error"]
        assert "Access-Control-Allow-Origin" not in response.headers


async def test_development_defaults_allow_pages_on_this_machine_only(make: Make) -> None:
    client = await make()
    for origin in ("http://localhost:3000", "https://127.0.0.1:8443", "http://[::1]:5173"):
        response = await client.options(EVENTS, headers=preflight(origin))
        assert response.status == 200, origin
        assert response.headers["Access-Control-Allow-Origin"] == origin
    for origin in ("https://example.com", "http://localhost.example.com", "http://192.168.1.5"):
        response = await client.options(EVENTS, headers=preflight(origin))
        assert response.status == 403, origin


@pytest.mark.parametrize(
    ("headers", "words"),
    [
        (preflight("https://app.example.com", method="DELETE"), "'DELETE' is not allowed"),
        (preflight("https://app.example.com", headers="X-Custom"), "X-CUSTOM"),
        (preflight(None), "origin header is not specified"),
        ({"Origin": "https://app.example.com"}, "Access-Control-Request-Method"),
    ],
)
async def test_preflight_refusals_say_why_in_json(
    make: Make, headers: dict[str, str], words: str
) -> None:
    client = await make(allowed_origins=["https://app.example.com"])
    response = await client.options(EVENTS, headers=headers)
    assert response.status == 403
    assert words in (await response.json())["error"]


async def test_every_api_path_answers_preflight(make: Make) -> None:
    client = await make(allowed_origins=["https://app.example.com"])
    for path in (
        EVENTS,
        "/apps/1/batch_events",
        CHANNELS,
        "/apps/1/channels/presence-room/users",
        "/apps/1/users/u1/terminate_connections",
    ):
        response = await client.options(path, headers=preflight("https://app.example.com", "GET"))
        assert response.status == 200, path


async def test_credentials_only_when_configured(make: Make) -> None:
    client = await make(allowed_origins=["https://app.example.com"], allow_credentials=True)
    response = await client.options(EVENTS, headers=preflight("https://app.example.com"))
    assert response.headers["Access-Control-Allow-Credentials"] == "true"
    response = await client.get(CHANNELS, headers={"Origin": "https://app.example.com"})
    assert response.headers["Access-Control-Allow-Credentials"] == "true"


async def test_star_allows_any_origin(make: Make) -> None:
    client = await make(allowed_origins=["*"])
    response = await client.options(EVENTS, headers=preflight("https://anyone.test"))
    assert response.status == 200
    assert response.headers["Access-Control-Allow-Origin"] == "https://anyone.test"


# Actual requests ----------------------------------------------------------------------------


async def test_an_allowed_page_can_read_the_reply_even_a_refusal(make: Make) -> None:
    client = await make(allowed_origins=["*.example.com"])
    response = await client.get(CHANNELS, headers={"Origin": "https://app.example.com"})
    assert response.status == 401  # unsigned: refused, but the page may read why
    assert response.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    assert response.headers["Vary"] == "Origin"
    assert "auth" in (await response.json())["error"]


async def test_a_refused_page_gets_no_cors_headers(make: Make) -> None:
    client = await make(allowed_origins=["*.example.com"])
    response = await client.post(EVENTS, data=b"{}", headers={"Origin": "https://evil.test"})
    assert response.status == 401
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_no_origin_no_cors_headers(make: Make) -> None:
    client = await make(allowed_origins=["*.example.com"])
    response = await client.get(CHANNELS)
    assert response.status == 401
    assert "Access-Control-Allow-Origin" not in response.headers


async def test_paths_outside_the_api_have_no_cors(make: Make) -> None:
    client = await make(allowed_origins=["*"])
    response = await client.options("/elsewhere", headers=preflight("https://app.example.com"))
    assert response.status == 404
    assert "Access-Control-Allow-Origin" not in response.headers


# The mapping aiohttp-cors is given ----------------------------------------------------------


def test_policy_origins_mapping() -> None:
    origins = PolicyOrigins(OriginPolicy(["https://*.example.com"]), resource_options(False))
    assert "https://a.example.com" in origins
    assert "http://a.example.com" not in origins
    assert "*" not in origins  # aiohttp-cors' catch-all lookup finds nothing
    assert origins.get("https://a.example.com") is origins.options
    assert list(origins) == []
    everyone = PolicyOrigins(OriginPolicy(["*"]), resource_options(False))
    assert "*" in everyone
    assert "https://anyone.test" in everyone
    assert len(everyone) == 1


async def test_allow_cross_origin_covers_routes_added_before_it(
    aiohttp_client: AiohttpClient,
) -> None:
    async def ok(request: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application()
    app.router.add_post("/covered", ok)
    allow_cross_origin(app, OriginPolicy(["https://app.example.com"]))
    app.router.add_route("*", "/later", ok)
    client = await aiohttp_client(app)
    assert (await client.options("/covered", headers=preflight("https://app.example.com"))).ok
    later = await client.options("/later", headers=preflight("https://app.example.com"))
    assert "Access-Control-Allow-Origin" not in later.headers
