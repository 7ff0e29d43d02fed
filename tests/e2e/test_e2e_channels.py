"""Private, encrypted, presence and cache channels, client events and sign-in, end to end:
real pusher-js clients authorized by a test app that signs with the `pusher` library, and the
`pusher` library publishing and querying over the signed API on the TLS port. The sidecar runs
its default worker processes (two on this machine), so clients land on different workers."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pusher
import pytest

from tests.support.auth_app import MASTER_KEY, AuthApp
from tests.support.process import PusherJs, SidecarProcess, running_sidecar
from tests.support.pusher_server import server_library

pytestmark = [pytest.mark.e2e, pytest.mark.node]

APP = {"id": "7", "key": "chan-key", "secret": "chan-secret-0123456789", "client_events": True}


@pytest.fixture(scope="module")
def sidecar(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SidecarProcess]:
    """One sidecar for the module: each test uses channels of its own."""
    limits = {"max_presence_members": 4, "client_events_per_second": 3}
    with running_sidecar(tmp_path_factory.mktemp("channels"), apps=[APP], limits=limits) as s:
        yield s


@pytest.fixture
async def auth_app() -> AsyncIterator[AuthApp]:
    app = await AuthApp(APP).start()
    yield app
    await app.close()


def server(sidecar: SidecarProcess) -> pusher.Pusher:
    """The app's server library, pointed at the sidecar with only host, port and TLS."""
    return server_library(sidecar, APP, encryption_master_key_base64=MASTER_KEY)


class Clients:
    """pusher-js clients by name, each authorized as a user by the test app."""

    def __init__(self, driver: PusherJs, sidecar: SidecarProcess, auth: AuthApp) -> None:
        self.driver = driver
        self.sidecar = sidecar
        self.auth = auth

    async def connect(self, name: str, user: str | None = None, mode: str | None = None) -> str:
        options = self.auth.options(self.sidecar, user or name, mode)
        self.driver.send(cmd="connect", id=name, key=APP["key"], options=options)
        (connected,) = await self.expect(name, "connected")
        return connected["socket_id"]

    async def subscribe(self, name: str, channel: str, outcome: str = "subscribed") -> dict:
        self.driver.send(cmd="subscribe", id=name, channel=channel)
        (report,) = await self.expect(name, outcome, channel=channel)
        return report

    async def expect(self, name: str, kind: str, count: int = 1, **fields: Any) -> list[dict]:
        return await self.driver.expect(
            lambda r: (
                r.get("id") == name
                and r["type"] == kind
                and all(r.get(k) == v for k, v in fields.items())
            ),
            count=count,
        )

    def reports(self, name: str, kind: str, **fields: Any) -> list[dict]:
        return [
            r
            for r in self.driver.reports
            if r.get("id") == name
            and r["type"] == kind
            and all(r.get(k) == v for k, v in fields.items())
        ]

    async def quiet(self) -> None:
        """Room for a wrongly delivered frame to show up before asserting its absence."""
        await asyncio.sleep(0.4)


@pytest.fixture
def clients(pusher_js: PusherJs, sidecar: SidecarProcess, auth_app: AuthApp) -> Clients:
    return Clients(pusher_js, sidecar, auth_app)


# Private and encrypted channels -------------------------------------------------------------


