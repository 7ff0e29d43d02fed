"""Refusals of private channels, client events, sign-in and the signed queries, over real
sockets against the real process: the exact error the client sees, and that the offender, a
bystander and the server go on."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import aiohttp
import pusher
import pytest

from tests.support.auth_app import MASTER_KEY
from tests.support.browser_ws import next_frame, tls_context
from tests.support.process import SidecarProcess, running_sidecar
from tests.support.pusher_server import server_library

pytestmark = pytest.mark.e2e

APP = {"id": "5", "key": "refuse-key", "secret": "refuse-secret-0123", "client_events": True}
QUIET = {"id": "6", "key": "quiet-key", "secret": "quiet-secret-0123"}  # no client events
SIGNERS = {
    app["key"]: pusher.Pusher(
        app_id=app["id"],
        key=app["key"],
        secret=app["secret"],
        encryption_master_key_base64=MASTER_KEY,
    )
    for app in (APP, QUIET)
}

WS = aiohttp.ClientWebSocketResponse
Send = Callable[[WS, str, pusher.Pusher], Awaitable[None]]


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One sidecar for the module: each test has sockets of its own."""
    with running_sidecar(tmp_path_factory.mktemp("refusals"), apps=[APP, QUIET]) as s:
        yield s


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def open_socket(
    session: aiohttp.ClientSession, sidecar: SidecarProcess, key: str
) -> tuple[WS, str]:
    ws = await session.ws_connect(sidecar.ws_url(key), ssl=tls_context(sidecar))
    established = json.loads(await ws.receive_str(timeout=5))
    return ws, json.loads(established["data"])["socket_id"]


async def join(ws: WS, sid: str, channel: str, signer: pusher.Pusher) -> None:
    data: dict[str, Any] = {"channel": channel}
    if channel.startswith("private-"):
        data["auth"] = signer.authenticate(channel, sid)["auth"]
    await ws.send_json({"event": "pusher:subscribe", "data": data})
    reply = await next_frame(ws)
    assert reply["event"] == "pusher_internal:subscription_succeeded", reply


def subscribe_with(auth: str | None) -> Callable[[WS, str, pusher.Pusher], Awaitable[None]]:
    async def send(ws: WS, sid: str, signer: pusher.Pusher) -> None:
        data: dict[str, Any] = {"channel": "private-other"}
        if auth is not None:
            data["auth"] = auth
        await ws.send_json({"event": "pusher:subscribe", "data": data})

    return send


def client_event(channel: str) -> Send:
    async def send(ws: WS, sid: str, signer: pusher.Pusher) -> None:
        await ws.send_json({"event": "client-x", "channel": channel, "data": {"a": 1}})

    return send


async def user_channel_without_signin(ws: WS, sid: str, signer: pusher.Pusher) -> None:
    await ws.send_json({"event": "pusher:subscribe", "data": {"channel": "#server-to-user-ann"}})


async def signin_without_id(ws: WS, sid: str, signer: pusher.Pusher) -> None:
    reply = signer.authenticate_user(sid, {"id": "ann"})
    user_data = '{"name": "no id"}'
    auth = (
        reply["auth"].split(":")[0]
        + ":"
        + pusher.signature.sign(APP["secret"], f"{sid}::user::{user_data}")
    )
    await ws.send_json({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}})


async def signin_for_another_socket(ws: WS, sid: str, signer: pusher.Pusher) -> None:
    reply = signer.authenticate_user("1.1", {"id": "ann"})
    await ws.send_json({"event": "pusher:signin", "data": reply})


SUBSCRIPTION_ERRORS = [
    (
        "missing auth",
        subscribe_with(None),
        {
            "type": "AuthError",
            "error": "auth is missing: get one from your auth endpoint",
            "status": 401,
        },
    ),
    (
        "another app's key",
        subscribe_with("quiet-key:" + "0" * 64),
        {
            "type": "AuthError",
            "error": "auth must be this app's key, ':' and the signature",
            "status": 401,
        },
    ),
    (
        "user channel without sign-in",
        user_channel_without_signin,
        {
            "type": "AuthError",
            "error": "'#server-to-user-ann' is only for the user it names, "
            "signed in with pusher:signin",
            "status": 401,
        },
    ),
]

