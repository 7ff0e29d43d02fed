"""Fuzzing the publish path: sidecar.api.events (the bodies) and sidecar.api.fastpath
(heads and bodies on the Unix socket, read in any pieces).

Any body gives publications or an ApiError (400 or 413), never another exception; what is
accepted is within the limits. The fast path answers or hands over whatever arrives, answers
the same however the bytes are split, and never holds more than one request's bound.
"""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from sidecar.api.events import MAX_BATCH_EVENTS, MAX_CHANNELS_PER_EVENT, parse_batch, parse_events
from sidecar.engine.broker.base import Publication
from sidecar.http_glue import ApiError
from sidecar.protocol.http_head import MAX_HEAD_BYTES
from sidecar.protocol.pusher import validate_channel_name
from tests.support.fastpath_fakes import (
    APP,
    MAX_BODY,
    SMALL_APP,
    FakeTransport,
    Harness,
    parse_responses,
    post,
    request,
)
from tests.support.fuzz import cut_points, held_bytes, split_at

json_scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=60)
)
json_value = st.recursive(
    json_scalar,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=10,
)
channel = st.text("abcXYZ019_-=@,.;", min_size=1, max_size=170) | st.sampled_from(
    ["orders", "private-a", "presence-b", "", "bad name", "#server-to-user-7"]
)
event_fields = st.fixed_dictionaries(
    {},
    optional={
        "name": st.text(max_size=210) | json_value,
        "data": st.text(max_size=80) | json_value,
        "channel": channel | json_value,
        "channels": st.lists(channel, max_size=MAX_CHANNELS_PER_EVENT + 2) | json_value,
        "socket_id": st.sampled_from(["1.2", "123.456", "1.", "x"]) | json_value,
    },
)
batch_body = st.fixed_dictionaries(
    {}, optional={"batch": st.lists(event_fields | json_value, max_size=6) | json_value}
)


def check_publication(publication: Publication, app_max: int) -> None:
    assert publication.app_id in (APP.id, SMALL_APP.id)
    assert 1 <= len(publication.channels) <= MAX_CHANNELS_PER_EVENT
    assert len(set(publication.channels)) == len(publication.channels)
    for name in publication.channels:
        assert validate_channel_name(name) == name
    data = orjson.loads(publication.data_json)
    assert isinstance(data, str)
    assert len(data.encode()) <= app_max


def outcome_events(body: bytes, app=APP) -> int:
    try:
        publication = parse_events(body, app)
    except ApiError as exc:
        assert exc.status in (400, 413) and exc.message
        return exc.status
    check_publication(publication, app.max_payload_bytes)
    return 200


def outcome_batch(body: bytes, app=APP) -> int:
    try:
        publications = parse_batch(body, app)
    except ApiError as exc:
        assert exc.status in (400, 413) and exc.message
        return exc.status
    assert 1 <= len(publications) <= MAX_BATCH_EVENTS
    for publication in publications:
        check_publication(publication, app.max_payload_bytes)
    return 200


@given(st.binary(max_size=400))
def test_any_body_publishes_or_is_refused(body: bytes) -> None:
    outcome_events(body)
    outcome_batch(body)


@given(event_fields, st.sampled_from([APP, SMALL_APP]))
def test_any_event_object_publishes_or_is_refused(fields: dict, app) -> None:
    outcome_events(orjson.dumps(fields), app)
    outcome_events(memoryview(orjson.dumps(fields)), app)


@given(batch_body, st.sampled_from([APP, SMALL_APP]))
def test_any_batch_publishes_all_or_is_refused(body: dict, app) -> None:
    outcome_batch(orjson.dumps(body), app)


@given(st.text(max_size=120), st.text("ab01", min_size=1, max_size=20), st.text(max_size=30))
def test_a_valid_event_round_trips(data: str, name: str, event: str) -> None:
    body = {"name": "e" + event, "channel": name, "data": data}
    if len(data.encode()) > SMALL_APP.max_payload_bytes:
        assert outcome_events(orjson.dumps(body), SMALL_APP) == 413
        return
    publication = parse_events(orjson.dumps(body), SMALL_APP)
    assert publication.channels == (name,)
    assert publication.name == "e" + event
    assert orjson.loads(publication.data_json) == data


# The fast path ----------------------------------------------------------------------------------

