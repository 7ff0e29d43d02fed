"""sidecar.api.events: Pusher HTTP API bodies in, Publications (or ApiErrors) out."""

from __future__ import annotations

import json

import pytest

from sidecar.api.events import MAX_BATCH_EVENTS, MAX_CHANNELS_PER_EVENT, parse_batch, parse_events
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.http_glue import ApiError

APP = AppConfig(id="3", key="app-key", secret="app-secret")


def body(**fields: object) -> bytes:
    return json.dumps(fields).encode()


def batch_body(*items: object) -> bytes:
    return json.dumps({"batch": list(items)}).encode()


def refused(parse, raw: bytes, app: AppConfig = APP) -> ApiError:  # type: ignore[no-untyped-def]
    with pytest.raises(ApiError) as info:
        parse(raw, app)
    return info.value


# parse_events: accepted ---------------------------------------------------------------------


def test_single_channel_event() -> None:
    publication = parse_events(body(name="foo", channel="news", data='{"a":1}'), APP)
    assert publication == Publication.of("3", ("news",), "foo", '{"a":1}', None)


def test_the_documented_pusher_body() -> None:
    raw = b'{"name":"foo","channels":["project-3"],"data":"{\\"some\\":\\"data\\"}"}'
    publication = parse_events(raw, APP)
    assert publication.channels == ("project-3",)
    assert publication.name == "foo"
    assert publication.data == '{"some":"data"}'


def test_channels_list_and_socket_id() -> None:
    raw = body(name="e", channels=["a", "b"], data="x", socket_id="123.456")
    publication = parse_events(raw, APP)
    assert publication.channels == ("a", "b")
    assert publication.socket_id == "123.456"
    assert publication.app_id == "3"


def test_duplicate_channels_are_collapsed_in_order() -> None:
    publication = parse_events(body(name="e", channels=["b", "a", "b", "a", "c"], data=""), APP)
    assert publication.channels == ("b", "a", "c")


@pytest.mark.parametrize(
    ("data", "expected"),
    [({"some": "data"}, {"some": "data"}), ([1, 2], [1, 2]), (5, 5), (None, None), (True, True)],
)
def test_non_string_data_is_json_encoded(data: object, expected: object) -> None:
    publication = parse_events(body(name="e", channel="c", data=data), APP)
    assert isinstance(publication.data, str)
    assert json.loads(publication.data) == expected


def test_string_data_is_passed_through_untouched() -> None:
    publication = parse_events(body(name="e", channel="c", data="not json at all"), APP)
    assert publication.data == "not json at all"


def test_100_channels_are_accepted() -> None:
    channels = [f"c{i}" for i in range(MAX_CHANNELS_PER_EVENT)]
    assert MAX_CHANNELS_PER_EVENT == 100
    publication = parse_events(body(name="e", channels=channels, data=""), APP)
    assert publication.channels == tuple(channels)


def test_event_name_of_200_characters_is_accepted() -> None:
    assert parse_events(body(name="n" * 200, channel="c", data=""), APP).name == "n" * 200


# parse_events: refused ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        (b"not json", "body is not valid JSON"),
        (b"", "body is not valid JSON"),
        (b"[]", "body must be a JSON object"),
        (b'"text"', "body must be a JSON object"),
    ],
)
def test_bad_body_is_400(raw: bytes, says: str) -> None:
    error = refused(parse_events, raw)
    assert error.status == 400
    assert says in error.message


def test_101_channels_are_refused() -> None:
    channels = [f"c{i}" for i in range(101)]
    error = refused(parse_events, body(name="e", channels=channels, data=""))
    assert error.status == 400
    assert error.message.startswith("channels:")
    assert "101" in error.message


@pytest.mark.parametrize("channels", [[], "news", None, {"a": 1}])
def test_channels_must_be_a_non_empty_list(channels: object) -> None:
    error = refused(parse_events, body(name="e", channels=channels, data=""))
    assert error.status == 400
    assert error.message.startswith("channels:")


def test_bad_channel_in_a_list_is_named_by_index() -> None:
    error = refused(parse_events, body(name="e", channels=["ok", "bad name"], data=""))
    assert error.status == 400
    assert error.message.startswith("channels[1]:")


def test_non_string_channel_in_a_list_is_named_by_index() -> None:
    error = refused(parse_events, body(name="e", channels=["a", "b", 3], data=""))
    assert error.message.startswith("channels[2]:")


@pytest.mark.parametrize("channel", ["", "bad name", "x" * 165, None, 7])
def test_bad_single_channel(channel: object) -> None:
    error = refused(parse_events, body(name="e", channel=channel, data=""))
    assert error.status == 400
    assert error.message.startswith("channel:")


def test_missing_channel() -> None:
    error = refused(parse_events, body(name="e", data=""))
    assert error.status == 400
    assert error.message.startswith("channel:")


