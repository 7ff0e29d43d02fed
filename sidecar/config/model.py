"""The configuration: one YAML file, every key defaulted and validated before anything starts.

A bad file stops the start with one line that names the key and what is wrong with it
(`ConfigError`), never a traceback. The contract of the top-level keys is in DESIGN.md.
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.config.broker import BrokerConfig, parse_broker
from sidecar.config.edge import UpstreamConfig, check_upstream_loop, parse_cors, parse_upstream
from sidecar.config.origins import LOCAL_ORIGINS
from sidecar.config.secrets import check_secrets
from sidecar.config.tls import AcmeConfig, CertFiles, EabConfig, HstsConfig, TlsConfig, parse_tls
from sidecar.config.values import ConfigError, MiB
from sidecar.config.values import choice as _choice
from sidecar.config.values import integer as _int
from sidecar.config.values import mapping as _mapping
from sidecar.config.values import number as _seconds
from sidecar.config.values import only as _only
from sidecar.config.values import port as _port
from sidecar.config.values import size as _bytes
from sidecar.config.values import string as _str
from sidecar.config.values import string_list as _str_list
from sidecar.config.webhooks import (
    WEBHOOK_KINDS,
    WebhookConfig,
    WebhookSettings,
    parse_app_webhooks,
    parse_webhooks,
)

__all__ = [
    "WEBHOOK_KINDS",
    "AcmeConfig",
    "BrokerConfig",
    "CertFiles",
    "Config",
    "ConfigError",
    "EabConfig",
    "HstsConfig",
    "TlsConfig",
    "UpstreamConfig",
    "WebhookConfig",
    "WebhookSettings",
    "from_mapping",
    "load",
]

# Hosted Pusher stops at 10 KB; the reason to run a relay beside the app is to send far more.
DEFAULT_MAX_PAYLOAD = 8 * MiB
# A client falling this far behind is closed with 4100. It must hold at least one largest event
# plus a little: an empty queue always takes one event, so the limit only bites on a backlog.
DEFAULT_SEND_QUEUE_BYTES = 16 * MiB
# Browsers send pings, subscriptions and client events: small frames. Bigger is a bug or abuse.
DEFAULT_MAX_CLIENT_MESSAGE = 64 * 1024
# What pusher-js is told; soketi and Reverb say 30, Pusher 120. Shorter finds dead peers sooner.
DEFAULT_ACTIVITY_TIMEOUT = 120
# Hosted Pusher's presence limits: 100 members a channel, 1 KB of user_info each. Every member
# is a line in each subscription_succeeded and an event to every other member when it comes.
DEFAULT_MAX_PRESENCE_MEMBERS = 100
DEFAULT_MAX_USER_INFO = 1024
# Hosted Pusher's rate for client events, per connection: enough for typing indicators and
# cursors, not for one browser flooding a channel.
DEFAULT_CLIENT_EVENTS_PER_SECOND = 10
# Cache channels: hosted Pusher keeps the last event 30 minutes. Each worker keeps its own copy
# of every cached event, bounded in bytes (an event may be megabytes).
DEFAULT_CACHE_TTL = 1800
DEFAULT_CACHE_MAX_BYTES = 64 * MiB
# Per node (shared out among the workers): a browser opens one WebSocket per tab, and a NAT of
# a few hundred users stays well below it; one address holding thousands is a flood.
DEFAULT_MAX_CONNECTIONS_PER_IP = 1000
# An idle HTTP keep-alive connection is a file descriptor held for nothing: aiohttp's default
# is an hour. Browsers reuse a connection within seconds or not at all; behind a load balancer,
# set it above the balancer's own idle timeout (60 s on AWS) so that it is the one to close.
DEFAULT_KEEPALIVE_TIMEOUT = 15.0
# A client has this long to send its first request head (after TLS, which has its own limit).
DEFAULT_REQUEST_HEAD_TIMEOUT = 15.0
# The app writes a whole publish at once on a local socket: one still incomplete after this
# long is a stuck or broken publisher, answered 408 rather than held forever.
DEFAULT_PUBLISH_REQUEST_TIMEOUT = 10.0
# pusher-js subscribes to every channel at once on connect and again on each reconnect: the
# burst (as many as the rate) must take a page's channels; past it, subscribe/unsubscribe churn.
DEFAULT_SUBSCRIPTIONS_PER_SECOND = 100
# A presence join is a member_added (and its leave a member_removed) to every other member: a
# tenth of the subscription rate, so one member churning cannot make the others slow clients.
DEFAULT_PRESENCE_JOINS_PER_SECOND = 10


@dataclass(frozen=True)
class AppConfig:
    id: str
    key: str
    secret: str = field(repr=False)
    client_events: bool = False
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD
    webhooks: tuple[WebhookConfig, ...] = ()


@dataclass(frozen=True)
class ListenConfig:
    host: str = "0.0.0.0"
    port: int = 8443
    # Peers whose X-Forwarded-For/-Proto are believed (a terminator in front, tls.mode off).
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()


@dataclass(frozen=True)
class HttpConfig:
    port: int | None = 8080


@dataclass(frozen=True)
class PublishConfig:
    socket: str = "./sidecar.sock"
    socket_mode: int = 0o660  # who may publish is decided by file permissions


@dataclass(frozen=True)
class AdminConfig:
    host: str = "127.0.0.1"
    port: int | None = 9601  # None (or `admin: null`): no admin listener, no metrics kept
    token: str | None = field(default=None, repr=False)  # required off loopback


@dataclass(frozen=True)
class LimitsConfig:
    activity_timeout: int = DEFAULT_ACTIVITY_TIMEOUT
    pong_timeout: int = 30
    idle_timeout: int = 0  # close a connection with no subscription after this long; 0: never
    send_queue_bytes: int = DEFAULT_SEND_QUEUE_BYTES
    max_client_message_bytes: int = DEFAULT_MAX_CLIENT_MESSAGE
    max_subscriptions: int = 1000  # per connection: bounds what one socket can make us hold
    max_presence_members: int = DEFAULT_MAX_PRESENCE_MEMBERS  # distinct users per channel
    max_presence_user_info_bytes: int = DEFAULT_MAX_USER_INFO  # user_info of one member, as JSON
    client_events_per_second: int = DEFAULT_CLIENT_EVENTS_PER_SECOND  # per connection; over: 4301
    cache_ttl: int = DEFAULT_CACHE_TTL  # seconds a cache channel's last event is kept
    cache_max_bytes: int = DEFAULT_CACHE_MAX_BYTES  # cached event data a worker holds at most
    # Per process (each worker): more are refused with 4004, pusher-js backs off. Each holds a
    # file descriptor and up to send_queue_bytes, so a bound is what keeps a flood survivable.
    max_connections: int = 100_000
    # Per address, over every connection to the browser port (WebSocket or HTTP, from accept
    # to close); per node: each of N workers allows its share. 0: no limit.
    max_connections_per_ip: int = DEFAULT_MAX_CONNECTIONS_PER_IP
    keepalive_timeout: float = DEFAULT_KEEPALIVE_TIMEOUT  # idle HTTP keep-alive, seconds
    request_head_timeout: float = DEFAULT_REQUEST_HEAD_TIMEOUT  # first request head, seconds
    publish_request_timeout: float = DEFAULT_PUBLISH_REQUEST_TIMEOUT  # Unix socket; over: 408
    subscriptions_per_second: int = DEFAULT_SUBSCRIPTIONS_PER_SECOND  # per connection; 4301
    presence_joins_per_second: int = DEFAULT_PRESENCE_JOINS_PER_SECOND  # per connection; 4301


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"


# SIGTERM: clients get 4200 and pusher-js reconnects at once; this long (seconds) is what a
# stop may take in all: accepted publishes delivered, clients closed, webhooks flushed. Below
# the 90 s systemd and 30 s Kubernetes give before SIGKILL, with room for both.
DEFAULT_SHUTDOWN_DEADLINE = 10.0


@dataclass(frozen=True)
class ShutdownConfig:
    deadline: float = DEFAULT_SHUTDOWN_DEADLINE


@dataclass(frozen=True)
class Config:
    listen: ListenConfig = ListenConfig()
    http: HttpConfig = HttpConfig()
    tls: TlsConfig = field(default_factory=TlsConfig)
    publish: PublishConfig = PublishConfig()
    apps: tuple[AppConfig, ...] | None = None  # None: generate one on first run, kept in tls.dir
    allowed_origins: tuple[str, ...] = LOCAL_ORIGINS
    cors_allow_credentials: bool = False  # Access-Control-Allow-Credentials on the HTTP API
    upstream: UpstreamConfig | None = None  # None: paths the sidecar does not own are 404
    broker: BrokerConfig = field(default_factory=BrokerConfig)
    admin: AdminConfig = AdminConfig()
    limits: LimitsConfig = LimitsConfig()
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    log: LogConfig = LogConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    workers: int | str = "auto"  # "auto": one per core this process may run on
    source: str | None = None  # the file it came from, for messages


# Sections -----------------------------------------------------------------------------------


def _listen(raw: Any) -> ListenConfig:
    raw = _mapping(raw, "listen")
    _only(raw, "listen", {"host", "port", "trusted_proxies"})
    return ListenConfig(
        host=_str(raw, "listen", "host", "0.0.0.0") or "0.0.0.0",
        port=_int(raw, "listen", "port", 8443, 1, 65535),
        trusted_proxies=_networks(raw, "listen", "trusted_proxies"),
    )


def _networks(
    raw: dict[str, Any], key: str, name: str
) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
    networks = []
    for i, value in enumerate(_str_list(raw, key, name)):
        try:
            networks.append(ipaddress.ip_network(value.strip(), strict=False))
        except ValueError:
            raise ConfigError(
                f"{key}.{name}[{i}]", f"must be an address or a CIDR like 10.0.0.0/8, got {value!r}"
            ) from None
    return tuple(networks)


# The admin token travels in a header or a URL: long enough not to be guessed.
MIN_ADMIN_TOKEN = 16


def _admin(top: dict[str, Any]) -> AdminConfig:
    if "admin" in top and top["admin"] is None:
        return AdminConfig(port=None)
    raw = _mapping(top.get("admin"), "admin")
    _only(raw, "admin", {"host", "port", "token"})
    host = _str(raw, "admin", "host", "127.0.0.1") or "127.0.0.1"
    port = _port(raw, "admin", "port", 9601)
    token = _str(raw, "admin", "token", None)
    if token is not None and len(token) < MIN_ADMIN_TOKEN:
        raise ConfigError("admin.token", f"must be at least {MIN_ADMIN_TOKEN} characters")
    if port is not None and token is None and not is_loopback(host):
        raise ConfigError(
            "admin.token", f"required when admin.host ({host}) is not a loopback address"
        )
    return AdminConfig(host=host, port=port, token=token)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a name: it may resolve anywhere


def _publish(raw: Any) -> PublishConfig:
    raw = _mapping(raw, "publish")
    _only(raw, "publish", {"socket", "socket_mode"})
    mode = raw.get("socket_mode", 0o660)
    if isinstance(mode, str):
        try:
            mode = int(mode, 8)
        except ValueError:
            raise ConfigError(
                "publish.socket_mode", f"must be octal like '0660', got {mode!r}"
            ) from None
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ConfigError("publish.socket_mode", f"must be a file mode like '0660', got {mode!r}")
    return PublishConfig(
        socket=_str(raw, "publish", "socket", "./sidecar.sock") or "", socket_mode=mode
    )


def _apps(raw: Any) -> tuple[AppConfig, ...] | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw:
        raise ConfigError("apps", "must be a non-empty list of {id, key, secret}")
    apps = []
    ids: set[str] = set()
    keys: set[str] = set()
    for i, entry in enumerate(raw):
        where = f"apps[{i}]"
        entry = _mapping(entry, where)
        _only(
            entry, where, {"id", "key", "secret", "client_events", "max_payload_bytes", "webhooks"}
        )
        app_id = entry.get("id")
        if isinstance(app_id, int) and not isinstance(app_id, bool):
            app_id = str(app_id)
        if not isinstance(app_id, str) or not (app_id.isascii() and app_id.isdigit()):
            # The Pusher server libraries build URLs from a numeric app id.
            raise ConfigError(
                f"{where}.id", f"must be a number (as the Pusher libraries expect), got {app_id!r}"
            )
        key = _str(entry, where, "key", None)
        secret = entry.get("secret")
        if key is None:
            raise ConfigError(f"{where}.key", "is required")
        if not isinstance(secret, str) or len(secret) < 8:
            raise ConfigError(f"{where}.secret", "is required: a string of at least 8 characters")
        if app_id in ids:
            raise ConfigError(f"{where}.id", f"{app_id} is used by another app")
        if key in keys:
            raise ConfigError(f"{where}.key", "is used by another app")
        ids.add(app_id)
        keys.add(key)
        client_events = entry.get("client_events", False)
        if not isinstance(client_events, bool):
            raise ConfigError(
                f"{where}.client_events", f"must be true or false, got {client_events!r}"
            )
        apps.append(
            AppConfig(
                id=app_id,
                key=key,
                secret=secret,
                client_events=client_events,
                max_payload_bytes=_bytes(entry, where, "max_payload_bytes", DEFAULT_MAX_PAYLOAD),
                webhooks=parse_app_webhooks(entry.get("webhooks"), f"{where}.webhooks"),
            )
        )
    return tuple(apps)


def _limits(raw: Any) -> LimitsConfig:
    raw = _mapping(raw, "limits")
    d = LimitsConfig()
    _only(raw, "limits", set(d.__dataclass_fields__))
    limits = LimitsConfig(
        activity_timeout=_int(raw, "limits", "activity_timeout", d.activity_timeout, 1, 3600),
        pong_timeout=_int(raw, "limits", "pong_timeout", d.pong_timeout, 1, 600),
        idle_timeout=_int(raw, "limits", "idle_timeout", d.idle_timeout, 0, 7 * 86400),
        send_queue_bytes=_bytes(raw, "limits", "send_queue_bytes", d.send_queue_bytes),
        max_client_message_bytes=_bytes(
            raw, "limits", "max_client_message_bytes", d.max_client_message_bytes
        ),
        max_subscriptions=_int(raw, "limits", "max_subscriptions", d.max_subscriptions, 1, 100_000),
        max_presence_members=_int(
            raw, "limits", "max_presence_members", d.max_presence_members, 1, 100_000
        ),
        max_presence_user_info_bytes=_bytes(
            raw, "limits", "max_presence_user_info_bytes", d.max_presence_user_info_bytes
        ),
        client_events_per_second=_int(
            raw, "limits", "client_events_per_second", d.client_events_per_second, 1, 10_000
        ),
        cache_ttl=_int(raw, "limits", "cache_ttl", d.cache_ttl, 1, 7 * 86400),
        cache_max_bytes=_bytes(raw, "limits", "cache_max_bytes", d.cache_max_bytes),
        max_connections=_int(raw, "limits", "max_connections", d.max_connections, 1, 10_000_000),
        max_connections_per_ip=_int(
            raw, "limits", "max_connections_per_ip", d.max_connections_per_ip, 0, 10_000_000
        ),
        keepalive_timeout=_seconds(
            raw, "limits", "keepalive_timeout", d.keepalive_timeout, 1, 3630
        ),
        request_head_timeout=_seconds(
            raw, "limits", "request_head_timeout", d.request_head_timeout, 1, 600
        ),
        publish_request_timeout=_seconds(
            raw, "limits", "publish_request_timeout", d.publish_request_timeout, 1, 600
        ),
        subscriptions_per_second=_int(
            raw, "limits", "subscriptions_per_second", d.subscriptions_per_second, 1, 100_000
        ),
        presence_joins_per_second=_int(
            raw, "limits", "presence_joins_per_second", d.presence_joins_per_second, 1, 100_000
        ),
    )
    return limits


def from_mapping(raw: Any, source: str | None = None) -> Config:
    """Validate a parsed YAML document into a Config, or raise ConfigError."""
    raw = _mapping(raw, "(top level)")
    _only(
        raw,
        "",
        {
            "listen",
            "http",
            "tls",
            "publish",
            "apps",
            "cors",
            "upstream",
            "broker",
            "admin",
            "limits",
            "webhooks",
            "log",
            "shutdown",
            "workers",
        },
    )
    http = _mapping(raw.get("http"), "http")
    _only(http, "http", {"port"})
    # `http: null` turns the plain-HTTP port off, as `admin: null` does the admin listener.
    http_port = None if "http" in raw and raw["http"] is None else _port(http, "http", "port", 8080)
    log = _mapping(raw.get("log"), "log")
    _only(log, "log", {"level"})
    shutdown = _mapping(raw.get("shutdown"), "shutdown")
    _only(shutdown, "shutdown", {"deadline"})
    workers = raw.get("workers", "auto")
    if workers != "auto" and (
        isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= 256
    ):
        raise ConfigError("workers", f"must be auto or a number from 1 to 256, got {workers!r}")
    origins, credentials = parse_cors(raw.get("cors"))
    config = Config(
        workers=workers,
        listen=_listen(raw.get("listen")),
        http=HttpConfig(port=http_port),
        tls=parse_tls(raw.get("tls")),
        publish=_publish(raw.get("publish")),
        apps=_apps(raw.get("apps")),
        allowed_origins=origins,
        cors_allow_credentials=credentials,
        upstream=parse_upstream(raw.get("upstream")),
        broker=parse_broker(raw.get("broker")),
        admin=_admin(raw),
        limits=_limits(raw.get("limits")),
        webhooks=parse_webhooks(raw.get("webhooks")),
        log=LogConfig(
            level=_choice(log, "log", "level", "info", ("debug", "info", "warning", "error"))
        ),
        shutdown=ShutdownConfig(
            deadline=_seconds(shutdown, "shutdown", "deadline", DEFAULT_SHUTDOWN_DEADLINE, 1, 3600)
        ),
        source=source,
    )
    check_upstream_loop(
        config.upstream, config.listen.host, config.listen.port, config.publish.socket
    )
    check_secrets(config.apps, development=config.tls.mode == "self-signed")
    if config.tls.mode == "acme" and config.http.port is None:
        raise ConfigError(
            "http.port", "is needed by tls.mode acme: HTTP-01 challenges arrive there"
        )
    ports = [
        ("listen.port", config.listen.port),
        ("http.port", config.http.port),
        ("admin.port", config.admin.port),
    ]
    seen: dict[int, str] = {}
    for name, port in ports:
        if port is None:
            continue
        if port in seen:
            raise ConfigError(name, f"port {port} is already taken by {seen[port]}")
        seen[port] = name
    return config


def load(path: str | os.PathLike[str]) -> Config:
    """Read and validate a YAML file; ConfigError names the key, or the line of a syntax error."""
    return parse(read_text(path), str(path))


def read_text(path: str | os.PathLike[str]) -> str:
    """The file's text, or ConfigError naming the file."""
    path = Path(path)
    try:
        return path.read_text()
    except OSError as exc:
        raise ConfigError(str(path), f"cannot read: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(str(path), "is not UTF-8 text") from None


def parse(text: str, source: str) -> Config:
    """Validate the text of a configuration file (`source` names it in messages).

    The supervisor hands workers the very text it validated, rather than the file's name: a
    file edited since would make a worker disagree with it, or fail to start.
    """
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "YAML"
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"{source}: {where}", problem) from None
    return from_mapping(raw, source=source)
