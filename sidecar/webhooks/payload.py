"""A webhook request body and its signature, exactly as hosted Pusher makes them.

Body: `{"time_ms": ..., "events": [...]}`. Headers: `X-Pusher-Key` (the app key) and
`X-Pusher-Signature`, the hex HMAC-SHA256 of the body bytes keyed with the app secret; the
`pusher` server libraries' `validate_webhook` checks exactly this.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Any

import orjson


def encode_event(event: dict[str, Any]) -> bytes:
    """One event as it goes into a body; the queue holds (and counts) these bytes."""
    # default=str: an odd value from a producer must not stop the batch (or the worker) cold.
    return orjson.dumps(event, default=str)


def join(time_ms: int, events: Sequence[bytes]) -> bytes:
    """The body of a batch of events encoded by `encode_event`."""
    # One join, one copy: `%` formatting around a joined list copies megabytes twice, slowly.
    pieces = [b'{"time_ms":%d,"events":[' % time_ms]
    for event in events:
        pieces += (event, b",")
    if events:
        pieces.pop()
    pieces.append(b"]}")
    return b"".join(pieces)


def encode(time_ms: int, events: Sequence[dict[str, Any]]) -> bytes:
    return join(time_ms, [encode_event(event) for event in events])


def sign(secret: str, body: bytes) -> str:
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def headers(key: str, secret: str, body: bytes) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Pusher-Key": key,
        "X-Pusher-Signature": sign(secret, body),
    }
