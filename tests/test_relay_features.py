"""The relay's private, presence and cache channels, client events and sign-in, driven with real
Connections over fake sinks and signatures made by the `pusher` library (no sockets)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pusher
import pytest

from sidecar.apps import AppRegistry
from sidecar.broker.base import Publication
from sidecar.config import AppConfig, LimitsConfig
from sidecar.relay.channel_state import ChannelInfo
from sidecar.relay.connection import Connection
from sidecar.relay.heartbeat import Heartbeat
from sidecar.relay.relay import Relay
from tests.test_relay import Client, Sink

APP = AppConfig(id="1", key="key-one", secret="secret-one-secret", client_events=True)
QUIET_APP = AppConfig(id="2", key="key-two", secret="secret-two-secret")
LIMITS = LimitsConfig(
    max_presence_members=3,
    max_presence_user_info_bytes=64,
    client_events_per_second=5,
    cache_ttl=60,
)
# The master key only matters to the library (it derives the encrypted channels' shared secret,
# which the relay never sees).
MASTER_KEY = "KZ4SYKVfVdgJ0hDOG8Bj8SRy5vN3pKlYcbmjTdRYwRQ="
SIGNER = pusher.Pusher(
    app_id=APP.id, key=APP.key, secret=APP.secret, encryption_master_key_base64=MASTER_KEY
)
QUIET_SIGNER = pusher.Pusher(
    app_id=QUIET_APP.id,
    key=QUIET_APP.key,
    secret=QUIET_APP.secret,
    encryption_master_key_base64=MASTER_KEY,
)


@pytest.fixture
async def relay() -> AsyncIterator[Relay]:
    r = Relay(AppRegistry((APP, QUIET_APP)), LIMITS)
    r.start()
    yield r
    r.stop()
    for conn in list(r.connections.values()):
        r.forget(conn)


class Browser(Client):
    """A client with pusher-js's moves: subscribe with auth from the app's signer, trigger."""

    def __init__(self, relay: Relay, conn: Connection, sink: Sink, closes: list) -> None:
        super().__init__(conn, sink, closes)
        self.relay = relay
        self.signer = SIGNER if conn.app_id == APP.id else QUIET_SIGNER

    @property
    def socket_id(self) -> str:
        return self.conn.socket_id

    def subscribe(self, channel: str, user: dict[str, Any] | None = None, **override: Any) -> None:
        data: dict[str, Any] = {"channel": channel}
        if channel.startswith(("private-", "presence-")):
            data.update(self.signer.authenticate(channel, self.socket_id, user))
            data.pop("shared_secret", None)
        data.update(override)
        self.text(self.relay, "pusher:subscribe", data)

    def trigger(self, channel: str, event: str, data: Any) -> None:
        self.text(self.relay, event, data, channel=channel)

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        return [m for m in self.new_messages() if name is None or m["event"] == name]


MakeBrowser = Callable[..., Browser]


@pytest.fixture
def browser(relay: Relay) -> MakeBrowser:
    def make(app_id: str = APP.id) -> Browser:
        sink = Sink()
        closes: list[tuple[int, str]] = []
        assert relay.scheduler is not None
        conn = Connection(
            socket_id=relay.new_socket_id(),
            app_id=app_id,
            sink=sink,
            scheduler=relay.scheduler,
            heartbeat=Heartbeat(time.monotonic(), 120, 30, 0),
            queue_limit=LIMITS.send_queue_bytes,
            close_ready=lambda code, reason: closes.append((code, reason)),
        )
        relay.open(conn)
        b = Browser(relay, conn, sink, closes)
        b.new_messages()
        return b

    return make


async def turns(n: int = 6) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def data_of(message: dict[str, Any]) -> Any:
    return json.loads(message["data"])


def publish(relay: Relay, channel: str, name: str, data: str, app_id: str = APP.id) -> None:
    relay.broker.publish(Publication.of(app_id, (channel,), name, data))


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
    auth = signature.split(":")[0] + ":" + _sign(f"{client.socket_id}:presence-room:{channel_data}")
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


def _sign(message: str) -> str:
    from sidecar.relay.auth import hmac_sha256_hex

    return hmac_sha256_hex(APP.secret, message)


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
        data["auth"] = f"{APP.key}:{_sign(f'{client.socket_id}::user::{user_data}')}"
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
    from sidecar.broker.changes import TerminateUser

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