PUSHER_ERRORS = [
    (
        "client event not subscribed",
        APP,
        client_event("private-elsewhere"),
        4300,
        "not subscribed to 'private-elsewhere'",
    ),
    (
        "client event on an encrypted channel",
        APP,
        client_event("private-encrypted-room"),
        4300,
        "client events are not supported on encrypted channels ('private-encrypted-room')",
    ),
    (
        "client events disabled",
        QUIET,
        client_event("private-room"),
        4300,
        "client events are not enabled for this app (apps[].client_events)",
    ),
    (
        "signin without an id",
        APP,
        signin_without_id,
        4009,
        "pusher:signin refused: user_data must be a JSON object with a non-empty string id",
    ),
    (
        "signin signed for another socket",
        APP,
        signin_for_another_socket,
        4009,
        "pusher:signin refused: auth signature does not match socket_id::user::user_data "
        "signed with the app secret",
    ),
]


async def pair(session: aiohttp.ClientSession, sidecar: SidecarProcess, app: dict):
    """An offender and a bystander, both on private-room (and the encrypted one)."""
    signer = SIGNERS[app["key"]]
    sockets = []
    for _ in range(2):
        ws, sid = await open_socket(session, sidecar, app["key"])
        for channel in ("private-room", "private-encrypted-room"):
            await join(ws, sid, channel, signer)
        sockets.append((ws, sid))
    return sockets, signer


async def still_going(sidecar: SidecarProcess, app: dict, *sockets: WS) -> None:
    """The server publishes and every socket still receives."""
    api = server_library(sidecar, app)
    api.trigger("private-room", "after", "still here")
    for ws in sockets:
        while True:
            frame = await next_frame(ws)
            if frame["event"] == "after":
                break
        assert frame["data"] == "still here"


@pytest.mark.parametrize(
    ("case", "send", "status"), SUBSCRIPTION_ERRORS, ids=[c[0] for c in SUBSCRIPTION_ERRORS]
)
async def test_subscription_refusals(
    sidecar: SidecarProcess,
    session: aiohttp.ClientSession,
    case: str,
    send: Send,
    status: dict,
) -> None:
    [(offender, sid), (bystander, _)], signer = await pair(session, sidecar, APP)
    await send(offender, sid, signer)
    refusal = await next_frame(offender)
    assert refusal["event"] == "pusher:subscription_error"
    assert json.loads(refusal["data"]) == status
    await still_going(sidecar, APP, offender, bystander)


@pytest.mark.parametrize(
    ("case", "app", "send", "code", "message"), PUSHER_ERRORS, ids=[c[0] for c in PUSHER_ERRORS]
)
async def test_pusher_error_refusals(
    sidecar: SidecarProcess,
    session: aiohttp.ClientSession,
    case: str,
    app: dict,
    send: Send,
    code: int,
    message: str,
) -> None:
    [(offender, sid), (bystander, _)], signer = await pair(session, sidecar, app)
    await send(offender, sid, signer)
    assert await next_frame(offender) == {
        "event": "pusher:error",
        "data": {"message": message, "code": code},
    }
    await still_going(sidecar, app, offender, bystander)


def test_signed_queries_with_a_wrong_secret_are_401(sidecar: SidecarProcess) -> None:
    api = server_library(sidecar, {**APP, "secret": "not-the-secret-at-all"})
    for query in (
        lambda: api.channels_info(),
        lambda: api.channel_info("private-room", ["subscription_count"]),
        lambda: api.users_info("presence-room"),
    ):
        with pytest.raises(pusher.errors.PusherBadAuth) as info:
            query()
        assert "auth_signature does not match" in str(info.value)


def test_bad_queries_are_400_with_the_reason(sidecar: SidecarProcess) -> None:
    api = server_library(sidecar, APP)
    with pytest.raises(pusher.errors.PusherBadRequest) as info:
        api.channels_info(attributes=["user_count"])
    assert "add filter_by_prefix=presence-" in str(info.value)
    with pytest.raises(pusher.errors.PusherBadRequest) as info:
        api.users_info("private-room")
    assert "users are only listed for presence channels" in str(info.value)
    assert api.channels_info() == {"channels": {}}  # and the server goes on
