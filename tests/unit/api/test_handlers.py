"""sidecar.api.handlers: the Pusher HTTP API handlers, in-process with pytest-aiohttp."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pusher
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

from sidecar.api import handlers as api_module
from sidecar.api.handlers import PublishApi, client_max_size
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import BrokerUnavailable, Publication
from sidecar.engine.broker.changes import Change, CountDelta, MemberJoin, TerminateUser
from sidecar.engine.channel_state import ChannelState
from sidecar.http_glue import json_errors
from sidecar.protocol.signatures import hmac_sha256_hex, string_to_sign

# The signing vector of PROTOCOL.md (pusher-http-ruby's and the signature gem's).
VECTOR_APP = AppConfig(id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
VECTOR_TIMESTAMP = 1353088179
VECTOR_BODY = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
VECTOR_MD5 = "ec365a775a4cd0599faeb73354201b6f"
VECTOR_SIGNATURE = "da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"

APP = AppConfig(id="1", key="app-key", secret="app-secret-123", max_payload_bytes=1000)


class FakeBroker:
    def __init__(self) -> None:
        self.publications: list[Publication] = []
        self.changes: list[Change] = []
        self.state = ChannelState()  # what the API answers queries from
        self.refuse: str | None = None  # publish_confirmed raises BrokerUnavailable with it

    def publish(self, publication: Publication) -> None:
        self.publications.append(publication)

    async def publish_confirmed(self, publication: Publication) -> None:
        if self.refuse is not None:
            raise BrokerUnavailable(self.refuse)
        self.publish(publication)

    def announce(self, changes: list[Change]) -> None:
        self.changes += changes


AiohttpClient = Callable[[web.Application], Awaitable[TestClient]]
Make = Callable[..., Awaitable[tuple[TestClient, FakeBroker]]]


@pytest.fixture
def make(aiohttp_client: AiohttpClient) -> Make:
    async def build(signed: bool = False) -> tuple[TestClient, FakeBroker]:
        apps = AppRegistry((APP, VECTOR_APP))
        broker = FakeBroker()
        # Built the way sidecar/server/prepare.py builds its publish and edge applications.
        app = web.Application(middlewares=[json_errors], client_max_size=client_max_size(apps))
        api = PublishApi(apps, broker, signed=signed, state=broker.state)  # type: ignore[arg-type]
        api.add_routes(app)
        return await aiohttp_client(app), broker

    return build


async def json_reply(response: Any, status: int) -> Any:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    return await response.json()


async def error_of(response: Any, status: int) -> str:
    body = await json_reply(response, status)
    assert set(body) == {"error"}
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


# Unsigned (the Unix socket) -----------------------------------------------------------------


async def test_events_to_one_channel(make: Make) -> None:
    client, broker = await make()
    response = await client.post("/apps/1/events", json={"name": "e", "channel": "c", "data": "d"})
    assert await json_reply(response, 200) == {}
    assert broker.publications == [Publication.of("1", ("c",), "e", "d", None)]


async def test_events_to_several_channels_with_socket_id(make: Make) -> None:
    client, broker = await make()
    body = {"name": "e", "channels": ["a", "b"], "data": "d", "socket_id": "12.34"}
    response = await client.post("/apps/1/events", json=body)
    assert await json_reply(response, 200) == {}
    assert broker.publications == [Publication.of("1", ("a", "b"), "e", "d", "12.34")]


async def test_events_data_given_as_an_object_is_encoded(make: Make) -> None:
    client, broker = await make()
    body = {"name": "e", "channel": "c", "data": {"id": 1}}
    response = await client.post("/apps/1/events", json=body)
    await json_reply(response, 200)
    assert json.loads(broker.publications[0].data) == {"id": 1}


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/apps/1/events", {"name": "e", "channel": "c", "data": "d"}),
        ("/apps/1/batch_events", {"batch": [{"name": "e", "channel": "c", "data": "d"}] * 2}),
    ],
)
async def test_a_publish_the_broker_cannot_take_is_503_json(
    make: Make, path: str, body: dict[str, Any]
) -> None:
    client, broker = await make()
    broker.refuse = "Redis is down"
    error = await error_of(await client.post(path, json=body), 503)
    assert "Redis is down" in error
    assert broker.publications == []


async def test_batch_events(make: Make) -> None:
    client, broker = await make()
    batch = [
        {"channel": "a", "name": "one", "data": "1"},
        {"channel": "b", "name": "two", "data": "2", "socket_id": "1.2"},
    ]
    response = await client.post("/apps/1/batch_events", json={"batch": batch})
    assert await json_reply(response, 200) == {}
    assert broker.publications == [
        Publication.of("1", ("a",), "one", "1", None),
        Publication.of("1", ("b",), "two", "2", "1.2"),
    ]


async def test_a_batch_with_one_bad_item_publishes_none(make: Make) -> None:
    client, broker = await make()
    batch = [{"channel": "a", "name": "ok", "data": "1"}, {"channel": "b", "data": "2"}]
    response = await client.post("/apps/1/batch_events", json={"batch": batch})
    assert "batch[1].name" in await error_of(response, 400)
    assert broker.publications == []


async def test_unsigned_mode_ignores_auth_params(make: Make) -> None:
    client, broker = await make()
    response = await client.post(
        "/apps/1/events?auth_signature=garbage",
        json={"name": "e", "channel": "c", "data": "d"},
    )
    await json_reply(response, 200)
    assert len(broker.publications) == 1


# Errors -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"channel": "c", "data": "d"}, "name"),
        ({"name": "e", "data": "d"}, "channel"),
        ({"name": "e", "channel": "c"}, "data"),
        ({"name": "e", "channel": "bad channel!", "data": "d"}, "channel"),
        ({"name": "e", "channels": [], "data": "d"}, "channels"),
        ({"name": "e", "channels": ["ok", "no way"], "data": "d"}, "channels[1]"),
        ({"name": "e", "channel": "c", "data": "d", "socket_id": "nope"}, "socket_id"),
    ],
)
async def test_a_bad_event_is_400_naming_the_field(make: Make, body: dict, field: str) -> None:
    client, broker = await make()
    response = await client.post("/apps/1/events", json=body)
    assert (await error_of(response, 400)).startswith(f"{field}:")
    assert broker.publications == []


async def test_a_body_that_is_not_json_is_400(make: Make) -> None:
    client, _ = await make()
    response = await client.post("/apps/1/events", data=b"{not json")
    assert "JSON" in await error_of(response, 400)


async def test_an_unknown_app_is_404(make: Make) -> None:
    client, broker = await make()
    response = await client.post("/apps/77/events", json={"name": "e", "channel": "c", "data": ""})
    assert "77" in await error_of(response, 404)
    assert broker.publications == []


async def test_an_unknown_route_is_404_json(make: Make) -> None:
    client, _ = await make()
    await error_of(await client.get("/nowhere"), 404)
    await error_of(await client.post("/apps/1/nothing", json={}), 404)


async def test_a_wrong_method_is_405_json(make: Make) -> None:
    client, _ = await make()
    response = await client.get("/apps/1/events")
    assert "Method Not Allowed" in await error_of(response, 405)


async def test_a_405_keeps_the_allow_header(make: Make) -> None:
    client, _ = await make()
    response = await client.get("/apps/1/events")
    assert response.status == 405
    assert "POST" in response.headers.get("Allow", "")


async def test_a_body_over_client_max_size_is_413_json(make: Make) -> None:
    client, broker = await make()
    limit = client_max_size(AppRegistry((APP, VECTOR_APP)))
    body = json.dumps({"name": "e", "channel": "c", "data": "x" * limit}).encode()
    response = await client.post("/apps/1/events", data=body)
    assert "too large" in await error_of(response, 413)
    assert broker.publications == []


async def test_data_over_the_app_payload_limit_is_413_naming_data(make: Make) -> None:
    client, broker = await make()
    body = {"name": "e", "channel": "c", "data": "x" * 1001}  # APP allows 1000 bytes
    response = await client.post("/apps/1/events", json=body)
    message = await error_of(response, 413)
    assert message.startswith("data:")
    assert "1000" in message
    assert broker.publications == []


# Signed (the TLS port) ----------------------------------------------------------------------


def pusher_client(app: AppConfig = APP, secret: str | None = None) -> Any:
    """The PusherClient inside the official library, whose requests we send ourselves."""
    return pusher.Pusher(
        app_id=app.id, key=app.key, secret=secret or app.secret, host="localhost", port=80
    )._pusher_client


async def send(client: TestClient, request: Any) -> Any:
    return await client.post(request.signed_path, data=request.body, headers=request.headers)


async def test_signed_request_from_the_pusher_library_is_accepted(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client().trigger.make_request(["orders"], "created", {"id": 42}, "1.2")
    response = await send(client, request)
    assert await json_reply(response, 200) == {}
    (publication,) = broker.publications
    assert publication.channels == ("orders",)
    assert publication.name == "created"
    assert json.loads(publication.data) == {"id": 42}
    assert publication.socket_id == "1.2"


async def test_signed_batch_from_the_pusher_library_is_accepted(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client().trigger_batch.make_request(
        [{"channel": "a", "name": "one", "data": "1"}, {"channel": "b", "name": "two", "data": 2}]
    )
    response = await send(client, request)
    await json_reply(response, 200)
    assert [(p.channels, p.name) for p in broker.publications] == [(("a",), "one"), (("b",), "two")]


async def test_signed_request_matching_the_protocol_vector_is_accepted(
    make: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert hashlib.md5(VECTOR_BODY).hexdigest() == VECTOR_MD5
    monkeypatch.setattr(api_module.time, "time", lambda: VECTOR_TIMESTAMP + 5.0)
    client, broker = await make(signed=True)
    query = (
        f"auth_key={VECTOR_APP.key}&auth_timestamp={VECTOR_TIMESTAMP}&auth_version=1.0"
        f"&body_md5={VECTOR_MD5}&auth_signature={VECTOR_SIGNATURE}"
    )
    response = await client.post(f"/apps/3/events?{query}", data=VECTOR_BODY)
    await json_reply(response, 200)
    assert broker.publications == [Publication.of("3", ("project-3",), "foo", '{"some":"data"}')]


async def test_a_bad_signature_is_401_json(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client().trigger.make_request(["orders"], "created", "x")
    request.query_params["auth_signature"] = "0" * 64
    message = await error_of(await send(client, request), 401)
    assert "auth_signature" in message
    assert broker.publications == []


async def test_a_request_signed_with_the_wrong_secret_is_401(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client(secret="not-the-secret").trigger.make_request(["orders"], "e", "x")
    assert "auth_signature" in await error_of(await send(client, request), 401)
    assert broker.publications == []


async def test_a_tampered_body_is_401(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client().trigger.make_request(["orders"], "created", "x")
    tampered = request.body.replace(b"orders", b"others")
    response = await client.post(request.signed_path, data=tampered, headers=request.headers)
    assert "body_md5" in await error_of(response, 401)
    assert broker.publications == []


async def test_an_unsigned_request_is_401_in_signed_mode(make: Make) -> None:
    client, broker = await make(signed=True)
    response = await client.post("/apps/1/events", json={"name": "e", "channel": "c", "data": ""})
    assert "auth_key" in await error_of(response, 401)
    assert broker.publications == []


async def test_a_stale_timestamp_is_401(make: Make) -> None:
    client, broker = await make(signed=True)
    body = json.dumps({"name": "e", "channel": "c", "data": "d"}).encode()
    params = {
        "auth_key": APP.key,
        "auth_timestamp": str(int(time.time()) - 601),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    path = "/apps/1/events"
    params["auth_signature"] = hmac_sha256_hex(APP.secret, string_to_sign("POST", path, params))
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = await client.post(f"{path}?{query}", data=body)
    assert "auth_timestamp" in await error_of(response, 401)
    assert broker.publications == []


async def test_signed_mode_still_answers_404_for_an_unknown_app(make: Make) -> None:
    client, _ = await make(signed=True)
    request = pusher_client(AppConfig(id="99", key="k", secret="s")).trigger.make_request(
        ["orders"], "e", "x"
    )
    await error_of(await send(client, request), 404)


async def test_a_signed_batch_with_one_bad_item_publishes_none(make: Make) -> None:
    client, broker = await make(signed=True)
    request = pusher_client().trigger_batch.make_request(
        [
            {"channel": "a", "name": "ok", "data": "1"},
            {"channel": "b", "name": "x" * 201, "data": ""},
        ],
        already_encoded=True,  # skip the library's own checks to reach ours
    )
    assert "batch[1].name" in await error_of(await send(client, request), 400)
    assert broker.publications == []


# Channel queries and terminate_connections ---------------------------------------------------


def populate(state: ChannelState) -> None:
    state.apply(1, CountDelta("1", "news", 3))
    state.apply(1, MemberJoin("1", "presence-room", "1.1", "ann"))
    state.apply(2, MemberJoin("1", "presence-room", "2.1", "ann"))
    state.apply(2, MemberJoin("1", "presence-room", "2.2", "bob"))
    state.apply(1, CountDelta("3", "news", 1))  # another app


async def test_channel_queries_unsigned(make: Make) -> None:
    client, broker = await make()
    populate(broker.state)
    response = await client.get("/apps/1/channels", params={"info": "subscription_count"})
    assert await json_reply(response, 200) == {
        "channels": {"news": {"subscription_count": 3}, "presence-room": {"subscription_count": 3}}
    }
    response = await client.get(
        "/apps/1/channels", params={"filter_by_prefix": "presence-", "info": "user_count"}
    )
    assert await json_reply(response, 200) == {"channels": {"presence-room": {"user_count": 2}}}
    response = await client.get(
        "/apps/1/channels/presence-room", params={"info": "user_count,subscription_count"}
    )
    assert await json_reply(response, 200) == {
        "occupied": True,
        "user_count": 2,
        "subscription_count": 3,
    }
    response = await client.get("/apps/1/channels/presence-room/users")
    assert await json_reply(response, 200) == {"users": [{"id": "ann"}, {"id": "bob"}]}
    response = await client.get("/apps/1/channels/empty")
    assert await json_reply(response, 200) == {"occupied": False}


@pytest.mark.parametrize(
    ("path", "params", "message"),
    [
        ("/apps/1/channels", {"info": "user_count"}, "add filter_by_prefix=presence-"),
        ("/apps/1/channels", {"info": "members"}, "info: unknown attribute 'members'"),
        ("/apps/1/channels/news", {"info": "user_count"}, "only for presence channels"),
        ("/apps/1/channels/news/users", {}, "users are only listed for presence channels"),
        ("/apps/1/channels/bad%20name", {}, "channel: channel name 'bad name' has characters"),
    ],
)
async def test_bad_queries_are_400(make: Make, path: str, params: dict, message: str) -> None:
    client, _ = await make()
    assert message in await error_of(await client.get(path, params=params), 400)


async def test_queries_signed_by_the_pusher_library(make: Make) -> None:
    client, broker = await make(signed=True)
    populate(broker.state)
    library = pusher.pusher_client.PusherClient(
        app_id=APP.id, key=APP.key, secret=APP.secret, ssl=False
    )
    request = library.channel_info.make_request("presence-room", ["user_count"])
    response = await client.get(request.signed_path)
    assert await json_reply(response, 200) == {"occupied": True, "user_count": 2}
    request = library.users_info.make_request("presence-room")
    response = await client.get(request.path, params={**request.query_params, "auth_key": "x"})
    assert "auth_key" in await error_of(response, 401)


async def test_terminate_connections_is_announced_to_every_worker(make: Make) -> None:
    client, broker = await make()
    response = await client.post("/apps/1/users/ann/terminate_connections", json={})
    assert await json_reply(response, 200) == {}
    assert broker.changes == [TerminateUser("1", "ann")]
    response = await client.post("/apps/1/users/a%20b/terminate_connections", json={})
    assert "user_id" in await error_of(response, 400)
    assert broker.changes == [TerminateUser("1", "ann")]


async def test_terminate_connections_the_way_the_python_library_sends_it(make: Make) -> None:
    client, broker = await make(signed=True)
    library = pusher.pusher_client.PusherClient(
        app_id=APP.id, key=APP.key, secret=APP.secret, ssl=False
    )
    request = library.terminate_user_connections.make_request("ann")
    assert request.path == "/users/ann/terminate_connections"  # no /apps/{id}: found by key
    response = await client.post(
        request.signed_path, data=request.body, headers={"Content-Type": "application/json"}
    )
    assert await json_reply(response, 200) == {}
    assert broker.changes == [TerminateUser("1", "ann")]


async def test_an_unsigned_request_is_refused_before_its_body_is_read(make: Make) -> None:
    # Headers announce 10 MB and only a few bytes follow: a server that read the body before
    # checking the signature would wait for the rest (and hold it all in memory).
    client, broker = await make(signed=True)
    reader, writer = await asyncio.open_connection(client.host, client.port)
    writer.write(
        b"POST /apps/1/events HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b'Content-Length: 10000000\r\n\r\n{"name":'
    )
    await writer.drain()
    status_line = await asyncio.wait_for(reader.readline(), timeout=5)
    assert status_line.startswith(b"HTTP/1.1 401")
    assert broker.publications == []
    writer.close()


# The payload limit counts the data as decoded (issue 13) ------------------------------------

LARGE_APP = AppConfig(id="7", key="large-key", secret="large-secret-1", max_payload_bytes=100_000)
# As the pusher libraries send it: JSON with every non-ASCII character escaped (\uXXXX), six
# bytes for a control character, twelve for an emoji (a surrogate pair): up to 6x the data.
AT_THE_LIMIT = ["\x01" * 100_000, "😀" * 25_000, "é" * 50_000]


@pytest.mark.parametrize("data", AT_THE_LIMIT, ids=["control", "emoji", "latin"])
async def test_escaped_data_within_the_limit_is_accepted(
    aiohttp_client: AiohttpClient, data: str
) -> None:
    apps = AppRegistry((LARGE_APP,))
    broker = FakeBroker()
    app = web.Application(middlewares=[json_errors], client_max_size=client_max_size(apps))
    PublishApi(apps, broker, signed=False, state=broker.state).add_routes(app)  # type: ignore[arg-type]
    client = await aiohttp_client(app)
    body = json.dumps({"name": "e", "channel": "c", "data": data}).encode()  # ensure_ascii
    assert len(body) > 2.5 * LARGE_APP.max_payload_bytes
    response = await client.post("/apps/7/events", data=body)
    assert await json_reply(response, 200) == {}
    assert broker.publications[0].data == data
    over = json.dumps({"name": "e", "channel": "c", "data": data + "x"}).encode()
    response = await client.post("/apps/7/events", data=over)
    assert (await error_of(response, 413)).startswith("data: 100001 bytes")
