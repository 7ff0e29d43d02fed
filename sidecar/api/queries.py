"""The Pusher HTTP API's channel queries, answered from the cluster-wide channel state. No I/O.

`GET /apps/{id}/channels`, `GET /apps/{id}/channels/{name}` and
`GET /apps/{id}/channels/{name}/users`, with hosted Pusher's rules: `info` is a comma-separated
list of `user_count` and `subscription_count`; `user_count` only for presence channels (on the
list, only with `filter_by_prefix=presence-...`); the users of presence channels only.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sidecar.engine.channel_state import ChannelInfo
from sidecar.engine.presence import PresenceStore
from sidecar.http_glue import ApiError
from sidecar.protocol.channel_rules import is_presence
from sidecar.protocol.pusher import ProtocolError, validate_channel_name

INFO_ATTRIBUTES = ("user_count", "subscription_count")


def parse_info(params: Mapping[str, str]) -> list[str]:
    raw = params.get("info", "")
    attributes = [a for a in raw.split(",") if a]
    for attribute in attributes:
        if attribute not in INFO_ATTRIBUTES:
            raise ApiError(
                400,
                f"info: unknown attribute {attribute[:40]!r} (known: {', '.join(INFO_ATTRIBUTES)})",
            )
    return attributes


def channel_name(value: str) -> str:
    try:
        return validate_channel_name(value)
    except ProtocolError as exc:
        raise ApiError(400, f"channel: {exc.message}") from None


def _attributes(info: ChannelInfo | None, attributes: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for attribute in attributes:
        if info is None:
            out[attribute] = 0
        elif attribute == "user_count":
            out[attribute] = info.user_count
        else:
            out[attribute] = info.subscription_count
    return out


def channels(state: PresenceStore, app_id: str, params: Mapping[str, str]) -> dict[str, Any]:
    """`GET /apps/{id}/channels`: the occupied channels, by prefix, with what `info` asks."""
    prefix = params.get("filter_by_prefix", "")
    attributes = parse_info(params)
    if "user_count" in attributes and not is_presence(prefix):
        raise ApiError(
            400, "info: user_count is only for presence channels: add filter_by_prefix=presence-"
        )
    return {
        "channels": {
            name: _attributes(info, attributes) for name, info in state.channels(app_id, prefix)
        }
    }


def channel(
    state: PresenceStore, app_id: str, name: str, params: Mapping[str, str]
) -> dict[str, Any]:
    """`GET /apps/{id}/channels/{name}`: occupied, and the counts `info` asks for."""
    name = channel_name(name)
    attributes = parse_info(params)
    if "user_count" in attributes and not is_presence(name):
        raise ApiError(400, "info: user_count is only for presence channels")
    info = state.info(app_id, name)
    return {"occupied": info is not None, **_attributes(info, attributes)}


def users(state: PresenceStore, app_id: str, name: str) -> dict[str, Any]:
    """`GET /apps/{id}/channels/{name}/users`: the ids of a presence channel's members."""
    name = channel_name(name)
    if not is_presence(name):
        raise ApiError(400, "users are only listed for presence channels")
    return {"users": [{"id": user_id} for user_id in state.members(app_id, name)]}
