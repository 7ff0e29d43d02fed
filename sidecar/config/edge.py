"""The `cors` and `upstream` sections of the configuration: who may call in, where the rest goes.

```yaml
cors:
  allowed_origins: ["https://app.example.com", "*.example.com"]   # also the WebSocket allow-list
  allow_credentials: false     # Access-Control-Allow-Credentials on the HTTP API
upstream: http://127.0.0.1:3000          # or unix:/run/app/puma.sock; null: no reverse proxy
upstream:                                 # the same, with timeouts
  url: unix:///run/app/puma.sock
  timeout: 60                  # seconds the app may stay silent once it has the request
  connect_timeout: 5           # seconds to accept the connection
```
"""

from __future__ import annotations

import ipaddress
import os.path
import urllib.parse
from dataclasses import dataclass
from typing import Any

from sidecar.config.origins import LOCAL_ORIGINS, parse_origin_pattern
from sidecar.config.values import ConfigError, boolean, mapping, number, only

# Puma's and Unicorn's own worker timeouts are 60 s: an app that says nothing for longer is
# stuck, and the browser is better told so (504) than left waiting.
DEFAULT_UPSTREAM_TIMEOUT = 60.0
# The app is on this machine: a connection not accepted within seconds never will be.
DEFAULT_CONNECT_TIMEOUT = 5.0
# sun_path is 108 bytes on Linux, the last one a NUL.
MAX_UNIX_PATH = 107
UPSTREAM_FORMS = "http://host:port or unix:/path/to.sock"


@dataclass(frozen=True)
class UpstreamConfig:
    """The app behind the sidecar: a TCP address (host, port) or a Unix socket (socket)."""

    url: str
    host: str | None = None
    port: int | None = None
    socket: str | None = None
    timeout: float = DEFAULT_UPSTREAM_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT

    @property
    def origin(self) -> str:
        """The scheme and authority requests are sent to (over the socket, when there is one)."""
        if self.socket is not None:
            return "http://localhost"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"http://{host}:{self.port}"


def parse_cors(raw: Any) -> tuple[tuple[str, ...], bool]:
    """cors.allowed_origins and cors.allow_credentials."""
    raw = mapping(raw, "cors")
    only(raw, "cors", {"allowed_origins", "allow_credentials"})
    origins = raw.get("allowed_origins", list(LOCAL_ORIGINS))
    if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
        raise ConfigError("cors.allowed_origins", "must be a list of origins")
    for i, origin in enumerate(origins):
        if origin == "*":
            continue
        try:
            parse_origin_pattern(origin)
        except ValueError as exc:
            raise ConfigError(f"cors.allowed_origins[{i}]", str(exc)) from None
    credentials = boolean(raw, "cors", "allow_credentials", False)
    if credentials and "*" in origins:
        raise ConfigError(
            "cors.allow_credentials",
            "cannot be true while allowed_origins has '*': any site could call with credentials",
        )
    return tuple(origins), credentials


def parse_upstream(raw: Any) -> UpstreamConfig | None:
    """`upstream: URL`, or `upstream: {url, timeout, connect_timeout}`; null: no proxy."""
    if raw is None:
        return None
    if isinstance(raw, str):
        return _address(raw, "upstream")
    if not isinstance(raw, dict):
        raise ConfigError("upstream", f"must be null, a URL ({UPSTREAM_FORMS}) or a mapping")
    only(raw, "upstream", {"url", "timeout", "connect_timeout"})
    if raw.get("url") is None:
        raise ConfigError("upstream.url", f"is required: {UPSTREAM_FORMS}")
    address = _address(raw["url"], "upstream.url")
    return UpstreamConfig(
        url=address.url,
        host=address.host,
        port=address.port,
        socket=address.socket,
        timeout=number(raw, "upstream", "timeout", DEFAULT_UPSTREAM_TIMEOUT, 0.001, 86400),
        connect_timeout=number(
            raw, "upstream", "connect_timeout", DEFAULT_CONNECT_TIMEOUT, 0.001, 600
        ),
    )


def _address(value: Any, key: str) -> UpstreamConfig:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(key, f"must be {UPSTREAM_FORMS}, got {value!r}")
    value = value.strip()
    # Never echo a URL that may carry credentials.
    shown = "" if "@" in value else f", got {value!r}"
    if value.lower().startswith("unix:"):
        return UpstreamConfig(url=value, socket=_unix_path(value, key))
    try:
        parts = urllib.parse.urlsplit(value)
        port = parts.port
    except ValueError:
        raise ConfigError(key, f"bad port{shown}") from None
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ConfigError(
            key, "https is not supported: the app runs beside the sidecar (http:// or unix:)"
        )
    if scheme != "http" or not parts.hostname:
        raise ConfigError(key, f"must be {UPSTREAM_FORMS}{shown}")
    if parts.username is not None or parts.password is not None:
        raise ConfigError(key, "must not carry credentials")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(key, "takes no path or query: requests keep their own path")
    return UpstreamConfig(url=value, host=parts.hostname, port=port or 80)


def _unix_path(value: str, key: str) -> str:
    path = value[len("unix:") :]
    if path.startswith("//"):  # Puma writes unix:///abs/path and unix://relative/path
        path = path[2:]
    if not path:
        raise ConfigError(key, "names no socket path (unix:/path/to.sock)")
    if len(path.encode()) > MAX_UNIX_PATH:
        raise ConfigError(key, f"socket path longer than {MAX_UNIX_PATH} bytes")
    return path


def check_upstream_loop(
    upstream: UpstreamConfig | None, listen_host: str, listen_port: int, publish_socket: str
) -> None:
    """An upstream that is the sidecar itself would proxy every request to itself, forever."""
    if upstream is None:
        return
    if upstream.socket is not None:
        if os.path.abspath(upstream.socket) == os.path.abspath(publish_socket):
            raise ConfigError("upstream", "is the publish socket, not the app's")
        return
    if upstream.port == listen_port and _same_host(upstream.host or "", listen_host):
        raise ConfigError("upstream", f"is the sidecar's own listen port {listen_port}")


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_unspecified


def _same_host(upstream: str, listen: str) -> bool:
    if upstream == listen:
        return True
    # Listening on every address (or on loopback) takes loopback connections too.
    return _is_local(upstream) and _is_local(listen)
