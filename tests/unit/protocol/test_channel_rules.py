"""sidecar.protocol.channel_rules: channel kinds, authorization and presence channel_data."""

from __future__ import annotations

import json

import pusher
import pytest

from sidecar.config.model import AppConfig
from sidecar.protocol.channel_rules import (
    Kind,
    Presence,
    SubscriptionRefused,
    authorize,
    channel_kind,
    is_cache,
    parse_channel_data,
)
from sidecar.protocol.pusher import Subscribe

# PROTOCOL.md's vector: secret 7ad3773142a6692b25b8, "1234.1234:private-foobar".
APP = AppConfig(id="3", key="278d425bdf160c739803", secret="7ad3773142a6692b25b8")
VECTOR_AUTH = (
    "278d425bdf160c739803:58df8b0c36d6982b82c3ecf6b4662e34fe8c25bba48f5369f135bf843651c3a4"
)


@pytest.mark.parametrize(
    ("channel", "kind"),
    [
        ("news", Kind.PUBLIC),
        ("not-private-x", Kind.PUBLIC),
        ("cache-x", Kind.PUBLIC),
        ("private-x", Kind.PRIVATE),
        ("private-cache-x", Kind.PRIVATE),
        ("private-encrypted-x", Kind.ENCRYPTED),
        ("private-encrypted-cache-x", Kind.ENCRYPTED),
        ("presence-x", Kind.PRESENCE),
        ("presence-cache-x", Kind.PRESENCE),
        ("#server-to-user-ann", Kind.USER),
    ],
)
def test_kinds_are_read_from_the_start_of_the_name(channel: str, kind: Kind) -> None:
    assert channel_kind(channel) is kind


@pytest.mark.parametrize(
    ("channel", "cache"),
    [
        ("cache-a", True),
        ("private-cache-a", True),
        ("private-encrypted-cache-a", True),
        ("presence-cache-a", True),
        ("cached-a", False),
        ("my-cache-a", False),
        ("private-a", False),
    ],
)
def test_cache_channels(channel: str, cache: bool) -> None:
    assert is_cache(channel) is cache


def allow(subscribe: Subscribe, socket_id: str = "1234.1234", user: str | None = None):
    return authorize(APP, socket_id, subscribe, signed_in_user=user, max_user_info_bytes=1024)


def test_the_protocol_vector_authorizes_its_private_channel() -> None:
    assert allow(Subscribe("private-foobar", VECTOR_AUTH)) is None


def test_the_vector_signature_does_not_open_another_channel_or_socket() -> None:
    for subscribe, socket_id in (
        (Subscribe("private-foobaz", VECTOR_AUTH), "1234.1234"),
        (Subscribe("private-foobar", VECTOR_AUTH), "1234.1235"),
    ):
        with pytest.raises(SubscriptionRefused) as info:
            allow(subscribe, socket_id)
        assert info.value.status == 401
        assert info.value.error_type == "AuthError"


def test_public_channels_need_nothing() -> None:
    assert allow(Subscribe("news")) is None


def test_presence_gives_the_signed_member() -> None:
    signer = pusher.Pusher(app_id=APP.id, key=APP.key, secret=APP.secret)
    reply = signer.authenticate("presence-room", "1.2", {"user_id": 7, "user_info": {"a": 1}})
    presence = allow(Subscribe("presence-room", reply["auth"], reply["channel_data"]), "1.2")
    assert presence == Presence("7", {"a": 1})


def test_the_user_channel_is_for_its_signed_in_user_only() -> None:
    assert allow(Subscribe("#server-to-user-ann"), user="ann") is None
    for user in (None, "bob", "an"):
        with pytest.raises(SubscriptionRefused):
            allow(Subscribe("#server-to-user-ann"), user=user)


@pytest.mark.parametrize(
    ("channel_data", "message"),
    [
        (None, "channel_data is missing"),
        ("{", "channel_data is not JSON"),
        ('"ann"', "channel_data must be a JSON object"),
        ("{}", "channel_data has no user_id"),
        ('{"user_id": null}', "channel_data has no user_id"),
        ('{"user_id": true}', "channel_data has no user_id"),
        ('{"user_id": ["a"]}', "channel_data has no user_id"),
        ('{"user_id": "' + "u" * 201 + '"}', "user_id is over 200 characters"),
        ('{"user_id": "u", "user_info": "' + "x" * 20 + '"}', "22 bytes, over the limit of 16"),
    ],
)
def test_bad_channel_data(channel_data: str | None, message: str) -> None:
    with pytest.raises(SubscriptionRefused) as info:
        parse_channel_data(channel_data, max_user_info_bytes=16)
    assert message in info.value.message
    assert info.value.status in (400, 413)


def test_user_ids_as_numbers_become_strings() -> None:
    assert parse_channel_data('{"user_id": 42}', 16).user_id == "42"
    assert parse_channel_data('{"user_id": 4.5}', 16).user_id == "4.5"
    assert parse_channel_data('{"user_id": "x", "user_info": null}', 16) == Presence("x")


def test_user_info_nested_too_deeply_is_refused_before_it_travels() -> None:
    deep = "[" * 40 + "]" * 40
    with pytest.raises(SubscriptionRefused) as info:
        parse_channel_data('{"user_id": "u", "user_info": ' + deep + "}", 1024)
    assert info.value.message == "channel_data user_info is nested over 32 levels deep"
    fine = "[" * 30 + "]" * 30
    assert parse_channel_data('{"user_id": "u", "user_info": ' + fine + "}", 1024).user_id == "u"
    nested = {"a": {"b": [1, {"c": "d"}]}}
    assert (
        parse_channel_data(
            '{"user_id": "u", "user_info": ' + json.dumps(nested) + "}", 1024
        ).user_info
        == nested
    )


def test_a_private_channel_signed_with_the_apps_custom_data_is_allowed() -> None:
    # The pusher libraries sign custom data on any channel when the app passes it, and
    # pusher-js sends it back as channel_data.
    signer = pusher.Pusher(app_id=APP.id, key=APP.key, secret=APP.secret)
    reply = signer.authenticate("private-room", "1.2", {"user_id": "7"})
    assert allow(Subscribe("private-room", reply["auth"], reply["channel_data"]), "1.2") is None
    plain = signer.authenticate("private-room", "1.2")
    assert allow(Subscribe("private-room", plain["auth"], reply["channel_data"]), "1.2") is None
    for channel_data in (None, '{"user_id":"8"}'):
        with pytest.raises(SubscriptionRefused):
            allow(Subscribe("private-room", reply["auth"], channel_data), "1.2")