request_on_the_socket = st.one_of(
    st.builds(lambda e: post("/apps/1/events", orjson.dumps(e)), event_fields),
    st.builds(lambda b: post("/apps/2/batch_events", orjson.dumps(b)), batch_body),
    st.builds(
        lambda d: post("/apps/1/events", {"name": "e", "channel": "c", "data": d}), st.text()
    ),
    st.just(post("/apps/9/events")),
    st.just(post("/apps/1/events", headers={"Connection": "close"})),
    st.builds(lambda body: post("/apps/1/events", body), st.binary(max_size=60)),
)
# What makes the fast path step aside for aiohttp (only ever the last request of a stream).
handed_over = st.sampled_from(
    [
        request("GET", "/apps/1/channels"),
        post("/apps/1/events", headers={"Transfer-Encoding": "chunked"}),
        post("/apps/1/events", headers={"Expect": "100-continue"}),
        request("POST", "/apps/1/events", b"{}", content_length=False) + b"{}",
        request("POST", "/apps/1/events", headers={"Content-Length": "1" * 40}),
        b"GARBAGE\r\n\r\n",
        b"x" * (MAX_HEAD_BYTES + 10),
    ]
)


def run(pieces: list[bytes]) -> tuple[Harness, bytes, list[Publication], bytes]:
    harness = Harness()
    for piece in pieces:
        if harness.transport.closed:
            break  # a real transport reads nothing more once closed
        if harness.http.made:
            # The transport's protocol is aiohttp's from the hand-over on.
            harness.http.made[0].data_received(piece)
            continue
        harness.feed(piece)
        if not harness.http.made:
            # One request's head and body at most, whatever came in.
            assert held_bytes(harness.protocol) <= MAX_HEAD_BYTES + 4 + MAX_BODY + len(piece)
    handed = harness.http.made[0].received if harness.http.made else b""
    assert len(harness.http.made) <= 1
    return harness, harness.transport.written, harness.broker.publications, handed


@given(st.lists(request_on_the_socket, max_size=6), st.none() | handed_over, st.data())
def test_pipelined_requests_are_answered_the_same_however_they_are_split(
    requests: list[bytes], last: bytes | None, draw: st.DataObject
) -> None:
    stream = b"".join(requests) + (last or b"")
    _, written, published, handed = run([stream])
    pieces = split_at(stream, draw.draw(cut_points(len(stream))))
    _, split_written, split_published, split_handed = run(pieces)
    assert (split_written, split_published, split_handed) == (written, published, handed)
    for status, headers, body in parse_responses(written):
        assert headers["content-type"] == "application/json"
        assert status.startswith(
            ("HTTP/1.1 200 ", "HTTP/1.1 400 ", "HTTP/1.1 404 ", "HTTP/1.1 413 ")
        )
        orjson.loads(body)
    # Every request up to the first one asking to close is answered (or handed over).
    if b"Connection: close" not in stream and last is None:
        assert len(parse_responses(written)) == len(requests)


@given(st.binary(max_size=500), st.data())
def test_any_bytes_on_the_socket_are_answered_or_handed_over(
    raw: bytes, draw: st.DataObject
) -> None:
    harness, written, _, handed = run(split_at(raw, draw.draw(cut_points(len(raw)))))
    parse_responses(written)
    if harness.http.made:
        assert written + handed  # nothing is dropped silently: either answered or handed on


@given(
    st.lists(
        st.sampled_from(
            [
                b"POST /apps/1/events HTTP/1.1\r\n",
                b"Content-Length: 3\r\n",
                b"\r\n",
                b"{}}",
                b"GET ",
                b"\r\n\r\n",
                b"%",
                b"/apps/1/batch_events ",
                b"Connection: close\r\n",
                b"Transfer-Encoding: x\r\n",
                b"Content-Length: 99999999999999999999\r\n",
            ]
        ),
        max_size=30,
    )
)
def test_head_like_bytes_are_answered_or_handed_over(pieces: list[bytes]) -> None:
    _, written, _, _ = run(pieces)
    parse_responses(written)


class FailingTransport(FakeTransport):
    """A peer that is gone: the first write fails, and the transport closes (as on EPIPE)."""

    def write(self, data: bytes | bytearray | memoryview) -> None:
        super().write(data)
        self.closed = True


def test_no_hand_over_once_the_transport_is_closing() -> None:
    """Found by tests/e2e/test_e2e_fuzz.py: a publish answered to a client already gone, then
    bytes for aiohttp in the same read. The failed write had scheduled connection_lost, which
    reached aiohttp's handler before its start() ran: 'assert manager is not None' and a
    traceback in the log. A closing transport is handed to no one."""
    harness = Harness()
    harness.transport = FailingTransport()
    harness.protocol.connection_made(harness.transport)
    harness.feed(post("/apps/1/events") + b"GARBAGE\r\n\r\n")
    assert harness.broker.publications  # the publish was served
    assert all(not made.events for made in harness.http.made)  # nothing connected after it
    assert harness.transport.protocols == []
