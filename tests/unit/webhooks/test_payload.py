"""sidecar.webhooks.payload and .backoff: Pusher's body and signature; the retry waits."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pusher
import pytest

from sidecar.webhooks.backoff import retry_delay
from sidecar.webhooks.payload import encode, encode_event, headers, join, sign

KEY, SECRET = "278d425bdf160c739803", "7ad3773142a6692b25b8"


def test_body_is_pushers_shape() -> None:
    events = [{"name": "channel_occupied", "channel": "c"}]
    assert json.loads(encode(1327078148132, events)) == {"time_ms": 1327078148132, "events": events}


def test_signature_is_hex_hmac_sha256_of_the_body() -> None:
    body = b'{"time_ms":1,"events":[]}'
    assert sign(SECRET, body) == hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
    assert len(sign(SECRET, body)) == 64


def test_the_pusher_library_accepts_it() -> None:
    events = [
        {"name": "member_added", "channel": "presence-caf\u00e9", "user_id": "\u00e9lodie"},
        {
            "name": "client_event",
            "channel": "private-a",
            "event": "client-x",
            "data": '{"a":1}',
            "socket_id": "1.2",
        },
    ]
    body = encode(int(time.time() * 1000), events)
    h = headers(KEY, SECRET, body)
    assert h["Content-Type"] == "application/json"
    client = pusher.Pusher(app_id="3", key=KEY, secret=SECRET)
    assert client.validate_webhook(h["X-Pusher-Key"], h["X-Pusher-Signature"], body.decode()) == {
        "time_ms": json.loads(body)["time_ms"],
        "events": events,
    }
    # A body changed in transit, or signed with another secret, is refused.
    assert client.validate_webhook(KEY, h["X-Pusher-Signature"], body.decode() + " ") is None
    assert client.validate_webhook(KEY, sign("another-secret", body), body.decode()) is None


def test_odd_values_do_not_stop_encoding() -> None:
    assert json.loads(encode(1, [{"name": "x", "data": object()}]))["events"][0]["name"] == "x"


@pytest.mark.parametrize(("attempt", "step"), [(1, 1), (2, 2), (3, 4), (4, 8), (5, 10), (99, 10)])
def test_back_off_doubles_to_the_cap_with_jitter_in_the_upper_half(
    attempt: int, step: float
) -> None:
    assert retry_delay(attempt, 1, 10, lambda: 0.0) == step / 2
    assert retry_delay(attempt, 1, 10, lambda: 1.0) == step
    assert step / 2 <= retry_delay(attempt, 1, 10, lambda: 0.37) <= step


def test_back_off_survives_absurd_attempt_counts() -> None:
    assert retry_delay(10_000, 0.5, 60, lambda: 1.0) == 60


def test_a_body_joined_from_encoded_events_is_the_same_json() -> None:
    events = [{"name": "client_event", "data": '{"a":"\u00e9\\n"}'}, {"name": "cache_miss"}]
    body = join(5, [encode_event(e) for e in events])
    assert json.loads(body) == {"time_ms": 5, "events": events}
    assert body == encode(5, events)
    assert json.loads(join(5, [])) == {"time_ms": 5, "events": []}
