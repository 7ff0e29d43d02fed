"""sidecar.admin.console_endpoints: the console's stream and form on the admin listener, over
aiohttp's test client: who may use them, what the form publishes, what the stream shows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.admin.endpoints import admin_app
from sidecar.api.gate import PublishGate
from sidecar.api.handlers import PublishApi
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.channel_state import ChannelState
from sidecar.observe.observer import Observer

TOKEN = "console-token-of-some-length"
APP = AppConfig(id="7", key="console-key", secret="console-secret-0123456789abcdef")
PUBLISH = "/dashboard/console/publish"
EVENTS = "/dashboard/console/events"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


class RecordingBroker:
    def __init__(self) -> None:
        self.published: list[Publication] = []

    def publish(self, publication: Publication) -> None:
        self.published.append(publication)


def observed(apps: tuple[AppConfig, ...] = (APP,)) -> tuple[Observer, RecordingBroker]:
    """An observer with a Unix-socket API as serve_publish_side wires it."""
    observer = Observer(None, workers=1, broker="memory")
    broker = RecordingBroker()
    gate = PublishGate(observer.count_publishes(broker))  # type: ignore[arg-type]
    observer.bind_publish_api(
        PublishApi(AppRegistry(apps), gate, signed=False, state=ChannelState())
    )  # type: ignore[arg-type]
    return observer, broker


@pytest.fixture
async def admin() -> AsyncIterator[tuple[TestClient, Observer, RecordingBroker]]:
    observer, broker = observed()
    client = TestClient(TestServer(admin_app(observer, TOKEN)))
    await client.start_server()
    yield client, observer, broker
    await client.close()


async def read_event(response: aiohttp.ClientResponse) -> tuple[str, Any]:
    """The next server-sent event (comments skipped): its name and its JSON data."""
    name, data = "", ""
    while True:
        line = (await response.content.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            name = line[7:]
        elif line.startswith("data: "):
            data = line[6:]
        elif line == "" and name:
            return name, json.loads(data)


def form(**fields: Any) -> dict[str, Any]:
    return {"channel": "orders", "event": "created", "data": {"id": 42}, **fields}


# Who may ------------------------------------------------------------------------------------


async def test_the_console_wants_the_token_but_its_script_and_style_do_not(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, _, broker = admin
    for path in ("/dashboard/console", EVENTS):
        async with client.get(path) as response:
            assert response.status == 401, path
        async with client.get(path, headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401, path
    async with client.post(PUBLISH, json=form()) as response:
        assert response.status == 401
        assert "token" in (await response.json())["error"]
    for name in ("console.js", "console.css"):
        async with client.get(f"/dashboard/{name}") as response:
            assert response.status == 200, name
    async with client.get(f"/dashboard/console?token={TOKEN}") as response:
        assert response.status == 200
        assert "Debug console" in await response.text()
    assert broker.published == []


async def test_the_form_takes_the_token_in_a_header_only(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, _, broker = admin
    async with client.post(f"{PUBLISH}?token={TOKEN}", json=form()) as response:
        assert response.status == 401
        assert "Authorization" in (await response.json())["error"]
    assert broker.published == []


async def test_the_form_refuses_what_another_sites_page_could_send(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, _, broker = admin
    body = json.dumps(form())
    plain = {**AUTH, "Content-Type": "text/plain"}
    async with client.post(PUBLISH, data=body, headers=plain) as response:
        assert response.status == 415
    foreign = {**AUTH, "Origin": "https://evil.example"}
    async with client.post(PUBLISH, json=form(), headers=foreign) as response:
        assert response.status == 403
        assert "Origin" in (await response.json())["error"]
    assert broker.published == []
    own = {**AUTH, "Origin": str(client.make_url("")).rstrip("/")}
    async with client.post(PUBLISH, json=form(), headers=own) as response:
        assert response.status == 200, await response.text()
    assert len(broker.published) == 1


async def test_without_a_token_the_same_origin_rules_still_hold() -> None:
    observer, broker = observed()
    async with TestClient(TestServer(admin_app(observer, None))) as client:
        async with client.post(PUBLISH, json=form()) as response:
            assert response.status == 200
        async with client.post(PUBLISH, json=form(), headers={"Origin": "null"}) as response:
            assert response.status == 403
    assert len(broker.published) == 1


# What the form publishes --------------------------------------------------------------------


async def test_the_form_publishes_through_the_unix_sockets_api(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, observer, broker = admin
    async with client.post(PUBLISH, json=form(), headers=AUTH) as response:
        assert response.status == 200
        assert await response.json() == {"ok": True, "app_id": "7", "channels": ["orders"]}
    (publication,) = broker.published
    assert (publication.app_id, publication.channels, publication.name) == (
        "7",
        ("orders",),
        "created",
    )
    assert publication.data == '{"id":42}'  # a JSON value is sent as its JSON text, as the API
    # Counted as the Unix socket's, as everything published through it is.
    assert observer.publishers[0].published == 1


@pytest.mark.parametrize(
    ("fields", "status", "says"),
    [
        ({"channel": ""}, 400, "channel"),
        ({"channel": "bad channel!"}, 400, "channel"),
        ({"event": ""}, 400, "event"),
        ({"app_id": "99"}, 404, "no app"),
    ],
)
async def test_a_bad_form_gets_a_json_error_naming_the_field(
    admin: tuple[TestClient, Observer, RecordingBroker],
    fields: dict[str, Any],
    status: int,
    says: str,
) -> None:
    client, _, broker = admin
    async with client.post(PUBLISH, json=form(**fields), headers=AUTH) as response:
        assert response.status == status
        assert says in (await response.json())["error"]
    assert broker.published == []


async def test_a_body_that_is_not_json_is_refused(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, _, _ = admin
    headers = {**AUTH, "Content-Type": "application/json"}
    async with client.post(PUBLISH, data=b"{nope", headers=headers) as response:
        assert response.status == 400
        assert (await response.json())["error"] == "body is not valid JSON"


async def test_with_several_apps_the_form_names_one() -> None:
    other = AppConfig(id="8", key="other-key", secret="other-secret-0123456789abcdef")
    observer, broker = observed((APP, other))
    async with TestClient(TestServer(admin_app(observer, None))) as client:
        async with client.post(PUBLISH, json=form()) as response:
            assert response.status == 400
            assert "app_id" in (await response.json())["error"]
        async with client.post(PUBLISH, json=form(app_id="8")) as response:
            assert response.status == 200
    assert [p.app_id for p in broker.published] == ["8"]


# What the stream shows ----------------------------------------------------------------------


async def test_the_stream_shows_events_with_their_source_and_turns_the_taps_off_after(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, observer, _ = admin
    counter = observer.publishers[0]
    assert counter.tap is None  # no console open: nothing is tapped
    async with client.get(EVENTS, headers=AUTH) as stream:
        name, hello = await read_event(stream)
        assert name == "hello" and hello["apps"] == ["7"] and hello["rate"] == 100
        assert counter.tap is not None
        async with client.post(PUBLISH, json=form(), headers=AUTH) as response:
            assert response.status == 200
        counter.publish(Publication.of("7", ("audit",), "logged", "x" * 5000))
        items: list[dict[str, Any]] = []
        while len(items) < 2:
            name, batch = await read_event(stream)
            assert name == "items"
            items += batch
    first, second = items
    assert (first["source"], first["event"], first["data"]) == ("console", "created", '{"id":42}')
    assert (second["source"], second["channels"], second["size"]) == ("unix", ["audit"], 5000)
    assert second["truncated"] and len(second["data"]) == 1024
    for _ in range(50):  # the server sees the page gone at its next write or wake-up
        if counter.tap is None:
            break
        counter.publish(Publication.of("7", ("audit",), "later", "x"))
        await asyncio.sleep(0.05)
    assert counter.tap is None and not observer.console.active


async def test_the_stream_keeps_to_the_channels_asked_for(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, observer, _ = admin
    counter = observer.publishers[0]
    async with client.get(f"{EVENTS}?channel=ord", headers=AUTH) as stream:
        _, hello = await read_event(stream)
        assert hello["filter"] == "ord"
        counter.publish(Publication.of("7", ("news",), "skipped", "x"))
        counter.publish(Publication.of("7", ("orders",), "kept", "x"))
        _, items = await read_event(stream)
    assert [i["event"] for i in items] == ["kept"]


async def test_stopping_ends_the_stream(
    admin: tuple[TestClient, Observer, RecordingBroker],
) -> None:
    client, observer, _ = admin
    async with client.get(EVENTS, headers=AUTH) as stream:
        await read_event(stream)
        await observer.stop()
        assert await stream.content.read() == b""  # ended by the server, not by a timeout
