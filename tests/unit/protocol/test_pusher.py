"""sidecar.protocol.pusher: client frames in, typed messages out; server frames out."""

from __future__ import annotations

import json

import pytest

from sidecar.protocol.pusher import (
    MAX_CHANNEL_NAME_LENGTH,
    PING_FRAME,
    PONG_FRAME,
    ClientEvent,
    CloseCode,
    ErrorCode,
    Ping,
    Pong,
    ProtocolError,
    Signin,
    Subscribe,
    Unsubscribe,
    check_handshake,
    encode_cache_miss,
    encode_connection_established,
    encode_error,
    encode_event,
    encode_member_added,
    encode_member_removed,
    encode_signin_success,
    encode_subscription_error,
    encode_subscription_succeeded,
    parse_client_frame,
    validate_channel_name,
)


def frame(**fields: object) -> str:
    return json.dumps(fields)


def refused(text: str | bytes) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(text)
    return info.value


# parse_client_frame: accepted messages ------------------------------------------------------


def test_ping_and_pong() -> None:
    assert parse_client_frame(frame(event="pusher:ping", data={})) == Ping()
    assert parse_client_frame(frame(event="pusher:pong")) == Pong()


def test_bytes_are_accepted_as_well_as_str() -> None:
    assert parse_client_frame(frame(event="pusher:ping").encode()) == Ping()


def test_subscribe_public_channel() -> None:
    msg = parse_client_frame(frame(event="pusher:subscribe", data={"channel": "news"}))
    assert msg == Subscribe("news", None, None)


def test_subscribe_with_auth_and_channel_data() -> None:
    channel_data = '{"user_id":"1","user_info":{"name":"A"}}'
    msg = parse_client_frame(
        frame(
            event="pusher:subscribe",
            data={"channel": "presence-room", "auth": "key:sig", "channel_data": channel_data},
        )
    )
    assert msg == Subscribe("presence-room", "key:sig", channel_data)


def test_subscribe_data_given_as_a_json_string() -> None:
    data = json.dumps({"channel": "private-x", "auth": "key:sig"})
    msg = parse_client_frame(frame(event="pusher:subscribe", data=data))
    assert msg == Subscribe("private-x", "key:sig", None)


def test_unsubscribe() -> None:
    msg = parse_client_frame(frame(event="pusher:unsubscribe", data={"channel": "news"}))
    assert msg == Unsubscribe("news")


def test_unsubscribe_data_given_as_a_json_string() -> None:
    msg = parse_client_frame(frame(event="pusher:unsubscribe", data='{"channel":"news"}'))
    assert msg == Unsubscribe("news")


def test_client_event_with_object_data_is_kept_as_a_json_string() -> None:
    msg = parse_client_frame(
        frame(event="client-typing", channel="private-chat", data={"who": "ann", "n": 1})
    )
    assert isinstance(msg, ClientEvent)
    assert (msg.event, msg.channel) == ("client-typing", "private-chat")
    assert isinstance(msg.data, str)
    assert json.loads(msg.data) == {"who": "ann", "n": 1}


def test_client_event_with_string_data_is_passed_through_unchanged() -> None:
    msg = parse_client_frame(frame(event="client-x", channel="private-chat", data='{"a": 1}'))
    assert msg == ClientEvent("client-x", "private-chat", '{"a": 1}')


def test_client_event_name_of_200_characters_is_accepted() -> None:
    name = "client-" + "e" * (200 - len("client-"))
    msg = parse_client_frame(frame(event=name, channel="private-c", data={}))
    assert isinstance(msg, ClientEvent)
    assert msg.event == name


# parse_client_frame: refusals ---------------------------------------------------------------


def test_refusal_is_an_invalid_message_that_keeps_the_connection_open() -> None:
    error = refused("not json")
    assert error.code == ErrorCode.INVALID_MESSAGE == 4300
    assert error.close is None


@pytest.mark.parametrize("text", ["not json", "{", b"\xff\xfe", ""])
def test_non_json_is_refused(text: str | bytes) -> None:
    assert "not JSON" in refused(text).message


@pytest.mark.parametrize("text", ["[]", '"pusher:ping"', "42", "null"])
def test_non_object_is_refused(text: str) -> None:
    assert "JSON object" in refused(text).message


@pytest.mark.parametrize(
    "text",
    ["{}", frame(data={}), frame(event=""), frame(event=None), frame(event=7)],
)
def test_missing_or_empty_event_is_refused(text: str) -> None:
    assert "'event'" in refused(text).message


@pytest.mark.parametrize("event", ["pusher:unknown", "pusher:signup", "pusher_internal:x"])
def test_unknown_pusher_event_is_refused(event: str) -> None:
    error = refused(frame(event=event, data={}))
    assert "unsupported event" in error.message
    assert event in error.message


