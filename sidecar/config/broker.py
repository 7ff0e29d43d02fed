"""The `broker` section: one machine (memory) or several sharing Redis.

```yaml
broker:
  kind: redis                    # memory (the default): this machine only
  url: redis://127.0.0.1:6379/0  # or rediss://user:password@host:6380/0, unix:///run/redis.sock
  prefix: sidecar                # every key and pub/sub channel starts with it: clusters can share
  heartbeat: 5                   # seconds; a node silent for 3 heartbeats is swept by the others
```

The password a url may carry is never shown: `masked_url` is what messages and logs print.
"""

from __future__ import annotations

import re
import urllib.parse
from dataclasses import dataclass, field
from typing import Any

from sidecar.config.values import ConfigError, choice, mapping, number, only, string

DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"
DEFAULT_PREFIX = "sidecar"
DEFAULT_HEARTBEAT = 5.0
REDIS_SCHEMES = ("redis", "rediss", "unix")
# Keys and channel names are built as `{prefix}:...`: no spaces, no colons of its own (so that
# one cluster's prefix is never the start of another's keys), short.
_PREFIX = re.compile(r"[A-Za-z0-9_.{}-]{1,64}")


@dataclass(frozen=True)
class BrokerConfig:
    kind: str = "memory"
    url: str | None = field(default=None, repr=False)  # may hold a password
    prefix: str = DEFAULT_PREFIX
    heartbeat: float = DEFAULT_HEARTBEAT

    @property
    def masked_url(self) -> str | None:
        return masked_url(self.url) if self.url is not None else None


def masked_url(url: str) -> str:
    """The url with its password (if any) replaced by `***`."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def redis_address(url: str) -> str:
    """Where a Redis url points, for messages: `host:port` or the socket's path."""
    parts = urllib.parse.urlsplit(url)
    if parts.scheme == "unix":
        return parts.path
    return f"{parts.hostname or '127.0.0.1'}:{parts.port or 6379}"


def parse_broker(raw: Any) -> BrokerConfig:
    raw = mapping(raw, "broker")
    only(raw, "broker", {"kind", "url", "prefix", "heartbeat"})
    kind = choice(raw, "broker", "kind", "memory", ("memory", "redis"))
    url = string(raw, "broker", "url", None)
    if kind == "memory":
        return BrokerConfig(kind=kind, url=url)
    url = _redis_url(url or DEFAULT_REDIS_URL)
    prefix = string(raw, "broker", "prefix", DEFAULT_PREFIX) or DEFAULT_PREFIX
    if not _PREFIX.fullmatch(prefix):
        raise ConfigError(
            "broker.prefix", f"letters, digits and _.-{{}} only, 1 to 64 of them, got {prefix!r}"
        )
    heartbeat = number(raw, "broker", "heartbeat", DEFAULT_HEARTBEAT, 0.2, 300)
    return BrokerConfig(kind=kind, url=url, prefix=prefix, heartbeat=heartbeat)


def _redis_url(url: str) -> str:
    try:
        parts = urllib.parse.urlsplit(url)
        _ = parts.port  # raises on a port that is not a number or out of range
    except ValueError as exc:
        problem = f"not a valid url ({exc}): {masked_url_safe(url)}"
        raise ConfigError("broker.url", problem) from None
    shown = masked_url_safe(url)
    if parts.scheme not in REDIS_SCHEMES:
        raise ConfigError(
            "broker.url", f"must start with redis://, rediss:// or unix://, got {shown}"
        )
    if parts.scheme == "unix":
        if not parts.path:
            raise ConfigError("broker.url", f"unix:// needs a socket path, got {shown}")
        return url
    if not parts.hostname:
        raise ConfigError("broker.url", f"needs a host, got {shown}")
    database = parts.path.lstrip("/")
    if database and not database.isdigit():
        raise ConfigError("broker.url", f"the database must be a number, got {shown}")
    return url


def masked_url_safe(url: str) -> str:
    """masked_url for a url that may not even parse: then nothing of it after a scheme."""
    try:
        return masked_url(url)
    except ValueError:
        return url.partition("://")[0] + "://..."
