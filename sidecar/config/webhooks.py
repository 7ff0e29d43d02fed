"""The `webhooks` section and each app's `webhooks` list, validated (see
sidecar/config/model.py)."""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from sidecar.config.values import ConfigError, MiB
from sidecar.config.values import integer as _int
from sidecar.config.values import mapping as _mapping
from sidecar.config.values import number as _seconds
from sidecar.config.values import only as _only
from sidecar.config.values import size as _bytes

# What a webhook may ask for: the events hosted Pusher sends.
WEBHOOK_KINDS = (
    "channel_occupied",
    "channel_vacated",
    "member_added",
    "member_removed",
    "client_event",
    "cache_miss",
)


@dataclass(frozen=True)
class WebhookConfig:
    """One endpoint of an app and the event kinds it is sent."""

    url: str
    events: frozenset[str]


@dataclass(frozen=True)
class WebhookSettings:
    """How webhooks are batched, delayed and retried; the same for every app. Seconds."""

    # Pusher's figures: a batch closes after 250 ms or 20 events.
    batch_window: float = 0.25
    batch_max_events: int = 20
    # channel_vacated and member_removed wait this long; a re-occupy or re-add within it cancels
    # both, so a page reload or a network blip does not reach the app. Pusher waits ~3 s.
    vacate_delay: float = 3.0
    # A batch not answered 2xx is retried with exponential back-off (jittered) from
    # retry_initial_delay up to retry_max_delay between attempts, until it is retry_horizon old;
    # then it is dropped. Pusher retries for 5 minutes, and the `pusher` Python library refuses
    # a webhook whose time_ms is more than 300 s old, so a longer horizon buys nothing there.
    retry_horizon: float = 300.0
    retry_initial_delay: float = 1.0
    retry_max_delay: float = 60.0
    timeout: float = 10.0  # one POST, connect to last byte
    # Events waiting for one endpoint, per class of event (and held events per app). Past it new
    # events are dropped and counted: a dead endpoint costs bounded memory.
    queue_limit: int = 10_000
    # Bytes (as encoded JSON) waiting for one endpoint, per class of event (see
    # sidecar/webhooks/queue.py). The count alone let 10,000 client events of 60 KiB hold 600 MB
    # for a dead endpoint. 8 MiB is the 10,000 events above at ~800 bytes, the size of a
    # presence or occupancy event, or 800 client events at hosted Pusher's 10 KB data cap: over
    # a minute of one sender at the default 10 per second. One event bigger than this is still
    # taken when nothing else of its class waits.
    max_queue_bytes: int = 8 * MiB


def _webhook_url(value: Any, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(key, f"is required: an http(s) URL, got {value!r}")
    try:
        parts = urllib.parse.urlsplit(value)
        parts.port  # noqa: B018 - raises on a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        # Never echo the value back: a URL may carry credentials.
        raise ConfigError(key, "must be an http:// or https:// URL with a host")
    return value


def parse_app_webhooks(raw: Any, key: str) -> tuple[WebhookConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(key, "must be a list of {url, events}")
    hooks = []
    for i, entry in enumerate(raw):
        where = f"{key}[{i}]"
        entry = _mapping(entry, where)
        _only(entry, where, {"url", "events"})
        url = _webhook_url(entry.get("url"), f"{where}.url")
        events = entry.get("events")
        if not isinstance(events, list) or not events:
            raise ConfigError(
                f"{where}.events", f"must be a non-empty list of: {', '.join(WEBHOOK_KINDS)}"
            )
        for kind in events:
            if kind not in WEBHOOK_KINDS:
                raise ConfigError(
                    f"{where}.events", f"unknown kind {kind!r} (known: {', '.join(WEBHOOK_KINDS)})"
                )
        hooks.append(WebhookConfig(url=url, events=frozenset(events)))
    return tuple(hooks)


def parse_webhooks(raw: Any) -> WebhookSettings:
    raw = _mapping(raw, "webhooks")
    d = WebhookSettings()
    _only(raw, "webhooks", set(d.__dataclass_fields__))
    w = "webhooks"
    settings = WebhookSettings(
        batch_window=_seconds(raw, w, "batch_window", d.batch_window, 0, 60),
        batch_max_events=_int(raw, w, "batch_max_events", d.batch_max_events, 1, 10_000),
        vacate_delay=_seconds(raw, w, "vacate_delay", d.vacate_delay, 0, 3600),
        retry_horizon=_seconds(raw, w, "retry_horizon", d.retry_horizon, 0, 86400),
        retry_initial_delay=_seconds(
            raw, w, "retry_initial_delay", d.retry_initial_delay, 0.001, 3600
        ),
        retry_max_delay=_seconds(raw, w, "retry_max_delay", d.retry_max_delay, 0.001, 3600),
        timeout=_seconds(raw, w, "timeout", d.timeout, 0.001, 600),
        queue_limit=_int(raw, w, "queue_limit", d.queue_limit, 1, 10_000_000),
        max_queue_bytes=_bytes(raw, w, "max_queue_bytes", d.max_queue_bytes),
    )
    if settings.retry_max_delay < settings.retry_initial_delay:
        raise ConfigError(
            "webhooks.retry_max_delay", "must not be shorter than webhooks.retry_initial_delay"
        )
    return settings
