"""Fuzzing sidecar.protocol.pusher: any frame a client sends gives a ClientMessage or a
ProtocolError, never another exception; what the relay encodes decodes back to what it meant.
"""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

import tests.support.fuzz  # noqa: F401  (the hypothesis profile)
from sidecar.protocol.pusher import (
    MAX_CHANNEL_NAME_LENGTH,
    ClientEvent,
    ClientMessage,
    CloseCode,
    Ping,
    Pong,
    ProtocolError,
    Signin,
    Subscribe,
    Unsubscribe,
    check_handshake,
    encode_error,
    encode_event,
    event_prefix,
    parse_client_frame,
    validate_channel_name,
)

# JSON values, deep and wide enough to reach every branch (orjson takes 64-bit integers).
json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)
channel_name = st.text(
    "ABCXYZabcxyz0189_-=@,.;", min_size=1, max_size=MAX_CHANNEL_NAME_LENGTH
) | st.sampled_from(["private-a", "presence-b", "private-encrypted-c", "#server-to-user-1"])
event_name = st.sampled_from(
    [
        "pusher:ping",
        "pusher:pong",
        "pusher:subscribe",
        "pusher:unsubscribe",
        "pusher:signin",
        "pusher:other",
        "pusher_internal:member_added",
        "client-typing",
        "client-" + "x" * 200,
        "other",
        "",
    ]
)
# The fields of a frame, each present or not, each a plausible value or any JSON at all.
data_fields = st.fixed_dictionaries(
    {},
    optional={
        "channel": channel_name | json_value,
        "auth": st.text(max_size=80) | json_value,
        "channel_data": st.text(max_size=80) | json_value,
        "user_data": st.text(max_size=80) | json_value,
    },
)
frame_fields = st.fixed_dictionaries(
    {"event": event_name | json_value},
    optional={
        "data": data_fields | data_fields.map(lambda d: orjson.dumps(d).decode()) | json_value,
        "channel": channel_name | json_value,
    },
)


def parse(text: str | bytes) -> ClientMessage | None:
    try:
        message = parse_client_frame(text)
    except ProtocolError as exc:
        assert exc.message
        assert 4000 <= exc.code <= 4999
        assert exc.close is None or isinstance(exc.close, CloseCode)
        return None
    assert isinstance(message, ClientMessage)
    return message


@given(st.binary(max_size=300))
def test_any_bytes_parse_or_are_refused(raw: bytes) -> None:
    parse(raw)


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused(text: str) -> None:
    parse(text)


@given(frame_fields)
def test_any_frame_object_parses_or_is_refused(frame: dict) -> None:
    message = parse(orjson.dumps(frame))
    event = frame.get("event")
    if isinstance(message, Subscribe | Unsubscribe | ClientEvent):
        assert validate_channel_name(message.channel) == message.channel
    if isinstance(message, ClientEvent):
        assert message.event == event and event.startswith("client-")
        assert isinstance(message.data, str)
    if isinstance(message, Ping | Pong):
        assert event in ("pusher:ping", "pusher:pong")


@given(st.integers(1, 1100))
def test_deep_nesting_is_refused_not_raised(depth: int) -> None:
    data = "[" * depth + "]" * depth
    text = '{"event":"client-deep","channel":"private-a","data":' + data + "}"
    message = parse(text)
    if message is not None:
        assert isinstance(message, ClientEvent)


@given(channel_name, st.none() | st.text(max_size=80), st.none() | st.text(max_size=80))
def test_a_subscription_round_trips(
    channel: str, auth: str | None, channel_data: str | None
) -> None:
    data = {"channel": channel, "auth": auth, "channel_data": channel_data}
    frame = {"event": "pusher:subscribe", "data": data}
    assert parse_client_frame(orjson.dumps(frame)) == Subscribe(channel, auth, channel_data)
    # a few clients double-encode data
    frame["data"] = orjson.dumps(data).decode()
    assert parse_client_frame(orjson.dumps(frame)) == Subscribe(channel, auth, channel_data)


@given(st.text(min_size=1, max_size=80), st.text(min_size=1, max_size=200))
def test_a_signin_round_trips(auth: str, user_data: str) -> None:
    frame = {"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}
    assert parse_client_frame(orjson.dumps(frame)) == Signin(auth, user_data)


@given(channel_name, st.text(max_size=40), json_value)
def test_a_client_event_round_trips(channel: str, suffix: str, data: object) -> None:
    event = "client-" + suffix
    frame = {"event": event, "channel": channel, "data": data}
    message = parse_client_frame(orjson.dumps(frame))
    assert message == ClientEvent(
        event, channel, data if isinstance(data, str) else orjson.dumps(data).decode()
    )


@given(st.text(max_size=60), st.text(max_size=200), st.none() | channel_name)
def test_encoded_events_decode_to_what_was_meant(
    event: str, data: str, channel: str | None
) -> None:
    decoded = orjson.loads(encode_event(event, data, channel))
    expected = {"event": event, "data": data}
    if channel is not None:
        expected["channel"] = channel
        literal = orjson.dumps(data)
        assert event_prefix(event, channel) + literal + b"}" == encode_event(event, data, channel)
    assert decoded == expected


@given(st.text(max_size=200), st.none() | st.integers(4000, 4999))
def test_errors_encode_as_json(message: str, code: int | None) -> None:
    assert orjson.loads(encode_error(message, code)) == {
        "event": "pusher:error",
        "data": {"message": message, "code": code},
    }


@given(st.text(max_size=20), st.booleans(), st.none() | st.text(max_size=5000))
def test_any_handshake_query_gives_a_decision(
    path_key: str, known: bool, protocol: str | None
) -> None:
    decision = check_handshake(path_key, known, protocol)
    assert decision is None or isinstance(decision, CloseCode)
    if decision is None:
        assert known and protocol is not None and int(protocol) == 7
