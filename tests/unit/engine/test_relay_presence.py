"""sidecar.engine.relay: private, encrypted and presence channels, members across sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from sidecar.config.apps import AppRegistry
from sidecar.engine.broker.changes import MemberJoin, NodeGone, Share, cluster_origin
from sidecar.engine.channel_state import ChannelInfo
from sidecar.engine.connection import ConnectionState
from sidecar.engine.relay import Relay
from tests.support.local_relay import local_relay, start_local
from tests.support.relay_browser import (
    APP,
    LIMITS,
    SIGNER,
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


# Private and encrypted channels -------------------------------------------------------------


@pytest.mark.parametrize("channel", ["private-orders", "private-encrypted-orders"])
async def test_a_signed_private_subscription_succeeds_and_receives_events_untouched(
    relay: Relay, browser: MakeBrowser, channel: str
) -> None:
    client = browser()
    client.subscribe(channel)
    await turns()
    assert client.events() == [
        {"event": "pusher_internal:subscription_succeeded", "channel": channel, "data": "{}"}
    ]
    ciphertext = '{"nonce":"bm9uY2U=","ciphertext":"c2VjcmV0"}'
    publish(relay, channel, "sealed", ciphertext)
    await turns()
    (event,) = client.events()
    assert event["data"] == ciphertext  # byte for byte: the relay never looks inside
    assert relay.state.info(APP.id, channel) == ChannelInfo(1, 0)


@pytest.mark.parametrize(
    ("override", "error"),
    [
        ({"auth": None}, "auth is missing: get one from your auth endpoint"),
        ({"auth": "no-colon"}, "auth must be this app's key, ':' and the signature"),
        ({"auth": "key-two:" + "0" * 64}, "auth must be this app's key, ':' and the signature"),
        (
            {"auth": "key-one:" + "0" * 64},
            "auth signature does not match socket_id:channel_name signed with the app secret",
        ),
    ],
)
async def test_a_bad_private_auth_is_refused_and_gets_no_events(
    relay: Relay, browser: MakeBrowser, override: dict[str, Any], error: str
) -> None:
    client, bystander = browser(), browser()
    bystander.subscribe("private-orders")
    if override["auth"] is None:
        client.text(relay, "pusher:subscribe", {"channel": "private-orders"})
    else:
        client.subscribe("private-orders", **override)
    await turns()
    (refusal,) = client.events()
    assert refusal["event"] == "pusher:subscription_error"
    assert refusal["channel"] == "private-orders"
    assert data_of(refusal) == {"type": "AuthError", "error": error, "status": 401}
    bystander.events()
    publish(relay, "private-orders", "secret", "x")
    await turns()
    assert client.events() == []
    assert [e["event"] for e in bystander.events()] == ["secret"]
    assert relay.state.info(APP.id, "private-orders") == ChannelInfo(1, 0)


async def test_a_signature_for_another_socket_is_refused(
    relay: Relay, browser: MakeBrowser
) -> None:
    thief, victim = browser(), browser()
    stolen = SIGNER.authenticate("private-orders", victim.socket_id)["auth"]
    thief.subscribe("private-orders", auth=stolen)
    await turns()
    assert data_of(thief.events()[0])["status"] == 401
    assert thief.conn.subscriptions == set()


# Presence -----------------------------------------------------------------------------------


def presence(message: dict[str, Any]) -> dict[str, Any]:
    assert message["event"] == "pusher_internal:subscription_succeeded"
    return data_of(message)["presence"]


async def test_presence_members_one_per_user_however_many_sockets(
    relay: Relay, browser: MakeBrowser
) -> None:
    ann1, bob, ann2 = browser(), browser(), browser()
    ann1.subscribe("presence-room", {"user_id": "ann", "user_info": {"name": "Ann"}})
    await turns()
    assert presence(ann1.events()[0]) == {
        "ids": ["ann"],
        "hash": {"ann": {"name": "Ann"}},
        "count": 1,
    }
    bob.subscribe("presence-room", {"user_id": "bob"})
    await turns()
    assert presence(bob.events()[0])["ids"] == ["ann", "bob"]
    assert [(e["event"], data_of(e)) for e in ann1.events()] == [
        ("pusher_internal:member_added", {"user_id": "bob", "user_info": None})
    ]
    ann2.subscribe("presence-room", {"user_id": "ann", "user_info": {"name": "Ann"}})
    await turns()
    assert presence(ann2.events()[0])["count"] == 2
    assert ann1.events() == [] and bob.events() == []  # ann was already there
    assert relay.state.info(APP.id, "presence-room") == ChannelInfo(3, 2)

    ann1.text(relay, "pusher:unsubscribe", {"channel": "presence-room"})
    await turns()
    assert bob.events() == []  # ann still has a socket in
    relay.forget(ann2.conn)  # the last one goes away
    await turns()
    assert [(e["event"], data_of(e)) for e in bob.events()] == [
        ("pusher_internal:member_removed", {"user_id": "ann"})
    ]
    assert relay.state.members(APP.id, "presence-room") == {"bob": None}


async def test_a_presence_user_id_may_be_a_number(relay: Relay, browser: MakeBrowser) -> None:
    client = browser()
    client.subscribe("presence-room", {"user_id": 42})
    await turns()
    assert presence(client.events()[0])["ids"] == ["42"]


@pytest.mark.parametrize(
    ("channel_data", "error", "status"),
    [
        ("not json", "channel_data is not JSON", 400),
        ("[1, 2]", "channel_data must be a JSON object", 400),
        ('{"user_info": {}}', "channel_data has no user_id (a non-empty string or a number)", 400),
        ('{"user_id": ""}', "channel_data has no user_id (a non-empty string or a number)", 400),
        (
            '{"user_id": "u", "user_info": "' + "x" * 100 + '"}',
            "channel_data user_info is 102 bytes, over the limit of 64",
            413,
        ),
    ],
)
async def test_bad_channel_data_is_refused_with_a_clear_error(
    relay: Relay, browser: MakeBrowser, channel_data: str, error: str, status: int
) -> None:
    client, member = browser(), browser()
    member.subscribe("presence-room", {"user_id": "member"})
    await turns()
    member.events()
    # Signed correctly: what is wrong is what the app's endpoint put in it.
    signature = SIGNER.authenticate("presence-room", client.socket_id)["auth"]
    auth = signature.split(":")[0] + ":" + sign(f"{client.socket_id}:presence-room:{channel_data}")
    client.text(
        relay,
        "pusher:subscribe",
        {"channel": "presence-room", "auth": auth, "channel_data": channel_data},
    )
    await turns()
    (refusal,) = client.events()
    assert data_of(refusal) == {"type": "AuthError", "error": error, "status": status}
    assert member.events() == []
    assert relay.state.members(APP.id, "presence-room") == {"member": None}


async def test_presence_without_channel_data_is_refused(relay: Relay, browser: MakeBrowser) -> None:
    client = browser()
    auth = SIGNER.authenticate("presence-room", client.socket_id)["auth"]
    client.text(relay, "pusher:subscribe", {"channel": "presence-room", "auth": auth})
    await turns()
    error = data_of(client.events()[0])["error"]
    assert error.startswith("channel_data is missing")


async def test_presence_channel_data_is_part_of_the_signature(
    relay: Relay, browser: MakeBrowser
) -> None:
    client = browser()
    signed = SIGNER.authenticate("presence-room", client.socket_id, {"user_id": "guest"})
    client.text(
        relay,
        "pusher:subscribe",
        {"channel": "presence-room", "auth": signed["auth"], "channel_data": '{"user_id":"admin"}'},
    )
    await turns()
    assert data_of(client.events()[0]) == {
        "type": "AuthError",
        "error": "auth signature does not match socket_id:channel_name:channel_data signed "
        "with the app secret",
        "status": 401,
    }


async def test_a_full_presence_channel_refuses_new_users(
    relay: Relay, browser: MakeBrowser
) -> None:
    members = [browser() for _ in range(3)]  # the limit is 3
    for i, member in enumerate(members):
        member.subscribe("presence-room", {"user_id": f"u{i}"})
    await turns()
    late, again = browser(), browser()
    late.subscribe("presence-room", {"user_id": "late"})
    again.subscribe("presence-room", {"user_id": "u0"})  # a member's second socket: fine
    await turns()
    (refusal,) = late.events()
    assert refusal["event"] == "pusher:subscription_error"
    assert data_of(refusal) == {
        "type": "LimitReached",
        "error": "presence channel 'presence-room' is full: 3 members at most",
        "status": 403,
    }
    assert presence(again.events()[0])["count"] == 3
    assert late.conn.subscriptions == set()
    assert relay.state.info(APP.id, "presence-room") == ChannelInfo(4, 3)


async def test_unsubscribing_before_the_join_is_answered_leaves_no_member(
    relay: Relay, browser: MakeBrowser
) -> None:
    client, watcher = browser(), browser()
    watcher.subscribe("presence-room", {"user_id": "watcher"})
    await turns()
    watcher.events()
    client.subscribe("presence-room", {"user_id": "ann"})
    client.text(relay, "pusher:unsubscribe", {"channel": "presence-room"})  # same turn
    await turns()
    assert client.events() == []
    assert relay.state.members(APP.id, "presence-room") == {"watcher": None}


async def test_one_member_churning_a_presence_room_costs_the_others_a_bounded_trickle() -> None:
    """Join/leave in a loop (the attack that sent 20 members 800,000 frames): the joins past
    limits.presence_joins_per_second are refused with 4301, the others hear of a few."""
    limits = dataclasses.replace(
        LIMITS, max_presence_members=50, subscriptions_per_second=100, presence_joins_per_second=10
    )
    r = local_relay(AppRegistry((APP,)), limits)
    start_local(r)
    try:
        browser = browser_factory(r)
        members = [browser() for _ in range(20)]
        for i, member in enumerate(members):
            member.subscribe("presence-room", {"user_id": f"member-{i}"})
        await turns()
        for member in members:
            member.events()
        churner = browser()
        started = time.monotonic()
        for _ in range(2000):
            churner.subscribe("presence-room", {"user_id": "churner"})
            await turns(2)  # the join comes back through the broker
            churner.text(r, "pusher:unsubscribe", {"channel": "presence-room"})
            await turns(2)
        elapsed = time.monotonic() - started
        errors = churner.events("pusher:error")
        # The loop's last unsubscribe may have been refused too (the subscription budget): with
        # the buckets full again, the churner leaves for good.
        await asyncio.sleep(1.1)
        churner.text(r, "pusher:unsubscribe", {"channel": "presence-room"})
        await turns(2)
        # Joins: a burst of 10, then 10 a second; each join and its leave is one frame each.
        allowed_joins = 10 + 10 * elapsed + 1
        assert len(errors) >= 2000 - 2 * allowed_joins
        assert {e["data"]["code"] for e in errors} == {4301}
        for member in members:
            frames = member.events()
            assert len(frames) <= 2 * allowed_joins + 1  # + the last leave
            assert {e["event"] for e in frames} <= {
                "pusher_internal:member_added",
                "pusher_internal:member_removed",
            }
            assert member.closes == [] and member.conn.state is ConnectionState.OPEN
        assert r.stats.subscriptions_rate_limited == len(errors)
        assert r.state.info(APP.id, "presence-room") == ChannelInfo(20, 20)
    finally:
        r.stop()
        for conn in list(r.connections.values()):
            r.forget(conn)


async def test_a_swept_node_and_a_share_reach_local_members_as_member_frames(
    relay: Relay, browser: MakeBrowser
) -> None:
    """Redis: another node's members come and go by NodeGone and Share as by their own joins."""
    bob = browser()
    bob.subscribe("presence-room", {"user_id": "bob"})
    await turns()
    bob.events()
    other, sweeper = cluster_origin(7, 1), cluster_origin(9, 0)
    relay.on_changes(other, [MemberJoin(APP.id, "presence-room", "7.1", "eve", None)])
    relay.on_changes(sweeper, [NodeGone(7)])
    share = {
        APP.id: {
            "presence-room": {"o": [[other, 1]], "m": [["dan", 1]], "s": [["7.2", "dan", other]]}
        }
    }
    relay.on_changes(cluster_origin(7, 0), [Share(7, share)])
    await turns()
    assert [(e["event"], data_of(e)) for e in bob.events()] == [
        ("pusher_internal:member_added", {"user_id": "eve", "user_info": None}),
        ("pusher_internal:member_removed", {"user_id": "eve"}),
        ("pusher_internal:member_added", {"user_id": "dan", "user_info": 1}),
    ]
    assert relay.state.members(APP.id, "presence-room") == {"bob": None, "dan": 1}
