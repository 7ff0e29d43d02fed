"""sidecar.config.broker: memory or redis, the url checked, its password never shown."""

from __future__ import annotations

import pytest

from sidecar.config.broker import (
    DEFAULT_HEARTBEAT,
    DEFAULT_PREFIX,
    DEFAULT_REDIS_URL,
    masked_url,
    redis_address,
)
from sidecar.config.model import ConfigError, from_mapping


def error_for(raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping({"broker": raw})
    return info.value


def test_memory_is_the_default() -> None:
    assert from_mapping({}).broker.kind == "memory"


def test_redis_defaults() -> None:
    broker = from_mapping({"broker": {"kind": "redis"}}).broker
    assert (broker.url, broker.prefix, broker.heartbeat) == (
        DEFAULT_REDIS_URL,
        DEFAULT_PREFIX,
        DEFAULT_HEARTBEAT,
    )


@pytest.mark.parametrize(
    "url",
    [
        "redis://127.0.0.1:6379/0",
        "redis://10.0.0.5",
        "rediss://user:secret@redis.example.com:6380/2",
        "unix:///run/redis/redis.sock",
    ],
)
def test_redis_urls_accepted(url: str) -> None:
    broker = from_mapping({"broker": {"kind": "redis", "url": url, "heartbeat": 1}}).broker
    assert broker.url == url
    assert broker.heartbeat == 1.0


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"kind": "redis", "url": "http://127.0.0.1:6379"}, "broker.url"),
        ({"kind": "redis", "url": "127.0.0.1:6379"}, "broker.url"),
        ({"kind": "redis", "url": "redis://:6379"}, "broker.url"),
        ({"kind": "redis", "url": "redis://host:99999"}, "broker.url"),
        ({"kind": "redis", "url": "redis://host:port"}, "broker.url"),
        ({"kind": "redis", "url": "redis://host/zero"}, "broker.url"),
        ({"kind": "redis", "url": "unix://"}, "broker.url"),
        ({"kind": "redis", "url": ""}, "broker.url"),
        ({"kind": "redis", "prefix": "a b"}, "broker.prefix"),
        ({"kind": "redis", "prefix": "a:b"}, "broker.prefix"),
        ({"kind": "redis", "heartbeat": 0}, "broker.heartbeat"),
        ({"kind": "redis", "heartbeat": "5s"}, "broker.heartbeat"),
        ({"kind": "redis", "port": 6379}, "broker.port"),
    ],
)
def test_bad_value_names_its_key(raw: dict[str, object], key: str) -> None:
    error = error_for(raw)
    assert error.key == key
    assert "\n" not in str(error)


def test_a_bad_url_never_shows_its_password() -> None:
    error = error_for({"kind": "redis", "url": "http://user:hunter2@host:6379/0"})
    assert "hunter2" not in str(error)
    assert "***" in str(error)
    error = error_for({"kind": "redis", "url": "redis://user:hunter2@host:nope/0"})
    assert "hunter2" not in str(error)


def test_the_config_repr_hides_the_url() -> None:
    config = from_mapping({"broker": {"kind": "redis", "url": "redis://:hunter2@h:6379/0"}})
    assert "hunter2" not in repr(config)
    assert config.broker.masked_url == "redis://:***@h:6379/0"


def test_masked_url_and_address() -> None:
    assert masked_url("redis://127.0.0.1:6379/0") == "redis://127.0.0.1:6379/0"
    assert masked_url("rediss://u:p@h:1/0") == "rediss://u:***@h:1/0"
    assert redis_address("redis://u:p@h:1/0") == "h:1"
    assert redis_address("redis://h") == "h:6379"
    assert redis_address("unix:///run/r.sock") == "/run/r.sock"