@pytest.mark.parametrize("event", ["message", "my-event", "Client-x", "server-x"])
def test_unknown_non_client_event_is_refused(event: str) -> None:
    error = refused(frame(event=event, channel="private-c", data={}))
    assert "unknown event" in error.message


def test_client_event_name_over_200_characters_is_refused() -> None:
    name = "client-" + "e" * (201 - len("client-"))
    assert "200" in refused(frame(event=name, channel="private-c", data={})).message


def test_client_event_without_channel_is_refused() -> None:
    assert "channel" in refused(frame(event="client-x", data={})).message


@pytest.mark.parametrize("event", ["pusher:subscribe", "pusher:unsubscribe"])
@pytest.mark.parametrize("data", [None, [], 5, {}, {"channel": ""}, {"channel": 3}])
def test_subscribe_without_a_channel_is_refused(event: str, data: object) -> None:
    assert "channel" in refused(frame(event=event, data=data)).message


def test_subscribe_data_string_that_is_not_json_is_refused() -> None:
    error = refused(frame(event="pusher:subscribe", data="channel=news"))
    assert "pusher:subscribe data is not JSON" in error.message


def test_subscribe_data_string_that_is_not_an_object_is_refused() -> None:
    error = refused(frame(event="pusher:subscribe", data='["news"]'))
    assert "needs data with a 'channel'" in error.message


@pytest.mark.parametrize("auth", [1, {"a": 1}, ["x"], True])
def test_subscribe_auth_must_be_a_string(auth: object) -> None:
    error = refused(frame(event="pusher:subscribe", data={"channel": "private-x", "auth": auth}))
    assert "auth must be a string" in error.message


@pytest.mark.parametrize("channel_data", [{"user_id": "1"}, 1, ["x"]])
def test_subscribe_channel_data_must_be_a_string(channel_data: object) -> None:
    data = {"channel": "presence-x", "auth": "k:s", "channel_data": channel_data}
    error = refused(frame(event="pusher:subscribe", data=data))
    assert "channel_data must be a string" in error.message


# Channel names ------------------------------------------------------------------------------


def test_channel_name_of_164_characters_is_accepted() -> None:
    name = "a" * 164
    assert MAX_CHANNEL_NAME_LENGTH == 164
    assert validate_channel_name(name) == name
    msg = parse_client_frame(frame(event="pusher:subscribe", data={"channel": name}))
    assert msg == Subscribe(name)


def test_channel_name_of_165_characters_is_refused() -> None:
    error = refused(frame(event="pusher:subscribe", data={"channel": "a" * 165}))
    assert "165" in error.message
    assert "164" in error.message


def test_every_allowed_punctuation_character_is_accepted() -> None:
    name = "private-Az09_-=@,.;"
    assert validate_channel_name(name) == name


@pytest.mark.parametrize(
    "name", ["has space", "slash/x", "hash#x", "star*", "tab\t", "ünïcode", "new\nline", "a:b"]
)
def test_channel_name_with_bad_characters_is_refused(name: str) -> None:
    error = refused(frame(event="pusher:subscribe", data={"channel": name}))
    assert "characters outside" in error.message


@pytest.mark.parametrize("name", ["#server-to-user-ann", "#server-to-user-a=b@c,d.e;f_g-1"])
def test_user_channels_are_the_one_name_with_a_hash(name: str) -> None:
    assert validate_channel_name(name) == name


@pytest.mark.parametrize("name", ["#server-to-user-", "#server-to-user-a b", "#other-ann", "x#y"])
def test_other_names_with_a_hash_are_refused(name: str) -> None:
    with pytest.raises(ProtocolError, match="characters outside"):
        validate_channel_name(name)


def test_client_event_channel_is_validated_too() -> None:
    error = refused(frame(event="client-x", channel="bad name", data={}))
    assert "characters outside" in error.message


# check_handshake ----------------------------------------------------------------------------


def test_handshake_unknown_key_is_4001_whatever_the_protocol() -> None:
    assert check_handshake("nope", known_key=False, protocol="7") == CloseCode.APP_NOT_FOUND == 4001
    assert check_handshake("nope", known_key=False, protocol=None) == 4001


@pytest.mark.parametrize("protocol", [None, ""])
def test_handshake_missing_protocol_is_4008(protocol: str | None) -> None:
    assert check_handshake("key", known_key=True, protocol=protocol) == CloseCode.NO_PROTOCOL
    assert CloseCode.NO_PROTOCOL == 4008


@pytest.mark.parametrize("protocol", ["5", "6", "8", "abc", "7.0", "seven"])
def test_handshake_unsupported_or_non_numeric_protocol_is_4007(protocol: str) -> None:
    result = check_handshake("key", known_key=True, protocol=protocol)
    assert result == CloseCode.UNSUPPORTED_PROTOCOL == 4007


def test_handshake_protocol_7_is_accepted() -> None:
    assert check_handshake("key", known_key=True, protocol="7") is None