async def test_private_channel_with_the_apps_auth_endpoint(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    await clients.connect("ann")
    await clients.connect("mallory", mode="forge")
    await clients.subscribe("ann", "private-orders")
    refused = await clients.subscribe("mallory", "private-orders", "subscription_error")
    assert refused["status"] == {
        "type": "AuthError",
        "error": "auth signature does not match socket_id:channel_name signed with the app secret",
        "status": 401,
    }
    server(sidecar).trigger("private-orders", "created", {"id": 1})
    (event,) = await clients.expect("ann", "event", channel="private-orders")
    assert (event["event"], event["data"]) == ("created", {"id": 1})
    await clients.quiet()
    assert clients.reports("mallory", "event") == []
    # The refused client is still connected and can use public channels.
    await clients.subscribe("mallory", "news-private")
    server(sidecar).trigger("news-private", "still-here", "yes")
    await clients.expect("mallory", "event", channel="news-private")


async def test_encrypted_channel_payloads_pass_untouched(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    await clients.connect("ann")
    await clients.subscribe("ann", "private-encrypted-vault")
    # The library encrypts with the channel's shared secret; pusher-js decrypts with the one
    # the auth endpoint gave it. Any change on the way would fail the decryption.
    server(sidecar).trigger("private-encrypted-vault", "sealed", {"pin": "4321"})
    (event,) = await clients.expect("ann", "event", channel="private-encrypted-vault")
    assert (event["event"], event["data"]) == ("sealed", {"pin": "4321"})


# Presence -----------------------------------------------------------------------------------


async def test_presence_members_with_a_user_on_two_sockets(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    channel = "presence-room"
    await clients.connect("bob")
    first = await clients.subscribe("bob", channel)
    assert first["members"] == {
        "me": {"id": "bob", "info": {"name": "Bob"}},
        "ids": ["bob"],
        "count": 1,
    }
    await clients.connect("ann-laptop", user="ann")
    await clients.subscribe("ann-laptop", channel)
    (added,) = await clients.expect("bob", "member_added")
    assert (added["user_id"], added["info"]) == ("ann", {"name": "Ann"})
    await clients.connect("ann-phone", user="ann")
    phone = await clients.subscribe("ann-phone", channel)
    assert phone["members"]["ids"] == ["ann", "bob"] and phone["members"]["count"] == 2
    await clients.connect("cat")
    await clients.subscribe("cat", channel)
    await clients.expect("bob", "member_added", user_id="cat")
    await clients.expect("ann-laptop", "member_added", user_id="cat")
    await clients.quiet()
    assert [r["user_id"] for r in clients.reports("bob", "member_added")] == ["ann", "cat"]

    info = server(sidecar).channel_info(channel, ["user_count", "subscription_count"])
    assert info == {"occupied": True, "user_count": 3, "subscription_count": 4}
    users = server(sidecar).users_info(channel)
    assert sorted(u["id"] for u in users["users"]) == ["ann", "bob", "cat"]

    clients.driver.send(cmd="disconnect", id="ann-laptop")
    await clients.quiet()
    assert clients.reports("bob", "member_removed") == []  # ann's phone is still there
    clients.driver.send(cmd="disconnect", id="ann-phone")
    (removed,) = await clients.expect("bob", "member_removed")
    assert removed["user_id"] == "ann"
    await clients.expect("cat", "member_removed", user_id="ann")


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        (
            "no-user-id",
            {
                "type": "AuthError",
                "error": "channel_data has no user_id (a non-empty string or a number)",
                "status": 400,
            },
        ),
        (
            "big-info",
            {
                "type": "AuthError",
                "error": "channel_data user_info is 2010 bytes, over the limit of 1024",
                "status": 413,
            },
        ),
        (
            "forge",
            {
                "type": "AuthError",
                "error": "auth signature does not match socket_id:channel_name:channel_data "
                "signed with the app secret",
                "status": 401,
            },
        ),
    ],
)
async def test_presence_refusals_leave_the_members_untouched(
    clients: Clients, sidecar: SidecarProcess, mode: str, status: dict
) -> None:
    await clients.connect("bob")
    channel = f"presence-refuse-{mode}"
    await clients.subscribe("bob", channel)
    await clients.connect("eve", mode=mode)
    refused = await clients.subscribe("eve", channel, "subscription_error")
    assert refused["status"] == status
    await clients.quiet()
    assert clients.reports("bob", "member_added") == []
    assert server(sidecar).users_info(channel) == {"users": [{"id": "bob"}]}
    server(sidecar).trigger(channel, "after", "x")
    await clients.expect("bob", "event", channel=channel)


async def test_a_full_presence_channel_refuses_the_next_user(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    for name in ("u1", "u2", "u3", "u4"):  # limits.max_presence_members is 4
        await clients.connect(name)
        await clients.subscribe(name, "presence-full")
    await clients.connect("u5")
    refused = await clients.subscribe("u5", "presence-full", "subscription_error")
    assert refused["status"] == {
        "type": "LimitReached",
        "error": "presence channel 'presence-full' is full: 4 members at most",
        "status": 403,
    }
    await clients.connect("u1-again", user="u1")  # another socket of a member still gets in
    again = await clients.subscribe("u1-again", "presence-full")
    assert again["members"]["count"] == 4
    server(sidecar).trigger("presence-full", "after", "x")  # the refused one is still up
    await clients.subscribe("u5", "presence-other")
    await clients.expect("u1", "event", channel="presence-full")


# Client events ------------------------------------------------------------------------------


async def test_client_events_between_two_pusher_js_clients(clients: Clients) -> None:
    for name in ("ann", "bob"):
        await clients.connect(name)
        await clients.subscribe(name, "private-chat")
        await clients.subscribe(name, "presence-chat")
    clients.driver.send(
        cmd="trigger", id="ann", channel="private-chat", event="client-typing", data={"who": "ann"}
    )
    (event,) = await clients.expect("bob", "event", channel="private-chat")
    assert (event["event"], event["data"]) == ("client-typing", {"who": "ann"})
    clients.driver.send(
        cmd="trigger", id="ann", channel="presence-chat", event="client-wave", data="hi"
    )
    (raw,) = await clients.expect("bob", "user_id", channel="presence-chat")
    assert (raw["event"], raw["user_id"]) == ("client-wave", "ann")
    await clients.quiet()
    assert clients.reports("ann", "event") == []  # never echoed to the sender


async def test_client_event_refusals(clients: Clients, sidecar: SidecarProcess) -> None:
    for name in ("ann", "bob"):
        await clients.connect(name)
        await clients.subscribe(name, "news-refusals")
        await clients.subscribe(name, "private-refusals")
    clients.driver.send(cmd="trigger", id="ann", channel="news-refusals", event="client-x", data={})
    (error,) = await clients.expect("ann", "error")
    assert (error["code"], error["message"]) == (
        4300,
        "client events are only allowed on private and presence channels; "
        "'news-refusals' is public",
    )
    for i in range(6):  # limits.client_events_per_second is 3
        clients.driver.send(
            cmd="trigger", id="ann", channel="private-refusals", event="client-n", data=i
        )
    limited = await clients.expect("ann", "error", code=4301)
    assert limited[0]["message"] == "client event refused: over the limit of 3 per second"
    await clients.quiet()
    got = [r["data"] for r in clients.reports("bob", "event", channel="private-refusals")]
    # A burst of 3, then refusals (a slow machine may let a 4th through as tokens come back).
    refused = clients.reports("ann", "error", code=4301)
    assert got[:3] == [0, 1, 2] and got == sorted(got)
    assert len(got) + len(refused) == 6
    server(sidecar).trigger("news-refusals", "after", "fine")  # both still connected
    for name in ("ann", "bob"):
        await clients.expect(name, "event", channel="news-refusals")


# Cache channels -----------------------------------------------------------------------------


async def test_cache_channel_miss_then_hit(clients: Clients, sidecar: SidecarProcess) -> None:
    await clients.connect("first")
    await clients.subscribe("first", "cache-score")
    await clients.expect("first", "cache_miss", channel="cache-score")
    server(sidecar).trigger("cache-score", "score", {"home": 1, "away": 0})
    server(sidecar).trigger("cache-score", "score", {"home": 2, "away": 0})
    await clients.expect("first", "event", count=2, channel="cache-score")
    await clients.connect("late")
    await clients.subscribe("late", "cache-score")
    (cached,) = await clients.expect("late", "event", channel="cache-score")
    assert (cached["event"], cached["data"]) == ("score", {"home": 2, "away": 0})
    assert clients.reports("late", "cache_miss") == []
    await clients.connect("private-late")
    await clients.subscribe("private-late", "private-cache-empty")
    await clients.expect("private-late", "cache_miss", channel="private-cache-empty")


# Sign-in ------------------------------------------------------------------------------------


async def test_signin_then_events_to_the_user_and_termination(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    await clients.connect("ann")
    await clients.connect("bob")
    await clients.subscribe("bob", "news-signin")
    clients.driver.send(cmd="signin", id="ann")
    (success,) = await clients.expect("ann", "signin_success")
    assert json.loads(success["user_data"]) == {"id": "ann", "name": "Ann"}
    # pusher-js subscribes the signed-in user to #server-to-user-ann; give it a moment.
    for _ in range(50):
        server(sidecar).send_to_user("ann", "notice", {"text": "hello ann"})
        try:
            (notice,) = await clients.driver.expect(
                lambda r: r.get("id") == "ann" and r["type"] == "user_event", timeout=0.3
            )
            break
        except AssertionError:
            continue
    assert (notice["event"], notice["data"]) == ("notice", {"text": "hello ann"})

    # Terminate the user's connections, the way the Python library sends it.
    assert server(sidecar).terminate_user_connections("ann") == {}
    (closed, *_) = await clients.expect("ann", "error", code=4009)  # pusher-js tells it twice
    assert closed["message"] == "Connections of this user terminated by the app"
    (state,) = await clients.expect("ann", "state", current="disconnected")
    assert state["previous"] == "connected"  # 4000-4099: pusher-js does not reconnect
    server(sidecar).trigger("news-signin", "after", "bob is fine")
    await clients.expect("bob", "event", channel="news-signin")


async def test_a_forged_signin_gets_4009_and_the_connection_stays(
    clients: Clients, sidecar: SidecarProcess
) -> None:
    await clients.connect("eve", mode="forge")
    await clients.subscribe("eve", "news-forged")
    clients.driver.send(cmd="signin", id="eve")
    (error,) = await clients.expect("eve", "error")
    assert (error["code"], error["message"]) == (
        4009,
        "pusher:signin refused: auth signature does not match socket_id::user::user_data "
        "signed with the app secret",
    )
    server(sidecar).trigger("news-forged", "after", "x")
    await clients.expect("eve", "event", channel="news-forged")