@pytest.mark.parametrize("name", [None, "", 5, ["e"]])
def test_bad_or_missing_name(name: object) -> None:
    fields = {"channel": "c", "data": ""}
    if name is not None:
        fields["name"] = name
    error = refused(parse_events, body(**fields))
    assert error.status == 400
    assert error.message.startswith("name:")


def test_name_over_200_characters_is_refused() -> None:
    error = refused(parse_events, body(name="n" * 201, channel="c", data=""))
    assert error.status == 400
    assert error.message.startswith("name:")
    assert "200" in error.message


def test_missing_data() -> None:
    error = refused(parse_events, body(name="e", channel="c"))
    assert error.status == 400
    assert error.message.startswith("data:")


@pytest.mark.parametrize("socket_id", ["", "123", "abc.def", "1.2.3", 123.456, "123.456 "])
def test_bad_socket_id(socket_id: object) -> None:
    error = refused(parse_events, body(name="e", channel="c", data="", socket_id=socket_id))
    assert error.status == 400
    assert error.message.startswith("socket_id:")


# Payload size -------------------------------------------------------------------------------

SMALL = AppConfig(id="3", key="k", secret="secret-secret", max_payload_bytes=100)


def test_data_at_the_limit_is_accepted() -> None:
    assert parse_events(body(name="e", channel="c", data="x" * 100), SMALL).data == "x" * 100


def test_data_over_the_limit_is_413() -> None:
    error = refused(parse_events, body(name="e", channel="c", data="x" * 101), SMALL)
    assert error.status == 413
    assert error.message.startswith("data:")
    assert "101 bytes" in error.message
    assert "100" in error.message


def test_multibyte_utf8_is_counted_in_bytes() -> None:
    # 40 characters, 120 bytes of UTF-8: over the limit although under it in characters.
    error = refused(parse_events, body(name="e", channel="c", data="€" * 40), SMALL)
    assert error.status == 413
    assert "120 bytes" in error.message


def test_multibyte_utf8_under_the_limit_in_bytes_is_accepted() -> None:
    data = "€" * 33  # 99 bytes
    assert parse_events(body(name="e", channel="c", data=data), SMALL).data == data


def test_encoded_non_string_data_is_measured_too() -> None:
    error = refused(parse_events, body(name="e", channel="c", data={"k": "v" * 100}), SMALL)
    assert error.status == 413


# parse_batch --------------------------------------------------------------------------------


def test_batch_of_events() -> None:
    raw = batch_body(
        {"channel": "a", "name": "e1", "data": "1"},
        {"channel": "b", "name": "e2", "data": {"x": 2}, "socket_id": "1.2"},
    )
    first, second = parse_batch(raw, APP)
    assert first == Publication.of("3", ("a",), "e1", "1", None)
    assert second.channels == ("b",)
    assert json.loads(second.data) == {"x": 2}
    assert second.socket_id == "1.2"


@pytest.mark.parametrize(
    "raw", [b"{}", body(batch=[]), body(batch="x"), body(batch={"channel": "a"})]
)
def test_batch_must_be_a_non_empty_list(raw: bytes) -> None:
    error = refused(parse_batch, raw)
    assert error.status == 400
    assert error.message.startswith("batch:")


def test_batch_body_must_be_json() -> None:
    assert refused(parse_batch, b"{").status == 400


def test_batch_over_the_limit_is_refused() -> None:
    item = {"channel": "a", "name": "e", "data": ""}
    assert len(parse_batch(batch_body(*[item] * MAX_BATCH_EVENTS), APP)) == MAX_BATCH_EVENTS
    error = refused(parse_batch, batch_body(*[item] * (MAX_BATCH_EVENTS + 1)))
    assert error.status == 400
    assert error.message.startswith("batch:")


def test_batch_item_must_be_an_object() -> None:
    error = refused(parse_batch, batch_body({"channel": "a", "name": "e", "data": ""}, "x"))
    assert error.message.startswith("batch[1]:")


GOOD = {"channel": "a", "name": "e", "data": ""}


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        ({"name": "e", "data": ""}, "batch[2].channel:"),
        ({**GOOD, "channel": "bad name"}, "batch[2].channel:"),
        ({**GOOD, "channels": ["a", "b"], "channel": 5}, "batch[2].channel:"),
        ({"channel": "a", "data": ""}, "batch[2].name:"),
        ({**GOOD, "name": "n" * 201}, "batch[2].name:"),
        ({"channel": "a", "name": "e"}, "batch[2].data:"),
        ({**GOOD, "socket_id": "nope"}, "batch[2].socket_id:"),
    ],
)
def test_bad_batch_item_is_named_by_index_and_field(bad: dict[str, object], field: str) -> None:
    error = refused(parse_batch, batch_body(GOOD, GOOD, bad))
    assert error.status == 400
    assert error.message.startswith(field)


def test_batch_item_over_the_payload_limit_is_413() -> None:
    error = refused(parse_batch, batch_body(GOOD, GOOD, {**GOOD, "data": "é" * 51}), SMALL)
    assert error.status == 413
    assert error.message.startswith("batch[2].data:")
    assert "102 bytes" in error.message