# Server frames ------------------------------------------------------------------------------


def test_encode_event_without_channel() -> None:
    decoded = json.loads(encode_event("my-event", '{"a":1}'))
    assert decoded == {"event": "my-event", "data": '{"a":1}'}


def test_encode_event_with_channel_keeps_data_a_string() -> None:
    decoded = json.loads(encode_event("my-event", '{"a":1}', channel="news"))
    assert decoded == {"event": "my-event", "channel": "news", "data": '{"a":1}'}
    assert json.loads(decoded["data"]) == {"a": 1}


def test_connection_established_data_is_a_json_string() -> None:
    decoded = json.loads(encode_connection_established("123.456", 30))
    assert decoded["event"] == "pusher:connection_established"
    assert "channel" not in decoded
    assert isinstance(decoded["data"], str)
    assert json.loads(decoded["data"]) == {"socket_id": "123.456", "activity_timeout": 30}


def test_subscription_succeeded_is_on_the_channel_with_string_data() -> None:
    decoded = json.loads(encode_subscription_succeeded("private-x"))
    assert decoded == {
        "event": "pusher_internal:subscription_succeeded",
        "channel": "private-x",
        "data": "{}",
    }


def test_error_data_is_an_object_not_a_string() -> None:
    decoded = json.loads(encode_error("bad frame", 4300))
    assert decoded == {"event": "pusher:error", "data": {"message": "bad frame", "code": 4300}}


def test_error_without_code_has_null_code() -> None:
    assert json.loads(encode_error("oops", None))["data"] == {"message": "oops", "code": None}


def test_ping_and_pong_frames() -> None:
    assert json.loads(PING_FRAME) == {"event": "pusher:ping", "data": "{}"}
    assert json.loads(PONG_FRAME) == {"event": "pusher:pong", "data": "{}"}


# Sign-in and the frames of private, presence and cache channels -----------------------------


def test_signin_with_object_or_string_data() -> None:
    data = {"auth": "key:sig", "user_data": '{"id":"ann"}'}
    expected = Signin("key:sig", '{"id":"ann"}')
    assert parse_client_frame(frame(event="pusher:signin", data=data)) == expected
    assert parse_client_frame(frame(event="pusher:signin", data=json.dumps(data))) == expected


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ("not json", "pusher:signin data is not JSON"),
        (["x"], "pusher:signin needs data with 'auth' and 'user_data'"),
        ({"user_data": "{}"}, "pusher:signin: auth must be a non-empty string"),
        (
            {"auth": "k:s", "user_data": {"id": "ann"}},
            "pusher:signin: user_data must be a JSON string",
        ),
        ({"auth": "k:s"}, "pusher:signin: user_data must be a JSON string"),
    ],
)
def test_bad_signin_frames(data: object, message: str) -> None:
    error = refused(frame(event="pusher:signin", data=data))
    assert error.message == message
    assert error.code == ErrorCode.INVALID_MESSAGE and error.close is None


def test_subscription_error_frame_is_what_pusher_js_hands_to_handlers() -> None:
    decoded = json.loads(encode_subscription_error("private-x", "AuthError", "bad", 401))
    assert decoded["event"] == "pusher:subscription_error"
    assert decoded["channel"] == "private-x"
    assert json.loads(decoded["data"]) == {"type": "AuthError", "error": "bad", "status": 401}


def test_presence_frames() -> None:
    added = json.loads(encode_member_added("presence-a", "ann", {"name": "Ann"}))
    assert added["event"] == "pusher_internal:member_added"
    assert json.loads(added["data"]) == {"user_id": "ann", "user_info": {"name": "Ann"}}
    removed = json.loads(encode_member_removed("presence-a", "ann"))
    assert (removed["event"], json.loads(removed["data"])) == (
        "pusher_internal:member_removed",
        {"user_id": "ann"},
    )
    succeeded = json.loads(encode_subscription_succeeded("presence-a", '{"presence":{}}'))
    assert succeeded["data"] == '{"presence":{}}'


def test_cache_miss_and_signin_success_frames() -> None:
    miss = json.loads(encode_cache_miss("cache-a"))
    assert miss == {"event": "pusher:cache_miss", "channel": "cache-a", "data": "{}"}
    success = json.loads(encode_signin_success('{"id":"ann"}'))
    assert success["event"] == "pusher:signin_success"
    # pusher-js parses data, then parses user_data again: a JSON string inside a JSON string.
    assert json.loads(success["data"]) == {"user_data": '{"id":"ann"}'}


def test_client_event_data_too_deep_to_relay_is_refused() -> None:
    data = "[" * 300 + "]" * 300  # decodes (1024 levels), cannot be encoded again (255)
    text = '{"event": "client-x", "channel": "private-a", "data": ' + data + "}"
    assert refused(text).message == "data is nested too deeply"
