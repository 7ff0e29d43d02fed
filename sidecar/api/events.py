"""Validating publish requests (Pusher HTTP API bodies) into Publications. No I/O.

Each refusal is an `ApiError` with the HTTP status and a message naming the field, so the
handler's only job is to turn it into a JSON reply.
"""

from __future__ import annotations

from typing import Any

import orjson

from sidecar.config.model import AppConfig
from sidecar.engine.broker.base import Publication
from sidecar.http_glue import ApiError
from sidecar.protocol.pusher import (
    MAX_EVENT_NAME_LENGTH,
    SOCKET_ID_RE,
    ProtocolError,
    validate_channel_name,
)

# Pusher's own limit on channels per trigger; server libraries split larger lists themselves.
MAX_CHANNELS_PER_EVENT = 100
# Hosted Pusher takes 10 events per batch; a local relay can take more in one round trip.
MAX_BATCH_EVENTS = 100


def _decode_object(body: bytes | memoryview) -> dict[str, Any]:
    try:
        decoded = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ApiError(400, "body is not valid JSON") from None
    if not isinstance(decoded, dict):
        raise ApiError(400, "body must be a JSON object")
    return decoded


def _channel(value: Any, field: str) -> str:
    try:
        return validate_channel_name(value)
    except ProtocolError as exc:
        raise ApiError(400, f"{field}: {exc.message}") from None


def _event(
    item: dict[str, Any], app: AppConfig, field: str, channels: tuple[str, ...]
) -> Publication:
    name = item.get("name")
    if not isinstance(name, str) or not name:
        raise ApiError(400, f"{field}name: required, a non-empty string")
    if len(name) > MAX_EVENT_NAME_LENGTH:
        raise ApiError(400, f"{field}name: over {MAX_EVENT_NAME_LENGTH} characters")
    if "data" not in item:
        raise ApiError(400, f"{field}data: required")
    data = item["data"]
    if not isinstance(data, str):
        # Pusher's libraries send a JSON string; a JSON value is taken as that value, encoded.
        try:
            data = orjson.dumps(data).decode()
        except orjson.JSONEncodeError:  # parsed, but nested deeper than it can be encoded
            raise ApiError(400, f"{field}data: nested too deeply") from None
    limit = app.max_payload_bytes
    # A str of n characters is n to 4n bytes of UTF-8: only measure when it could matter.
    if len(data) > limit or (len(data) * 4 > limit and len(data.encode()) > limit):
        size = len(data.encode())
        raise ApiError(413, f"{field}data: {size} bytes, over this app's limit of {limit} bytes")
    socket_id = item.get("socket_id")
    if socket_id is not None and (
        not isinstance(socket_id, str) or SOCKET_ID_RE.fullmatch(socket_id) is None
    ):
        raise ApiError(400, f"{field}socket_id: must look like 123.456")
    return Publication.of(app.id, channels, name, data, socket_id)


def parse_events(body: bytes | memoryview, app: AppConfig) -> Publication:
    """`POST /apps/{id}/events`: {name, data, channel | channels, socket_id?}."""
    item = _decode_object(body)
    del body  # when the caller passed a temporary, a large body is freed here
    if "channels" in item:
        channels = item["channels"]
        if not isinstance(channels, list) or not channels:
            raise ApiError(400, "channels: must be a non-empty list of channel names")
        if len(channels) > MAX_CHANNELS_PER_EVENT:
            raise ApiError(
                400, f"channels: {len(channels)} given, at most {MAX_CHANNELS_PER_EVENT}"
            )
        names = tuple(_channel(c, f"channels[{i}]") for i, c in enumerate(channels))
    elif "channel" in item:
        names = (_channel(item["channel"], "channel"),)
    else:
        raise ApiError(400, "channel: required (or channels, a list)")
    return _event(item, app, "", tuple(dict.fromkeys(names)))


def parse_batch(body: bytes | memoryview, app: AppConfig) -> list[Publication]:
    """`POST /apps/{id}/batch_events`: {batch: [{channel, name, data, socket_id?}, ...]}."""
    decoded = _decode_object(body)
    del body  # when the caller passed a temporary, a large body is freed here
    batch = decoded.get("batch")
    if not isinstance(batch, list) or not batch:
        raise ApiError(400, "batch: required, a non-empty list of events")
    if len(batch) > MAX_BATCH_EVENTS:
        raise ApiError(400, f"batch: {len(batch)} events, at most {MAX_BATCH_EVENTS}")
    publications = []
    for i, item in enumerate(batch):
        field = f"batch[{i}]."
        if not isinstance(item, dict):
            raise ApiError(400, f"batch[{i}]: must be an object")
        if "channel" not in item:
            raise ApiError(400, f"{field}channel: required")
        channel = _channel(item["channel"], f"{field}channel")
        publications.append(_event(item, app, field, (channel,)))
    return publications
