"""sidecar.api.fastpath: publishes answered inside data_received, the rest handed to aiohttp.

Unit tests drive FastPublishProtocol over a fake transport with a fake broker and a fake
aiohttp protocol factory; the last tests serve FastPublishSite on a real Unix socket.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from sidecar.api.client import PublishError, SidecarClient
from sidecar.api.fastpath import FastPublishProtocol, FastPublishSite
from sidecar.api.handlers import PublishApi
from sidecar.config.apps import AppRegistry
from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.engine.channel_state import ChannelState
from sidecar.protocol.http_head import MAX_HEAD_BYTES
from sidecar.server.prepare import publish_application
from tests.support.fastpath_fakes import (
    APP,
    EVENT,
    MAX_BODY,
    SMALL_APP,
    FakeBroker,
    FakeTransport,
    Harness,
    HttpFactory,
    parse_responses,
    post,
    request,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}"
OK_CLOSE = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n"
    b"Connection: close\r\n\r\n{}"
)


@pytest.fixture
def harness() -> Harness:
    return Harness()


def only_response(raw: bytes) -> tuple[str, dict[str, str], bytes]:
    responses = parse_responses(raw)
    assert len(responses) == 1, responses
    return responses[0]


def error_of(raw: bytes, status_line: str) -> str:
    status, headers, body = only_response(raw)
    assert status == status_line
    assert headers["content-type"] == "application/json"
    decoded = json.loads(body)
    assert set(decoded) == {"error"}
    assert isinstance(decoded["error"], str) and decoded["error"]
    return decoded["error"]


ORDERS = Publication.of("1", ("orders",), "created", '{"id":42}', None)


# One request ----------------------------------------------------------------------------------


def test_one_request_in_one_feed_is_answered_and_published(harness: Harness) -> None:
    harness.feed(post("/apps/1/events"))
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]
    assert not harness.transport.closed
    assert harness.http.made == []
    assert harness.transport.protocols == []


def test_several_channels_and_socket_id_reach_the_broker(harness: Harness) -> None:
    body = {"name": "e", "channels": ["a", "b", "a"], "data": "d", "socket_id": "12.34"}
    harness.feed(post("/apps/1/events", body))
    assert harness.transport.written == OK
    assert harness.broker.publications == [Publication.of("1", ("a", "b"), "e", "d", "12.34")]


def test_data_given_as_json_value_is_encoded(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", {"name": "e", "channel": "c", "data": {"id": 1}}))
    assert harness.transport.written == OK
    assert json.loads(harness.broker.publications[0].data) == {"id": 1}


def test_query_string_does_not_stop_the_fast_path(harness: Harness) -> None:
    harness.feed(post("/apps/1/events?auth_signature=whatever&body_md5=x"))
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]
    assert harness.http.made == []


def test_header_names_are_case_insensitive(harness: Harness) -> None:
    body = json.dumps(EVENT).encode()
    raw = (
        f"POST /apps/1/events HTTP/1.1\r\nhost: x\r\nCONTENT-LENGTH: {len(body)}\r\n"
        "connection: Keep-Alive\r\n\r\n"
    ).encode() + body
    harness.feed(raw)
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]


def test_a_partial_body_is_neither_answered_nor_published(harness: Harness) -> None:
    raw = post("/apps/1/events")
    harness.feed(raw[:-1])
    assert harness.transport.writes == []
    assert harness.broker.publications == []
    harness.feed(raw[-1:])
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]


def test_split_at_every_byte_boundary() -> None:
    raw = post("/apps/1/events")
    for cut in range(1, len(raw)):
        h = Harness()
        h.feed(raw[:cut])
        assert h.transport.writes == [], cut
        assert h.broker.publications == [], cut
        h.feed(raw[cut:])
        assert h.transport.written == OK, cut
        assert h.broker.publications == [ORDERS], cut
        assert h.http.made == [], cut
        assert not h.transport.closed, cut


def test_one_byte_at_a_time(harness: Harness) -> None:
    raw = post("/apps/1/events")
    harness.feed(*(raw[i : i + 1] for i in range(len(raw))))
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]
    assert harness.http.made == []


def test_a_publisher_not_reading_its_replies_is_not_read_from(harness: Harness) -> None:
    harness.protocol.pause_writing()  # the transport's buffer of replies is full
    assert not harness.transport.reading
    harness.protocol.resume_writing()
    assert harness.transport.reading


def test_refusing_a_signed_api() -> None:
    api = PublishApi(AppRegistry((APP,)), FakeBroker(), signed=True, state=ChannelState())  # type: ignore[arg-type]
    with pytest.raises(AssertionError):
        FastPublishProtocol(api, HttpFactory())


# Pipelining -----------------------------------------------------------------------------------


def pipelined() -> tuple[bytes, list[Publication]]:
    raw = (
        post("/apps/1/events", {"name": "one", "channel": "a", "data": "1"})
        + post("/apps/1/batch_events", {"batch": [{"channel": "b", "name": "two", "data": "2"}]})
        + post("/apps/1/events", {"name": "three", "channel": "c", "data": "3"})
    )
    expected = [
        Publication.of("1", ("a",), "one", "1"),
        Publication.of("1", ("b",), "two", "2"),
        Publication.of("1", ("c",), "three", "3"),
    ]
    return raw, expected


def test_pipelined_requests_in_one_feed_answered_in_order(harness: Harness) -> None:
    raw, expected = pipelined()
    harness.feed(raw)
    assert harness.transport.written == OK * 3
    assert harness.broker.publications == expected
    assert harness.http.made == []


def test_pipelined_requests_split_at_every_byte_boundary() -> None:
    raw, expected = pipelined()
    for cut in range(1, len(raw)):
        h = Harness()
        h.feed(raw[:cut], raw[cut:])
        assert h.transport.written == OK * 3, cut
        assert h.broker.publications == expected, cut


def test_pipelined_errors_and_successes_keep_their_order(harness: Harness) -> None:
    harness.feed(
        post("/apps/9/events")
        + post("/apps/1/events")
        + post("/apps/1/events", b"{nope")
        + post("/apps/1/events")
    )
    statuses = [status for status, _, _ in parse_responses(harness.transport.written)]
    assert statuses == [
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 400 Bad Request",
        "HTTP/1.1 200 OK",
    ]
    assert harness.broker.publications == [ORDERS, ORDERS]


# batch_events ---------------------------------------------------------------------------------


def test_batch_events(harness: Harness) -> None:
    batch = [
        {"channel": "a", "name": "one", "data": "1"},
        {"channel": "b", "name": "two", "data": "2", "socket_id": "1.2"},
    ]
    harness.feed(post("/apps/1/batch_events", {"batch": batch}))
    assert harness.transport.written == OK
    assert harness.broker.publications == [
        Publication.of("1", ("a",), "one", "1", None),
        Publication.of("1", ("b",), "two", "2", "1.2"),
    ]


def test_batch_with_one_bad_item_publishes_none(harness: Harness) -> None:
    batch = [{"channel": "a", "name": "ok", "data": "1"}, {"channel": "b", "data": "2"}]
    harness.feed(post("/apps/1/batch_events", {"batch": batch}))
    assert "batch[1].name" in error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")
    assert harness.broker.publications == []


# Errors ---------------------------------------------------------------------------------------


def test_unknown_app_is_404_naming_it(harness: Harness) -> None:
    harness.feed(post("/apps/99/events"))
    message = error_of(harness.transport.written, "HTTP/1.1 404 Not Found")
    assert "99" in message and "app" in message
    assert harness.broker.publications == []


def test_unknown_app_on_batch_events_is_404(harness: Harness) -> None:
    harness.feed(post("/apps/99/batch_events", {"batch": [EVENT]}))
    assert "99" in error_of(harness.transport.written, "HTTP/1.1 404 Not Found")


def test_invalid_json_is_400(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", b'{"name": "e", '))
    assert "JSON" in error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")


def test_empty_body_is_400(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", b""))
    assert "JSON" in error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")
    assert harness.http.made == []


def test_body_that_is_not_an_object_is_400(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", b"[1, 2]"))
    assert "object" in error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")


def test_non_utf8_body_is_400(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", b'{"name": "\xff\xfe"}'))
    error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")


def test_payload_over_the_apps_limit_is_413_per_app() -> None:
    body = {"name": "e", "channel": "c", "data": "x" * 51}  # SMALL_APP takes 50, APP 1000
    small = Harness()
    small.feed(post("/apps/2/events", body))
    message = error_of(small.transport.written, "HTTP/1.1 413 Payload Too Large")
    assert "data" in message and "51" in message and "50" in message
    assert small.broker.publications == []

    large = Harness()
    large.feed(post("/apps/1/events", body))
    assert large.transport.written == OK
    assert large.broker.publications == [Publication.of("1", ("c",), "e", "x" * 51)]


def test_payload_exactly_at_the_limit_is_accepted(harness: Harness) -> None:
    harness.feed(post("/apps/2/events", {"name": "e", "channel": "c", "data": "x" * 50}))
    assert harness.transport.written == OK


def test_batch_item_over_the_limit_is_413_naming_the_item(harness: Harness) -> None:
    batch = [
        {"channel": "a", "name": "e", "data": "ok"},
        {"channel": "b", "name": "e", "data": "y" * 60},
    ]
    harness.feed(post("/apps/2/batch_events", {"batch": batch}))
    message = error_of(harness.transport.written, "HTTP/1.1 413 Payload Too Large")
    assert "batch[1].data" in message
    assert harness.broker.publications == []


def test_bad_channel_name_is_400_naming_the_field(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", {"name": "e", "channel": "bad channel!", "data": "d"}))
    message = error_of(harness.transport.written, "HTTP/1.1 400 Bad Request")
    assert message.startswith("channel:")
    assert harness.broker.publications == []


def test_missing_name_is_400(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", {"channel": "c", "data": "d"}))
    assert error_of(harness.transport.written, "HTTP/1.1 400 Bad Request").startswith("name:")


@pytest.mark.parametrize(
    "bad",
    [
        post("/apps/99/events"),
        post("/apps/1/events", b"not json"),
        post("/apps/2/events", {"name": "e", "channel": "c", "data": "z" * 500}),
        post("/apps/1/events", {"name": "e", "channel": "no way", "data": "d"}),
    ],
    ids=["unknown-app", "invalid-json", "too-large", "bad-channel"],
)
def test_connection_stays_usable_after_an_error(harness: Harness, bad: bytes) -> None:
    harness.feed(bad)
    ((status, headers, _),) = parse_responses(harness.transport.written)
    assert status.split(" ")[1] in {"400", "404", "413"}
    assert "connection" not in headers
    assert not harness.transport.closed
    harness.transport.writes.clear()
    harness.feed(post("/apps/1/events"))
    assert harness.transport.written == OK
    assert harness.broker.publications == [ORDERS]
    assert harness.http.made == []


def test_refusal_is_logged_with_status_and_reason(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="sidecar.api"):
        harness.feed(post("/apps/77/events"))
    records = [r for r in caplog.records if r.getMessage() == "api request refused"]
    assert len(records) == 1
    assert records[0].__dict__["status"] == 404
    assert "77" in records[0].__dict__["reason"]
    assert records[0].__dict__["path"] == "/apps/77/events"


def test_data_nested_too_deep_for_reencoding_is_a_4xx_not_an_exception(harness: Harness) -> None:
    data = b"[" * 300 + b"]" * 300
    body = b'{"name": "e", "channel": "c", "data": ' + data + b"}"
    harness.feed(post("/apps/1/events", body))
    status, headers, _ = only_response(harness.transport.written)
    assert status.split(" ")[1] in {"400", "413"}
    assert headers["content-type"] == "application/json"
    assert harness.broker.publications == []


# Closing --------------------------------------------------------------------------------------


def test_connection_close_is_answered_with_close_and_closes(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", headers={"Connection": "close"}))
    assert harness.transport.written == OK_CLOSE
    assert harness.transport.closed
    assert harness.broker.publications == [ORDERS]


def test_error_with_connection_close_still_closes(harness: Harness) -> None:
    harness.feed(post("/apps/99/events", headers={"Connection": "close"}))
    status, headers, _ = only_response(harness.transport.written)
    assert status == "HTTP/1.1 404 Not Found"
    assert headers["connection"] == "close"
    assert harness.transport.closed


def test_bytes_after_a_closing_request_are_ignored(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", headers={"Connection": "close"}) + post("/apps/1/events"))
    assert harness.transport.written == OK_CLOSE
    assert harness.broker.publications == [ORDERS]
    harness.feed(post("/apps/1/events"), b"GET / HTTP/1.1\r\n\r\n")
    assert harness.transport.written == OK_CLOSE
    assert harness.broker.publications == [ORDERS]
    assert harness.http.made == []


def test_http_10_without_keep_alive_closes(harness: Harness) -> None:
    harness.feed(post("/apps/1/events", version="HTTP/1.0"))
    status, headers, body = only_response(harness.transport.written)
    assert status == "HTTP/1.1 200 OK"
    assert headers["connection"] == "close"
    assert body == b"{}"
    assert harness.transport.closed
    assert harness.broker.publications == [ORDERS]


def test_http_10_with_keep_alive_stays_open(harness: Harness) -> None:
    request_10 = post("/apps/1/events", version="HTTP/1.0", headers={"Connection": "Keep-Alive"})
    harness.feed(request_10, request_10)
    assert harness.transport.written == OK * 2
    assert not harness.transport.closed
    assert harness.broker.publications == [ORDERS, ORDERS]


# Hand-off to aiohttp --------------------------------------------------------------------------


def over_max_head() -> bytes:
    return post("/apps/1/events", headers={"X-Pad": "p" * (MAX_HEAD_BYTES + 10)})


HAND_OFFS: dict[str, list[bytes]] = {
    "get-channels": [b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\n"],
    "post-elsewhere": [post("/apps/1/channels")[:-3]],
    "post-trailing-slash": [post("/apps/1/events/")],
    "put-events": [request("PUT", "/apps/1/events", json.dumps(EVENT).encode())],
    "lowercase-method": [request("post", "/apps/1/events", json.dumps(EVENT).encode())],
    "chunked": [
        request(
            "POST",
            "/apps/1/events",
            b'5\r\n{"nam',
            content_length=False,
            headers={"Transfer-Encoding": "chunked"},
        )
    ],
    "chunked-with-length": [post("/apps/1/events", headers={"Transfer-Encoding": "chunked"})[:-4]],
    "expect-continue": [post("/apps/1/events", headers={"Expect": "100-continue"})[:-10]],
    "over-max-body": [
        request("POST", "/apps/1/events", b"x" * 100).replace(
            b"Content-Length: 100", f"Content-Length: {MAX_BODY + 1}".encode()
        )
    ],
    "non-numeric-length": [
        request("POST", "/apps/1/events", b"{}").replace(
            b"Content-Length: 2", b"Content-Length: two"
        )
    ],
    "negative-length": [
        request("POST", "/apps/1/events", b"{}").replace(
            b"Content-Length: 2", b"Content-Length: -2"
        )
    ],
    "duplicate-length": [request("POST", "/apps/1/events", b"{}", headers={"Content-Length": "2"})],
    "no-length": [request("POST", "/apps/1/events", content_length=False)],
    "head-over-max-one-piece": [over_max_head()],
    "head-over-max-in-pieces": [over_max_head()[:4000], over_max_head()[4000 : MAX_HEAD_BYTES + 1]],
    "http2-preface": [b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"],
    "garbage": [b"\x16\x03\x01\x02\x00hello there\r\n\r\nmore"],
    "header-without-colon": [b"POST /apps/1/events HTTP/1.1\r\nContent-Length 2\r\n\r\n{}"],
    "space-before-colon": [b"POST /apps/1/events HTTP/1.1\r\nContent-Length : 2\r\n\r\n{}"],
}


@pytest.mark.parametrize("chunks", list(HAND_OFFS.values()), ids=list(HAND_OFFS))
def test_hand_off_passes_every_byte_to_aiohttp(harness: Harness, chunks: list[bytes]) -> None:
    harness.feed(*chunks)
    handed = harness.handed
    assert handed.events == [
        ("connection_made", harness.transport),
        ("data_received", b"".join(chunks)),
    ]
    assert harness.transport.protocols == [handed]
    assert harness.transport.writes == []
    assert not harness.transport.closed
    assert harness.broker.publications == []
    # Whatever still reaches the old protocol is not served by it any more.
    harness.feed(post("/apps/1/events"), post("/apps/1/events"))
    assert harness.transport.writes == []
    assert harness.broker.publications == []
    assert len(harness.http.made) == 1


def test_hand_off_waits_for_the_whole_head(harness: Harness) -> None:
    raw = b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\n"
    harness.feed(raw[:-1])
    assert harness.http.made == []
    harness.feed(raw[-1:])
    assert harness.handed.received == raw


def test_head_of_exactly_max_head_bytes_is_served(harness: Harness) -> None:
    base = post("/apps/1/events", headers={"X-Pad": ""})
    head_length = base.index(b"\r\n\r\n")
    raw = post("/apps/1/events", headers={"X-Pad": "p" * (MAX_HEAD_BYTES - head_length)})
    assert raw.index(b"\r\n\r\n") == MAX_HEAD_BYTES
    harness.feed(raw)
    assert harness.transport.written == OK
    assert harness.http.made == []


def test_head_one_byte_over_max_head_bytes_is_handed_off(harness: Harness) -> None:
    base = post("/apps/1/events", headers={"X-Pad": ""})
    head_length = base.index(b"\r\n\r\n")
    raw = post("/apps/1/events", headers={"X-Pad": "p" * (MAX_HEAD_BYTES - head_length + 1)})
    harness.feed(raw)
    assert harness.transport.writes == []
    assert harness.handed.received == raw


def test_content_length_at_max_body_stays_on_the_fast_path(harness: Harness) -> None:
    limit = harness.api.max_body
    raw = request("POST", "/apps/1/events", b"x").replace(
        b"Content-Length: 1", f"Content-Length: {limit}".encode()
    )
    harness.feed(raw)
    assert harness.http.made == []
    assert harness.transport.writes == []  # waiting for the rest of the body


def test_superscript_digit_content_length_is_handed_off(harness: Harness) -> None:
    raw = b"POST /apps/1/events HTTP/1.1\r\nContent-Length: \xb2\r\n\r\n{}"
    harness.feed(raw)
    assert harness.handed.received == raw


def test_content_length_with_thousands_of_digits_is_handed_off(harness: Harness) -> None:
    raw = b"POST /apps/1/events HTTP/1.1\r\nContent-Length: " + b"0" * 5000 + b"2\r\n\r\n{}"
    harness.feed(raw)
    assert harness.handed.received == raw


def test_percent_encoded_app_id_is_served_as_aiohttp_would(harness: Harness) -> None:
    harness.feed(post("/apps/%31/events"))
    if harness.http.made:  # handing such paths to aiohttp is a fix too
        assert harness.handed.received == post("/apps/%31/events")
    else:
        assert harness.transport.written == OK
        assert harness.broker.publications == [ORDERS]


def test_hand_off_after_answered_requests_passes_only_the_rest(harness: Harness) -> None:
    rest = b"GET /apps/1/channels HTTP/1.1\r\nHost: x\r\n\r\nPOST /apps/1/ev"
    harness.feed(post("/apps/1/events") + post("/apps/1/events") + rest)
    assert harness.transport.written == OK * 2
    assert harness.broker.publications == [ORDERS, ORDERS]
    assert harness.handed.events == [
        ("connection_made", harness.transport),
        ("data_received", rest),
    ]
    assert harness.transport.protocols == [harness.handed]


def test_hand_off_of_a_head_split_across_feeds_after_an_answer(harness: Harness) -> None:
    chunked = request(
        "POST",
        "/apps/1/events",
        b"2\r\n{}\r\n0\r\n\r\n",
        content_length=False,
        headers={"Transfer-Encoding": "chunked"},
    )
    harness.feed(post("/apps/1/events") + chunked[:10])
    assert harness.transport.written == OK
    assert harness.http.made == []
    harness.feed(chunked[10:])
    assert harness.transport.written == OK
    assert harness.handed.received == chunked
    assert harness.broker.publications == [ORDERS]


# Over a real Unix socket with aiohttp ---------------------------------------------------------


class Served:
    def __init__(self, path: str, broker: FakeBroker) -> None:
        self.path = path
        self.broker = broker


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    broker = FakeBroker()
    api = PublishApi(AppRegistry((APP, SMALL_APP)), broker, signed=False, state=ChannelState())  # type: ignore[arg-type]
    runner = web.AppRunner(publish_application(api), access_log=None, shutdown_timeout=0.1)
    await runner.setup()
    path = str(tmp_path / "s.sock")
    await FastPublishSite(runner, path, api, backlog=16).start()
    yield Served(path, broker)
    await runner.cleanup()


async def test_site_serves_publish_and_hands_the_rest_to_aiohttp(served: Served) -> None:
    connector = aiohttp.UnixConnector(path=served.path)
    async with aiohttp.ClientSession(connector=connector) as session:
        async with session.post("http://localhost/apps/1/events", json=EVENT) as response:
            assert response.status == 200
            assert await response.json() == {}
        async with session.get("http://localhost/apps/1/nowhere") as response:
            assert response.status == 404
            assert response.content_type == "application/json"
            body = await response.json()
            assert set(body) == {"error"}
            # Written by aiohttp: the fast path never sends a Server or Date header.
            assert "Server" in response.headers and "Date" in response.headers
        # The same pooled connection, now aiohttp's, still publishes.
        async with session.post("http://localhost/apps/1/events", json=EVENT) as response:
            assert response.status == 200
            assert await response.json() == {}
        async with session.post("http://localhost/apps/99/events", json=EVENT) as response:
            assert response.status == 404
            assert "99" in (await response.json())["error"]
    assert served.broker.publications == [ORDERS, ORDERS]


async def test_site_pipelined_fast_then_handed_off_over_a_real_socket(served: Served) -> None:
    chunked = request(
        "POST",
        "/apps/1/batch_events",
        b"",
        content_length=False,
        headers={"Transfer-Encoding": "chunked"},
    )
    batch = json.dumps({"batch": [{"channel": "b", "name": "two", "data": "2"}]}).encode()
    chunked += f"{len(batch):x}\r\n".encode() + batch + b"\r\n0\r\n\r\n"
    reader, writer = await asyncio.open_unix_connection(served.path)
    try:
        writer.write(
            post("/apps/1/events")
            + b"GET /apps/1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
            + chunked
            + post("/apps/1/events", headers={"Connection": "close"})
        )
        raw = await asyncio.wait_for(reader.read(), timeout=5)
    finally:
        writer.close()
    responses = parse_responses(raw)
    assert [status for status, _, _ in responses] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
        "HTTP/1.1 200 OK",
        "HTTP/1.1 200 OK",
    ]
    assert responses[0][2] == b"{}"
    assert "error" in json.loads(responses[1][2])
    assert served.broker.publications == [
        ORDERS,
        Publication.of("1", ("b",), "two", "2"),
        ORDERS,
    ]


async def test_sidecar_client_over_the_fast_path(served: Served) -> None:
    client = SidecarClient(served.path, app_id="1", timeout=5)
    try:
        assert await asyncio.to_thread(client.trigger, "orders", "created", {"id": 42}) == {}
        reply = await asyncio.to_thread(
            client.trigger_batch, [{"channel": "a", "name": "one", "data": {"n": 1}}]
        )
        assert reply == {}
        with pytest.raises(PublishError) as refused:
            await asyncio.to_thread(client.trigger, "bad channel!", "e", "d")
        assert refused.value.status == 400
        assert refused.value.message.startswith("channel:")
        # The kept-alive connection still works after a refusal.
        assert await asyncio.to_thread(client.trigger, ["x", "y"], "e", "d", "1.2") == {}
    finally:
        client.close()
    assert served.broker.publications == [
        ORDERS,
        Publication.of("1", ("a",), "one", '{"n":1}'),
        Publication.of("1", ("x", "y"), "e", "d", "1.2"),
    ]


async def test_sidecar_client_sees_the_per_app_limit(served: Served) -> None:
    client = SidecarClient(served.path, app_id="2", timeout=5)
    try:
        with pytest.raises(PublishError) as refused:
            await asyncio.to_thread(client.trigger, "c", "e", "x" * 51)
        assert refused.value.status == 413
        assert "50" in refused.value.message
    finally:
        client.close()
    assert served.broker.publications == []


def test_site_hand_off_under_uvloop(tmp_path: Path) -> None:
    """The workers run uvloop: its transports must take the protocol switch too."""
    uvloop = pytest.importorskip("uvloop")
    broker = FakeBroker()

    async def scenario() -> list[str]:
        api = PublishApi(AppRegistry((APP,)), broker, signed=False, state=ChannelState())  # type: ignore[arg-type]
        runner = web.AppRunner(publish_application(api), access_log=None, shutdown_timeout=0.1)
        await runner.setup()
        path = str(tmp_path / "u.sock")
        await FastPublishSite(runner, path, api, backlog=16).start()
        try:
            reader, writer = await asyncio.open_unix_connection(path)
            writer.write(
                post("/apps/1/events")
                + b"GET /apps/1/nowhere HTTP/1.1\r\nHost: x\r\n\r\n"
                + post("/apps/1/events", headers={"Connection": "close"})
            )
            raw = await asyncio.wait_for(reader.read(), timeout=5)
            writer.close()
        finally:
            await runner.cleanup()
        return [status for status, _, _ in parse_responses(raw)]

    statuses = uvloop.run(scenario())
    assert statuses == ["HTTP/1.1 200 OK", "HTTP/1.1 404 Not Found", "HTTP/1.1 200 OK"]
    assert broker.publications == [ORDERS, ORDERS]


# The payload limit counts the data as decoded (issue 13) ------------------------------------


@pytest.mark.parametrize(
    "data", ["\x01" * 100_000, "😀" * 25_000, "é" * 50_000], ids=["control", "emoji", "latin"]
)
def test_escaped_data_within_the_limit_is_published_on_the_fast_path(data: str) -> None:
    large = AppConfig(id="7", key="large-key", secret="large-secret-1", max_payload_bytes=100_000)
    broker, http, transport = FakeBroker(), HttpFactory(), FakeTransport()
    api = PublishApi(AppRegistry((large,)), broker, signed=False, state=ChannelState())  # type: ignore[arg-type]
    protocol = FastPublishProtocol(api, http)
    protocol.connection_made(transport)
    body = json.dumps({"name": "e", "channel": "c", "data": data}).encode()  # \uXXXX escapes
    protocol.data_received(post("/apps/7/events", body))
    assert http.made == []  # answered here, not handed to aiohttp as too large
    assert b"".join(transport.writes) == OK
    assert broker.publications == [Publication.of("7", ("c",), "e", data)]


# A request that does not arrive whole in time -------------------------------------------------


def timed_harness(timeout: float) -> Harness:
    harness = Harness()
    harness.protocol = FastPublishProtocol(harness.api, harness.http, timeout=timeout)
    harness.protocol.connection_made(harness.transport)
    return harness


@pytest.mark.parametrize("cut", [10, len(post("/apps/1/events")) - 3])
async def test_a_half_sent_request_gets_408_and_is_closed(cut: int) -> None:
    harness = timed_harness(0.05)
    harness.feed(post("/apps/1/events")[:cut])  # in the head, or in the body
    await asyncio.sleep(0.1)
    assert error_of(harness.transport.written, "HTTP/1.1 408 Request Timeout") == (
        "request not complete within 0.05 s"
    )
    assert harness.transport.closed
    assert harness.broker.publications == []
    harness.protocol.connection_lost(None)


async def test_the_clock_runs_only_while_a_request_is_incomplete() -> None:
    harness = timed_harness(0.1)
    whole = post("/apps/1/events")
    for _ in range(3):  # each completed in time, however it was split
        harness.feed(whole[:20])
        await asyncio.sleep(0.06)
        harness.feed(whole[20:])
    await asyncio.sleep(0.15)  # idle between requests: the app's keep-alive pool, kept
    assert harness.broker.publications == [ORDERS] * 3
    assert not harness.transport.closed
    assert b"408" not in harness.transport.written


async def test_no_408_once_handed_to_aiohttp_or_lost() -> None:
    handed = timed_harness(0.05)
    handed.feed(request("GET", "/apps/1/channels")[:-2])  # aiohttp's, once the head is whole
    handed.feed(b"\r\n")
    lost = timed_harness(0.05)
    lost.feed(post("/apps/1/events")[:10])
    lost.protocol.connection_lost(None)
    await asyncio.sleep(0.1)
    assert handed.transport.written == b"" and not handed.transport.closed
    assert lost.transport.written == b""
