"""sidecar.engine.relay: the relay core driven with real Connections over fake sinks (no
sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import time

import pytest

from sidecar.engine import relay as relay_module
from sidecar.engine.broker.base import Publication
from sidecar.engine.connection import ConnectionState
from sidecar.engine.heartbeat import Heartbeat
from sidecar.engine.relay import Relay
from sidecar.protocol.frame_writer import OP_TEXT
from sidecar.protocol.pusher import CLOSE_REASONS, CloseCode
from tests.support.relay_clients import (
    APP,
    LIMITS,
    OTHER_APP,
    MakeClient,
    parse_frames,
    subscribed,
    turns,
)

# Opening ------------------------------------------------------------------------------------


async def test_open_sends_connection_established_with_the_activity_timeout(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:connection_established"
    data = json.loads(message["data"])  # a JSON string inside the frame
    assert data == {"socket_id": client.conn.socket_id, "activity_timeout": 30}
    assert re.fullmatch(r"\d+\.\d+", data["socket_id"])
    assert relay.connections[client.conn.socket_id] is client.conn
    assert relay.stats.connections_opened == 1


async def test_socket_ids_are_unique(relay: Relay) -> None:
    ids = {relay.new_socket_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(re.fullmatch(r"\d+\.\d+", i) for i in ids)


# Frames from the client ---------------------------------------------------------------------


async def test_ping_gets_a_pong(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    client.text(relay, "pusher:ping", {})
    await turns()
    assert client.new_messages() == [{"event": "pusher:pong", "data": "{}"}]


async def test_pong_gets_no_reply(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    client.text(relay, "pusher:pong", {})
    await turns()
    assert client.new_messages() == []


async def test_any_frame_counts_as_activity(relay: Relay, make_client: MakeClient) -> None:
    client = make_client(heartbeat=Heartbeat(time.monotonic() - 1000, 30, 10, 0))
    client.conn.heartbeat.ping_sent_at = time.monotonic() - 5
    client.text(relay, "pusher:pong", {})
    assert client.conn.heartbeat.ping_sent_at is None
    assert time.monotonic() - client.conn.heartbeat.last_activity < 5


async def test_subscribe_replies_succeeded_and_registers(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    client.text(relay, "pusher:subscribe", {"channel": "news"})
    await turns()
    assert client.new_messages() == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}
    ]
    assert client.conn.subscriptions == {"news"}
    assert relay.channels[APP.id].count("news") == 1
    assert relay.channels[OTHER_APP.id].count("news") == 0  # apps do not share channels


async def test_subscribe_with_double_encoded_data(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    client.text(relay, "pusher:subscribe", json.dumps({"channel": "news"}))
    assert client.conn.subscriptions == {"news"}


async def test_double_subscribe_succeeds_twice_but_counts_once(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await subscribed(relay, client, "news")
    client.text(relay, "pusher:subscribe", {"channel": "news"})
    await turns()
    assert [m["event"] for m in client.new_messages()] == ["pusher_internal:subscription_succeeded"]
    assert relay.channels[APP.id].count("news") == 1


async def test_unsubscribe_has_no_reply_and_vacates(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await subscribed(relay, client, "news")
    client.text(relay, "pusher:unsubscribe", {"channel": "news"})
    await turns()
    assert client.new_messages() == []
    assert client.conn.subscriptions == set()
    assert relay.channels[APP.id].count("news") == 0
    assert "news" not in list(relay.channels[APP.id])


async def test_unsubscribe_from_a_channel_not_subscribed_is_silent(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    other = make_client()
    await subscribed(relay, other, "news")
    await turns()
    client.new_messages()
    client.text(relay, "pusher:unsubscribe", {"channel": "news"})
    await turns()
    assert client.new_messages() == []
    assert relay.channels[APP.id].count("news") == 1  # the other subscriber is untouched


@pytest.mark.parametrize("channel", ["private-orders", "presence-room", "private-encrypted-x"])
async def test_private_and_presence_subscriptions_with_a_bad_signature_get_an_auth_error(
    relay: Relay, make_client: MakeClient, channel: str
) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    client.text(relay, "pusher:subscribe", {"channel": channel, "auth": "key:sig"})
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:subscription_error"
    assert message["channel"] == channel
    data = json.loads(message["data"])
    assert data["type"] == "AuthError"
    assert data["status"] == 401
    assert data["error"] == "auth must be this app's key, ':' and the signature"
    assert client.conn.subscriptions == set()
    assert relay.channels[APP.id].count(channel) == 0


async def test_a_public_channel_containing_private_in_its_name_is_public(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    client.text(relay, "pusher:subscribe", {"channel": "not-private-orders"})
    assert client.conn.subscriptions == {"not-private-orders"}


async def test_max_subscriptions_gives_pusher_error(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await subscribed(relay, client, "a", "b", "c")  # the limit is 3
    client.text(relay, "pusher:subscribe", {"channel": "d"})
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == 4300
    assert "3 subscriptions" in message["data"]["message"]
    assert client.conn.subscriptions == {"a", "b", "c"}
    assert relay.channels[APP.id].count("d") == 0
    assert client.conn.state is ConnectionState.OPEN  # an error, not a close
    # Re-subscribing to a channel already held is not a new subscription.
    client.text(relay, "pusher:subscribe", {"channel": "a"})
    await turns()
    assert [m["event"] for m in client.new_messages()] == ["pusher_internal:subscription_succeeded"]
    # Leaving one makes room again.
    client.text(relay, "pusher:unsubscribe", {"channel": "b"})
    client.text(relay, "pusher:subscribe", {"channel": "d"})
    assert client.conn.subscriptions == {"a", "c", "d"}


async def test_subscribe_and_unsubscribe_over_the_rate_get_4301_and_are_dropped(
    relay: Relay, make_client: MakeClient
) -> None:
    relay.limits = dataclasses.replace(LIMITS, subscriptions_per_second=4, max_subscriptions=100)
    client = make_client()
    client.new_messages()
    for _ in range(3):  # subscribe/unsubscribe churn: 6 frames, a burst of 4 goes through
        client.text(relay, "pusher:subscribe", {"channel": "a"})
        client.text(relay, "pusher:unsubscribe", {"channel": "a"})
    await turns()
    messages = client.new_messages()
    assert [m["event"] for m in messages] == [
        "pusher_internal:subscription_succeeded",
        "pusher_internal:subscription_succeeded",
        "pusher:error",
        "pusher:error",
    ]
    assert messages[-1]["data"] == {
        "message": "subscriptions refused: over the limit of 4 per second",
        "code": 4301,
    }
    assert client.conn.subscriptions == set()  # the dropped subscribe never happened
    assert relay.stats.subscriptions_rate_limited == 2
    assert relay.stats.client_events_rate_limited == 0
    assert client.conn.state is ConnectionState.OPEN  # an error, not a close
    await asyncio.sleep(0.5)  # two more a half second later
    client.text(relay, "pusher:subscribe", {"channel": "b"})
    client.text(relay, "pusher:subscribe", {"channel": "c"})
    client.text(relay, "pusher:subscribe", {"channel": "d"})
    await turns()
    assert [m["event"] for m in client.new_messages()] == [
        "pusher_internal:subscription_succeeded",
        "pusher_internal:subscription_succeeded",
        "pusher:error",
    ]
    assert client.conn.subscriptions == {"b", "c"}


async def test_a_bad_frame_gets_pusher_error_and_stays_open(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    relay.on_text(client.conn, "not json")
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:error"
    assert message["data"] == {"message": "frame is not JSON", "code": 4300}
    assert client.conn.state is ConnectionState.OPEN


async def test_client_event_on_a_public_channel_is_refused(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await subscribed(relay, client, "news")
    client.text(relay, "client-typing", {"x": 1}, channel="news")
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:error"
    assert "public" in message["data"]["message"]


async def test_binary_frames_get_pusher_error(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await turns()
    client.new_messages()
    relay.on_binary(client.conn)
    await turns()
    (message,) = client.new_messages()
    assert message["event"] == "pusher:error"
    assert message["data"]["code"] == 4300


# Delivery -----------------------------------------------------------------------------------


async def test_deliver_encodes_once_and_shares_the_frame(
    relay: Relay, make_client: MakeClient
) -> None:
    clients = [make_client() for _ in range(3)]
    for client in clients:
        await subscribed(relay, client, "news")
    for client in clients:
        client.sink.writes.clear()
    relay.deliver(Publication.of(APP.id, ("news",), "created", '{"id":1}'))
    await turns()
    frames = [client.sink.writes for client in clients]
    assert all(len(w) == 1 for w in frames)
    first = frames[0][0]
    assert all(w[0] is first for w in frames)  # one bytes object for every subscriber
    ((opcode, payload),) = parse_frames(bytes(first))
    assert opcode == OP_TEXT
    assert json.loads(payload) == {"event": "created", "channel": "news", "data": '{"id":1}'}
    assert relay.stats.publications == 1
    assert relay.fanout is not None and relay.fanout.delivered == 3


async def test_deliver_reaches_only_the_channel_subscribers(
    relay: Relay, make_client: MakeClient
) -> None:
    news, sports, both = make_client(), make_client(), make_client()
    await subscribed(relay, news, "news")
    await subscribed(relay, sports, "sports")
    await subscribed(relay, both, "news", "sports")
    relay.deliver(Publication.of(APP.id, ("news", "sports"), "ev", "x"))
    await turns()
    assert [m["channel"] for m in news.new_messages()] == ["news"]
    assert [m["channel"] for m in sports.new_messages()] == ["sports"]
    assert [m["channel"] for m in both.new_messages()] == ["news", "sports"]


async def test_deliver_honours_socket_id_exclusion(relay: Relay, make_client: MakeClient) -> None:
    sender, other = make_client(), make_client()
    await subscribed(relay, sender, "news")
    await subscribed(relay, other, "news")
    relay.deliver(Publication.of(APP.id, ("news",), "ev", "x", socket_id=sender.conn.socket_id))
    await turns()
    assert sender.new_messages() == []
    assert [m["event"] for m in other.new_messages()] == ["ev"]
    assert relay.fanout is not None and relay.fanout.delivered == 1


async def test_deliver_ignores_unknown_app_ids(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    await subscribed(relay, client, "news")
    relay.deliver(Publication.of("99", ("news",), "ev", "x"))
    await turns()
    assert client.new_messages() == []
    assert relay.stats.publications == 0


async def test_deliver_does_not_cross_apps(relay: Relay, make_client: MakeClient) -> None:
    one, two = make_client(APP.id), make_client(OTHER_APP.id)
    await subscribed(relay, one, "news")
    await subscribed(relay, two, "news")
    relay.deliver(Publication.of(OTHER_APP.id, ("news",), "ev", "x"))
    await turns()
    assert one.new_messages() == []
    assert [m["event"] for m in two.new_messages()] == ["ev"]


async def test_deliver_to_a_channel_nobody_holds_is_counted_but_sends_nothing(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client()
    await subscribed(relay, client, "news")
    relay.deliver(Publication.of(APP.id, ("empty",), "ev", "x"))
    await turns()
    assert client.new_messages() == []
    assert relay.stats.publications == 1
    assert relay.fanout is not None and relay.fanout.delivered == 0


# Forgetting ---------------------------------------------------------------------------------


async def test_forget_removes_every_trace_and_counts(relay: Relay, make_client: MakeClient) -> None:
    client, stays = make_client(), make_client()
    await subscribed(relay, client, "news", "sports")
    await subscribed(relay, stays, "news")
    relay.forget(client.conn)
    assert client.conn.socket_id not in relay.connections
    assert client.conn.state is ConnectionState.CLOSED
    assert client.conn.subscriptions == set()
    assert relay.channels[APP.id].count("news") == 1
    assert "sports" not in list(relay.channels[APP.id])
    assert relay.stats.connections_closed == 1
    assert relay.stats.slow_client_closes == 0
    relay.forget(client.conn)  # twice: counted once
    assert relay.stats.connections_closed == 1
    relay.deliver(Publication.of(APP.id, ("news",), "ev", "x"))
    await turns()
    assert client.new_messages() == []


async def test_forget_counts_a_slow_client_close(relay: Relay, make_client: MakeClient) -> None:
    client = make_client()
    client.conn.close(CloseCode.OVER_CAPACITY)
    relay.forget(client.conn)
    assert relay.stats.slow_client_closes == 1


async def test_wait_until_empty_returns_once_the_last_connection_is_forgotten(
    relay: Relay, make_client: MakeClient
) -> None:
    a, b = make_client(), make_client()
    waiter = asyncio.ensure_future(relay.wait_until_empty())
    await turns()
    relay.forget(a.conn)
    await turns()
    assert not waiter.done()
    relay.forget(b.conn)
    await asyncio.wait_for(waiter, timeout=1)


async def test_close_all_closes_every_connection_with_the_code(
    relay: Relay, make_client: MakeClient
) -> None:
    clients = [make_client() for _ in range(3)]
    relay.close_all(CloseCode.RECONNECT)
    await turns()
    assert all(c.closes == [(4200, CLOSE_REASONS[CloseCode.RECONNECT])] for c in clients)


# Liveness -----------------------------------------------------------------------------------


async def test_sweep_goes_through_many_connections_a_slice_per_loop_turn(
    relay: Relay, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.monotonic()
    clients = [make_client(heartbeat=Heartbeat(now, 30, 10, 0)) for _ in range(5)]
    await turns()
    for client in clients:
        client.new_messages()
    monkeypatch.setattr(relay_module, "SWEEP_SLICE", 2)
    monkeypatch.setattr(relay_module.time, "monotonic", lambda: now + 31)
    relay._sweep()
    pinged = [c for c in clients if c.new_messages()]
    assert len(pinged) == 2  # the rest wait for the next turns
    await turns(6)
    rest = [c for c in clients if c not in pinged]
    assert all(c.new_messages() == [{"event": "pusher:ping", "data": "{}"}] for c in rest)


async def test_sweep_pings_a_quiet_client_then_closes_with_4201(
    relay: Relay, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    now = time.monotonic()
    client = make_client(heartbeat=Heartbeat(now, 30, 10, 0))
    fresh = make_client(heartbeat=Heartbeat(now, 30, 10, 0))
    await turns()
    client.new_messages()
    fresh.new_messages()
    fresh.conn.heartbeat.on_activity(now + 25)

    monkeypatch.setattr(relay_module.time, "monotonic", lambda: now + 31)
    relay._sweep()
    await turns()
    assert client.new_messages() == [{"event": "pusher:ping", "data": "{}"}]
    assert fresh.new_messages() == []
    assert client.conn.state is ConnectionState.OPEN

    monkeypatch.setattr(relay_module.time, "monotonic", lambda: now + 41)
    relay._sweep()
    await turns()
    assert client.conn.close_code == CloseCode.PONG_NOT_RECEIVED
    assert client.closes == [(4201, CLOSE_REASONS[CloseCode.PONG_NOT_RECEIVED])]
    assert fresh.conn.state is ConnectionState.OPEN


async def test_sweep_with_a_heartbeat_from_the_past(relay: Relay, make_client: MakeClient) -> None:
    client = make_client(heartbeat=Heartbeat(time.monotonic() - 100, 30, 10, 0))
    await turns()
    client.new_messages()
    relay._sweep()
    await turns()
    assert [m["event"] for m in client.new_messages()] == ["pusher:ping"]
    client.conn.heartbeat.ping_sent_at = time.monotonic() - 11
    relay._sweep()
    await turns()
    assert client.closes == [(4201, CLOSE_REASONS[CloseCode.PONG_NOT_RECEIVED])]


async def test_sweep_closes_an_idle_connection_with_4202(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client(heartbeat=Heartbeat(time.monotonic() - 100, 1000, 10, 60))
    relay._sweep()
    await turns()
    assert client.closes == [(4202, CLOSE_REASONS[CloseCode.CLOSED_FOR_INACTIVITY])]


async def test_subscribing_stops_the_idle_clock(relay: Relay, make_client: MakeClient) -> None:
    client = make_client(heartbeat=Heartbeat(time.monotonic() - 100, 1000, 10, 60))
    client.text(relay, "pusher:subscribe", {"channel": "news"})
    relay._sweep()
    await turns()
    assert client.closes == []
    assert client.conn.state is ConnectionState.OPEN


async def test_sweep_skips_connections_already_closing(
    relay: Relay, make_client: MakeClient
) -> None:
    client = make_client(heartbeat=Heartbeat(time.monotonic() - 100, 30, 10, 0))
    client.conn.close(CloseCode.RECONNECT)
    relay._sweep()
    await turns()
    assert [m["event"] for m in client.all_messages()] == ["pusher:connection_established"]
    assert client.conn.heartbeat.ping_sent_at is None  # not even polled


async def test_sweep_reschedules_itself(relay: Relay) -> None:
    first = relay._sweeper
    assert first is not None
    relay._sweep()
    assert relay._sweeper is not None and relay._sweeper is not first
    relay.stop()
    assert relay._sweeper is None


async def test_subscription_succeeded_waits_until_the_broker_says_the_channel_is_ready(
    relay: Relay, make_client: MakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With Redis: answered once the node's subscription is confirmed (broker.on_ready)."""
    monkeypatch.setattr(relay.broker, "ready", lambda app_id, channel: False)
    waiting, leaving = make_client(), make_client()
    await turns()
    waiting.new_messages()
    leaving.new_messages()
    waiting.text(relay, "pusher:subscribe", {"channel": "news"})
    leaving.text(relay, "pusher:subscribe", {"channel": "news"})
    await turns()
    assert waiting.new_messages() == leaving.new_messages() == []
    leaving.text(relay, "pusher:unsubscribe", {"channel": "news"})
    await turns()
    assert relay.broker.on_ready is not None
    relay.broker.on_ready(APP.id, "news")
    await turns()
    assert waiting.new_messages() == [
        {"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}
    ]
    assert leaving.new_messages() == []  # gone meanwhile: forgotten
    relay.broker.on_ready(APP.id, "news")  # said again: nothing more
    await turns()
    assert waiting.new_messages() == []
