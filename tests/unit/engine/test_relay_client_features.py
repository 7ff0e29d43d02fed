"""sidecar.engine.relay: client events, cache channels, sign-in and the hooks webhooks use."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.engine.relay import Relay
from tests.support.relay_browser import (
    APP,
    LIMITS,
    QUIET_APP,
    SIGNER,
    Browser,
    MakeBrowser,
    browser_factory,
    data_of,
    publish,
    sign,
    started_relay,
    turns,
)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    async with started_relay() as r:
        yield r


@pytest.fixture
def browser(relay: Relay) -> MakeBrowser:
    return browser_factory(relay)


def presence(message: dict[str, Any]) -> dict[str, Any]:
    assert message["event"] == "pusher_internal:subscription_succeeded"
    return data_of(message)["presence"]


# Client events ------------------------------------------------------------------------------


async def test_client_events_reach_others_not_the_sender(
    relay: Relay, browser: MakeBrowser
) -> None:
    sender, other = browser(), browser()
    for b in (sender, other):
        b.subscribe("private-chat")
    await turns()
    sender.events(), other.events()
    sender.trigger("private-chat", "client-typing", {"who": "ann"})
    await turns()
    assert sender.events() == []
    (event,) = other.events()
    assert event == {"event": "client-typing", "channel": "private-chat", "data": '{"who":"ann"}'}


async def test_client_events_on_presence_carry_the_user_id(
    relay: Relay, browser: MakeBrowser
) -> None:
    ann, bob = browser(), browser()
    ann.subscribe("presence-room", {"user_id": "ann"})
    bob.subscribe("presence-room", {"user_id": "bob"})
    await turns()
    ann.events(), bob.events()
    ann.trigger("presence-room", "client-wave", "hi")
    await turns()
    (event,) = bob.events()
    assert event == {
        "event": "client-wave",
        "channel": "presence-room",
        "data": "hi",
        "user_id": "ann",
    }


@pytest.mark.parametrize(
    ("channel", "message"),
    [
        (
            "room",
            "client events are only allowed on private and presence channels; 'room' is public",
        ),
        (
            "private-encrypted-x",
            "client events are not supported on encrypted channels ('private-encrypted-x')",
        ),
        ("private-elsewhere", "not subscribed to 'private-elsewhere'"),
    ],
)
async def test_refused_client_events_get_pusher_error(
    relay: Relay, browser: MakeBrowser, channel: str, message: str
) -> None:
    sender, other = browser(), browser()
    for b in (sender, other):
        b.subscribe("room")
        b.subscribe("private-encrypted-x")
    await turns()
    sender.events(), other.events()
    sender.trigger(channel, "client-x", {})
    await turns()
    assert sender.events() == [
        {"event": "pusher:error", "data": {"message": message, "code": 4300}}
    ]
    assert other.events() == []


async def test_client_events_need_the_app_to_enable_them(
    relay: Relay, browser: MakeBrowser
) -> None:
    sender, other = browser(QUIET_APP.id), browser(QUIET_APP.id)
    for b in (sender, other):
        b.subscribe("private-chat")
    await turns()
    sender.events(), other.events()
    sender.trigger("private-chat", "client-x", {})
    await turns()
    assert sender.events() == [
        {
            "event": "pusher:error",
            "data": {
                "message": "client events are not enabled for this app (apps[].client_events)",
                "code": 4300,
            },
        }
    ]
    assert other.events() == []


async def test_client_events_over_the_rate_get_4301_and_are_dropped(
    relay: Relay, browser: MakeBrowser
) -> None:
    sender, other = browser(), browser()
    for b in (sender, other):
        b.subscribe("private-chat")
    await turns()
    sender.events(), other.events()
    for i in range(8):  # the limit is 5 a second
        sender.trigger("private-chat", "client-n", str(i))
    await turns()
    errors = sender.events()
    assert len(errors) == 3
    assert errors[0] == {
        "event": "pusher:error",
        "data": {"message": "client event refused: over the limit of 5 per second", "code": 4301},
    }
    assert [e["data"] for e in other.events()] == ["0", "1", "2", "3", "4"]
    assert sender.conn.subscriptions == {"private-chat"}  # still connected, still subscribed
    assert (relay.stats.client_events, relay.stats.client_events_rate_limited) == (5, 3)


# Cache channels -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "channel", ["cache-prices", "private-cache-prices", "private-encrypted-cache-prices"]
)
async def test_cache_channels_miss_then_replay_the_last_event(
    relay: Relay, browser: MakeBrowser, channel: str
) -> None:
    first = browser()
    first.subscribe(channel)
    await turns()
    assert [e["event"] for e in first.events()] == [
        "pusher_internal:subscription_succeeded",
        "pusher:cache_miss",
    ]
    publish(relay, channel, "price", "1")
    publish(relay, channel, "price", "2")
    await turns()
    first.events()
    late = browser()
    late.subscribe(channel)
    await turns()
    assert late.events() == [
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"},
        {"event": "price", "channel": channel, "data": "2"},
    ]


async def test_presence_cache_replays_after_the_members(relay: Relay, browser: MakeBrowser) -> None:
    publish(relay, "presence-cache-game", "state", "board")
    await turns()
    client = browser()
    client.subscribe("presence-cache-game", {"user_id": "ann"})
    await turns()
    succeeded, cached = client.events()
    assert presence(succeeded)["ids"] == ["ann"]
    assert (cached["event"], cached["data"]) == ("state", "board")


async def test_a_cached_event_expires_after_the_ttl(relay: Relay, browser: MakeBrowser) -> None:
    publish(relay, "cache-prices", "price", "1")
    await turns()
    relay.cache.expire(time.monotonic() + LIMITS.cache_ttl + 1)
    client = browser()
    client.subscribe("cache-prices")
    await turns()
    assert client.events()[-1]["event"] == "pusher:cache_miss"


async def test_client_events_are_not_cached(relay: Relay, browser: MakeBrowser) -> None:
    sender = browser()
    sender.subscribe("private-cache-chat")
    await turns()
    sender.trigger("private-cache-chat", "client-x", "y")
    await turns()
    late = browser()
    late.subscribe("private-cache-chat")
    await turns()
    assert late.events()[-1]["event"] == "pusher:cache_miss"


# Sign-in and terminating a user's connections -----------------------------------------------


def signin(client: Browser, user: dict[str, Any], **override: str) -> None:
    data = {**SIGNER.authenticate_user(client.socket_id, user), **override}
    client.text(client.relay, "pusher:signin", data)


async def test_signin_succeeds_and_opens_the_user_channel(
    relay: Relay, browser: MakeBrowser
) -> None:
    client = browser()
    user = {"id": "ann", "name": "Ann"}
    signin(client, user)
    await turns()
    (success,) = client.events()
    assert success["event"] == "pusher:signin_success"
    assert json.loads(data_of(success)["user_data"]) == user
    client.subscribe("#server-to-user-ann")
    await turns()
    assert client.events()[0]["event"] == "pusher_internal:subscription_succeeded"
    publish(relay, "#server-to-user-ann", "notice", "for ann")
    await turns()
    assert [e["data"] for e in client.events()] == ["for ann"]


@pytest.mark.parametrize(
    ("user_data", "auth", "message"),
    [
        (
            None,
            "key-one:" + "0" * 64,
            "pusher:signin refused: auth signature does not match socket_id::user::user_data "
            "signed with the app secret",
        ),
        (
            '{"name": "no id"}',
            None,
            "pusher:signin refused: user_data must be a JSON object with a non-empty string id",
        ),
        (
            '{"id": 7}',
            None,
            "pusher:signin refused: user_data must be a JSON object with a non-empty string id",
        ),
        (
            '{"id": "a b"}',
            None,
            "pusher:signin refused: user id must be at most 200 characters of "
            "A-Z a-z 0-9 _ - = @ , . ;",
        ),
    ],
)
async def test_a_bad_signin_gets_4009_and_the_connection_stays(
    relay: Relay, browser: MakeBrowser, user_data: str | None, auth: str | None, message: str
) -> None:
    client = browser()
    data = SIGNER.authenticate_user(client.socket_id, {"id": "ann"})
    if user_data is not None:
        data["user_data"] = user_data
        data["auth"] = f"{APP.key}:{sign(f'{client.socket_id}::user::{user_data}')}"
    if auth is not None:
        data["auth"] = auth
    client.text(relay, "pusher:signin", data)
    await turns()
    assert client.events() == [
        {"event": "pusher:error", "data": {"message": message, "code": 4009}}
    ]
    client.subscribe("#server-to-user-ann")  # not signed in: not for this socket
    await turns()
    refusal = client.events()[0]
    assert data_of(refusal)["error"] == (
        "'#server-to-user-ann' is only for the user it names, signed in with pusher:signin"
    )
    client.text(relay, "pusher:ping", {})
    await turns()
    assert client.events() == [{"event": "pusher:pong", "data": "{}"}]


async def test_terminate_user_closes_every_socket_of_that_user_only(
    relay: Relay, browser: MakeBrowser
) -> None:
    from sidecar.engine.broker.changes import TerminateUser

    ann1, ann2, bob = browser(), browser(), browser()
    for client, user in ((ann1, "ann"), (ann2, "ann"), (bob, "bob")):
        signin(client, {"id": user})
    await turns()
    relay.broker.announce([TerminateUser(APP.id, "ann")])
    await turns(10)
    assert ann1.closes == ann2.closes == [(4009, "Connections of this user terminated by the app")]
    assert bob.closes == []
    for client in (ann1, ann2):
        relay.forget(client.conn)
    assert list(relay.users) == [(APP.id, "bob")]


# Hooks for webhooks -------------------------------------------------------------------------


async def test_occupied_vacated_and_members_reach_the_observer(
    relay: Relay, browser: MakeBrowser
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    relay.state.on_event = lambda app_id, event: events.append((app_id, event))
    client = browser()
    client.subscribe("presence-room", {"user_id": "ann"})
    await turns()
    relay.forget(client.conn)
    await turns()
    assert events == [
        ("1", {"name": "channel_occupied", "channel": "presence-room"}),
        ("1", {"name": "member_added", "channel": "presence-room", "user_id": "ann"}),
        ("1", {"name": "member_removed", "channel": "presence-room", "user_id": "ann"}),
        ("1", {"name": "channel_vacated", "channel": "presence-room"}),
    ]


async def test_client_event_and_cache_miss_are_reported_only_when_asked_for(
    relay: Relay, browser: MakeBrowser
) -> None:
    events: list[tuple[str, dict[str, Any]]] = []
    relay.state.on_event = lambda app_id, event: events.append((app_id, event))
    ann, bob = browser(), browser()
    ann.subscribe("presence-cache-room", {"user_id": "ann"})
    bob.subscribe("presence-cache-room", {"user_id": "bob"})
    await turns()
    ann.trigger("presence-cache-room", "client-hi", {"x": 1})
    await turns()
    assert [e for _, e in events if e["name"] in ("client_event", "cache_miss")] == []
    relay.report_events = {APP.id: frozenset({"client_event", "cache_miss"})}
    events.clear()
    ann.trigger("presence-cache-room", "client-hi", {"x": 1})
    late = browser()
    late.subscribe("cache-empty")
    await turns()
    assert events == [
        (
            "1",
            {
                "name": "client_event",
                "channel": "presence-cache-room",
                "event": "client-hi",
                "data": '{"x":1}',
                "socket_id": ann.socket_id,
                "user_id": "ann",
            },
        ),
        # The miss is known at once; the occupation once the count went round the order.
        ("1", {"name": "cache_miss", "channel": "cache-empty"}),
        ("1", {"name": "channel_occupied", "channel": "cache-empty"}),
    ]
