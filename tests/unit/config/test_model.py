"""sidecar.config.model: every key defaulted, every bad value a ConfigError naming its dotted
key."""

from __future__ import annotations

from pathlib import Path

import pytest

from sidecar.config.model import (
    DEFAULT_MAX_PAYLOAD,
    WEBHOOK_KINDS,
    Config,
    ConfigError,
    MiB,
    WebhookConfig,
    WebhookSettings,
    from_mapping,
    load,
)
from sidecar.config.origins import LOCAL_ORIGINS

APP = {"id": "1", "key": "app-key", "secret": "a-long-secret"}


def error_for(raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    return info.value


def assert_names(raw: object, key: str) -> ConfigError:
    error = error_for(raw)
    assert error.key == key
    assert str(error).startswith(f"{key}: ")
    return error


# Defaults -----------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [{}, None])
def test_defaults_from_an_empty_mapping(raw: object) -> None:
    config = from_mapping(raw)
    assert config == Config()
    assert config.listen.host == "0.0.0.0"
    assert config.listen.port == 8443
    assert config.http.port == 8080
    assert config.admin.port == 9601
    assert config.tls.mode == "self-signed"
    assert config.publish.socket_mode == 0o660
    assert config.apps is None  # generated on first run
    assert config.allowed_origins == LOCAL_ORIGINS
    assert config.broker.kind == "memory"
    assert config.limits.activity_timeout == 120
    assert config.limits.idle_timeout == 0
    assert config.limits.send_queue_bytes == 16 * MiB
    assert config.limits.max_presence_members == 100
    assert config.limits.max_presence_user_info_bytes == 1024
    assert config.limits.client_events_per_second == 10
    assert config.limits.cache_ttl == 1800
    assert config.limits.cache_max_bytes == 64 * MiB
    assert config.limits.max_connections_per_ip == 1000
    assert config.limits.keepalive_timeout == 15.0
    assert config.limits.request_head_timeout == 15.0
    assert config.limits.publish_request_timeout == 10.0
    assert config.limits.subscriptions_per_second == 100
    assert config.limits.presence_joins_per_second == 10
    assert config.log.level == "info"
    assert config.webhooks == WebhookSettings()
    assert config.webhooks.vacate_delay == 3.0
    assert config.webhooks.retry_horizon == 300.0


def test_source_is_recorded() -> None:
    assert from_mapping({}, source="/etc/sidecar.yaml").source == "/etc/sidecar.yaml"


def test_a_full_valid_mapping() -> None:
    config = from_mapping(
        {
            "listen": {"host": "127.0.0.1", "port": 9000},
            "http": {"port": None},
            "apps": [
                APP,
                {"id": 2, "key": "k2", "secret": "another-secret", "client_events": True},
            ],
            "cors": {"allowed_origins": ["https://app.example.com", "*.example.org", "*"]},
            "limits": {"idle_timeout": 300, "max_client_message_bytes": "128KiB"},
            "log": {"level": "debug"},
        }
    )
    assert config.listen.port == 9000
    assert config.http.port is None
    assert config.apps is not None
    assert [a.id for a in config.apps] == ["1", "2"]  # an integer id becomes a string
    assert config.apps[0].max_payload_bytes == DEFAULT_MAX_PAYLOAD
    assert config.apps[1].client_events is True
    assert config.allowed_origins == ("https://app.example.com", "*.example.org", "*")
    assert config.limits.idle_timeout == 300
    assert config.limits.max_client_message_bytes == 128 * 1024
    assert config.log.level == "debug"


# Sizes and modes ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("8MiB", 8 * MiB),
        ("512KiB", 512 * 1024),
        ("10MB", 10_000_000),
        ("1GiB", 1024**3),
        ("2GB", 2 * 1000**3),
        ("3KB", 3000),
        ("100B", 100),
        ("4096", 4096),
        (" 8 MiB ", 8 * MiB),
        (12345, 12345),
    ],
)
def test_sizes(value: object, expected: int) -> None:
    config = from_mapping({"limits": {"send_queue_bytes": value}})
    assert config.limits.send_queue_bytes == expected


@pytest.mark.parametrize("value", ["8 megs", "MiB", "-1", "1.5MiB", "0", 0, -5, 1.5, True, [1]])
def test_bad_sizes(value: object) -> None:
    assert_names({"limits": {"send_queue_bytes": value}}, "limits.send_queue_bytes")


def test_app_payload_limit_is_a_size() -> None:
    config = from_mapping({"apps": [{**APP, "max_payload_bytes": "1MiB"}]})
    assert config.apps is not None
    assert config.apps[0].max_payload_bytes == MiB
    assert_names({"apps": [{**APP, "max_payload_bytes": "lots"}]}, "apps[0].max_payload_bytes")


@pytest.mark.parametrize(("value", "expected"), [("0600", 0o600), ("660", 0o660), (0o640, 0o640)])
def test_socket_mode(value: object, expected: int) -> None:
    assert from_mapping({"publish": {"socket_mode": value}}).publish.socket_mode == expected


@pytest.mark.parametrize("value", ["0999", "rw-rw----", "", 0o1777, -1, 660, True, 1.5])
def test_bad_socket_mode(value: object) -> None:
    assert_names({"publish": {"socket_mode": value}}, "publish.socket_mode")


def test_yaml_octal_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("publish:\n  socket_mode: 0600\n")
    assert load(path).publish.socket_mode == 0o600


# Bad values name their key ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"listen": {"port": 0}}, "listen.port"),
        ({"listen": {"port": 65536}}, "listen.port"),
        ({"listen": {"port": "8443"}}, "listen.port"),
        ({"listen": {"port": True}}, "listen.port"),
        ({"listen": {"host": ""}}, "listen.host"),
        ({"listen": "0.0.0.0:8443"}, "listen"),
        ({"http": {"port": 70000}}, "http.port"),
        ({"admin": {"port": -1}}, "admin.port"),
        ({"admin": {"host": 127}}, "admin.host"),
        ({"tls": {"mode": "letsencrypt"}}, "tls.mode"),
        ({"tls": {"mode": "acme"}}, "tls.acme"),
        ({"tls": {"dir": ""}}, "tls.dir"),
        ({"publish": {"socket": ""}}, "publish.socket"),
        ({"broker": {"kind": "kafka"}}, "broker.kind"),
        ({"broker": {"kind": "redis", "url": "http://x"}}, "broker.url"),
        ({"upstream": "ftp://localhost:3000"}, "upstream"),
        ({"log": {"level": "verbose"}}, "log.level"),
        ({"shutdown": {"deadline": 0}}, "shutdown.deadline"),
        ({"shutdown": {"deadline": "10s"}}, "shutdown.deadline"),
        ({"shutdown": 10}, "shutdown"),
        ({"limits": {"activity_timeout": 0}}, "limits.activity_timeout"),
        ({"limits": {"pong_timeout": 601}}, "limits.pong_timeout"),
        ({"limits": {"idle_timeout": -1}}, "limits.idle_timeout"),
        ({"limits": {"max_subscriptions": "many"}}, "limits.max_subscriptions"),
        ({"limits": {"max_client_message_bytes": "big"}}, "limits.max_client_message_bytes"),
        ({"limits": {"max_presence_members": 0}}, "limits.max_presence_members"),
        (
            {"limits": {"max_presence_user_info_bytes": "1 lot"}},
            "limits.max_presence_user_info_bytes",
        ),
        ({"limits": {"client_events_per_second": True}}, "limits.client_events_per_second"),
        ({"limits": {"cache_ttl": 0}}, "limits.cache_ttl"),
        ({"limits": {"cache_max_bytes": -5}}, "limits.cache_max_bytes"),
        ({"limits": {"max_connections_per_ip": -1}}, "limits.max_connections_per_ip"),
        ({"limits": {"keepalive_timeout": 0}}, "limits.keepalive_timeout"),
        ({"limits": {"request_head_timeout": "15s"}}, "limits.request_head_timeout"),
        ({"limits": {"publish_request_timeout": 0.5}}, "limits.publish_request_timeout"),
        ({"limits": {"subscriptions_per_second": 0}}, "limits.subscriptions_per_second"),
        ({"limits": {"presence_joins_per_second": 1.5}}, "limits.presence_joins_per_second"),
        ({"cors": {"allowed_origins": "https://app.example.com"}}, "cors.allowed_origins"),
        ({"cors": {"allowed_origins": [1]}}, "cors.allowed_origins"),
        ({"cors": {"allowed_origins": ["example.com"]}}, "cors.allowed_origins[0]"),
        (
            {"cors": {"allowed_origins": ["https://a.example.com", "ftp://b"]}},
            "cors.allowed_origins[1]",
        ),
    ],
)
def test_bad_value_names_its_key(raw: dict[str, object], key: str) -> None:
    assert_names(raw, key)


def test_top_level_must_be_a_mapping() -> None:
    assert_names(["listen"], "(top level)")


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"lisen": {"port": 1}}, "lisen"),  # an unknown top-level key
        ({"listen": {"prot": 1}}, "listen.prot"),
        ({"http": {"host": "x"}}, "http.host"),
        ({"tls": {"certificate": "x"}}, "tls.certificate"),
        ({"publish": {"mode": "0600"}}, "publish.mode"),
        ({"cors": {"origins": []}}, "cors.origins"),
        ({"broker": {"host": "x"}}, "broker.host"),
        ({"admin": {"path": "/"}}, "admin.path"),
        ({"limits": {"max_payload": 1}}, "limits.max_payload"),
        ({"log": {"format": "json"}}, "log.format"),
        ({"shutdown": {"timeout": 5}}, "shutdown.timeout"),
        ({"apps": [APP, {**APP, "id": "2", "key": "k2", "name": "x"}]}, "apps[1].name"),
    ],
)
def test_unknown_key_is_named(raw: dict[str, object], key: str) -> None:
    error = assert_names(raw, key)
    assert "unknown key" in error.problem


# Apps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("apps", "key"),
    [
        ([], "apps"),
        ({"id": "1"}, "apps"),
        (["app"], "apps[0]"),
        ([{**APP, "secret": "short"}], "apps[0].secret"),
        ([{"id": "1", "key": "k"}], "apps[0].secret"),
        ([{**APP, "secret": 12345678}], "apps[0].secret"),
        ([{**APP, "key": ""}], "apps[0].key"),
        ([{"id": "1", "secret": "a-long-secret"}], "apps[0].key"),
        ([{**APP, "id": "app-one"}], "apps[0].id"),
        ([{**APP, "id": None}], "apps[0].id"),
        ([{**APP, "id": True}], "apps[0].id"),
        ([{**APP, "id": ""}], "apps[0].id"),
        ([{**APP, "client_events": "yes"}], "apps[0].client_events"),
        ([APP, {**APP, "id": "x2", "key": "k2"}], "apps[1].id"),
        ([APP, {**APP, "key": "k2"}], "apps[1].id"),  # the same id twice
        ([APP, {**APP, "id": "2"}], "apps[1].key"),  # the same key twice
    ],
)
def test_bad_apps(apps: object, key: str) -> None:
    assert_names({"apps": apps}, key)


@pytest.mark.parametrize("app_id", ["\u00b2", "\u0661\u0662"])  # superscript 2, Arabic-Indic 12
def test_app_id_must_be_ascii_digits(app_id: str) -> None:
    assert_names({"apps": [{**APP, "id": app_id}]}, "apps[0].id")


def test_duplicate_app_id_message_names_the_id() -> None:
    error = assert_names({"apps": [APP, {**APP, "id": 1, "key": "k2"}]}, "apps[1].id")
    assert "1 is used by another app" in error.problem


def test_secret_is_not_in_the_repr() -> None:
    config = from_mapping({"apps": [APP]})
    assert "a-long-secret" not in repr(config)


# Webhooks -----------------------------------------------------------------------------------


def test_app_webhooks() -> None:
    hooks = [
        {"url": "https://app.example.com/pusher/webhooks", "events": ["channel_occupied"]},
        {"url": "http://127.0.0.1:3000/hooks", "events": [*WEBHOOK_KINDS, "client_event"]},
    ]
    config = from_mapping({"apps": [{**APP, "webhooks": hooks}]})
    assert config.apps is not None
    assert config.apps[0].webhooks == (
        WebhookConfig("https://app.example.com/pusher/webhooks", frozenset({"channel_occupied"})),
        WebhookConfig("http://127.0.0.1:3000/hooks", frozenset(WEBHOOK_KINDS)),
    )


def test_an_app_without_webhooks_has_none() -> None:
    config = from_mapping({"apps": [APP]})
    assert config.apps is not None
    assert config.apps[0].webhooks == ()


GOOD_HOOK = {"url": "https://example.com/hooks", "events": ["channel_vacated"]}


@pytest.mark.parametrize(
    ("hooks", "key", "problem"),
    [
        ("https://example.com", "apps[0].webhooks", "must be a list"),
        (["https://example.com"], "apps[0].webhooks[0]", "mapping"),
        ([{"events": ["channel_vacated"]}], "apps[0].webhooks[0].url", "required"),
        ([{**GOOD_HOOK, "url": "ftp://example.com/x"}], "apps[0].webhooks[0].url", "http"),
        ([{**GOOD_HOOK, "url": "example.com/hooks"}], "apps[0].webhooks[0].url", "http"),
        ([{**GOOD_HOOK, "url": "https://"}], "apps[0].webhooks[0].url", "host"),
        ([{**GOOD_HOOK, "url": "http://h:99999/"}], "apps[0].webhooks[0].url", "http"),
        ([{**GOOD_HOOK, "url": 5}], "apps[0].webhooks[0].url", "required"),
        ([{"url": "https://example.com"}], "apps[0].webhooks[0].events", "non-empty list"),
        ([{**GOOD_HOOK, "events": []}], "apps[0].webhooks[0].events", "non-empty list"),
        ([{**GOOD_HOOK, "events": "client_event"}], "apps[0].webhooks[0].events", "list"),
        (
            [GOOD_HOOK, {**GOOD_HOOK, "events": ["channel_vacated", "foo"]}],
            "apps[0].webhooks[1].events",
            "unknown kind 'foo'",
        ),
        ([{**GOOD_HOOK, "secret": "x"}], "apps[0].webhooks[0].secret", "unknown key"),
    ],
)
def test_bad_webhooks(hooks: object, key: str, problem: str) -> None:
    error = assert_names({"apps": [{**APP, "webhooks": hooks}]}, key)
    assert problem in error.problem


def test_a_bad_webhook_url_is_not_echoed() -> None:
    # A URL may carry credentials: the message names the key, not the value.
    url = "ftp://user:hunter2@example.com/"
    error = assert_names(
        {"apps": [{**APP, "webhooks": [{**GOOD_HOOK, "url": url}]}]}, "apps[0].webhooks[0].url"
    )
    assert "hunter2" not in str(error)


def test_webhook_settings() -> None:
    raw = {
        "batch_window": 0.05,
        "batch_max_events": 5,
        "vacate_delay": 0,
        "retry_horizon": 60,
        "retry_initial_delay": 0.5,
        "retry_max_delay": 10,
        "timeout": 2,
        "queue_limit": 100,
    }
    settings = from_mapping({"webhooks": raw}).webhooks
    assert settings == WebhookSettings(
        batch_window=0.05,
        batch_max_events=5,
        vacate_delay=0.0,
        retry_horizon=60.0,
        retry_initial_delay=0.5,
        retry_max_delay=10.0,
        timeout=2.0,
        queue_limit=100,
    )
    assert isinstance(settings.retry_horizon, float)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"batch_window": -1}, "webhooks.batch_window"),
        ({"batch_window": "250ms"}, "webhooks.batch_window"),
        ({"batch_max_events": 0}, "webhooks.batch_max_events"),
        ({"vacate_delay": True}, "webhooks.vacate_delay"),
        ({"retry_horizon": None}, "webhooks.retry_horizon"),
        ({"retry_initial_delay": 0}, "webhooks.retry_initial_delay"),
        ({"retry_initial_delay": 5, "retry_max_delay": 1}, "webhooks.retry_max_delay"),
        ({"timeout": 0}, "webhooks.timeout"),
        ({"queue_limit": 1.5}, "webhooks.queue_limit"),
        ({"url": "https://example.com"}, "webhooks.url"),
        ("fast", "webhooks"),
    ],
)
def test_bad_webhook_settings(raw: object, key: str) -> None:
    assert_names({"webhooks": raw}, key)


# TLS files ----------------------------------------------------------------------------------


def test_tls_mode_off_unquoted_in_yaml_means_off(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("tls: {mode: off}\n")
    assert load(str(path)).tls.mode == "off"


def test_tls_files_needs_cert_and_key() -> None:
    error = assert_names({"tls": {"mode": "files"}}, "tls.cert")
    assert "required" in error.problem


def test_tls_files_with_missing_files_names_tls_cert(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    error = assert_names(
        {"tls": {"mode": "files", "cert": str(missing), "key": str(missing)}}, "tls.cert"
    )
    assert str(missing) in error.problem


def test_tls_files_with_missing_key_file_names_tls_key(tmp_path: Path) -> None:
    cert = tmp_path / "cert.pem"
    cert.write_text("x")
    raw = {"tls": {"mode": "files", "cert": str(cert), "key": str(tmp_path / "key.pem")}}
    assert_names(raw, "tls.key")


def test_tls_files_with_both_files(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("x")
    key.write_text("y")
    tls = from_mapping({"tls": {"mode": "files", "cert": str(cert), "key": str(key)}}).tls
    assert (tls.mode, tls.cert, tls.key) == ("files", str(cert), str(key))


def test_tls_cert_must_be_a_file_not_a_directory(tmp_path: Path) -> None:
    raw = {"tls": {"mode": "files", "cert": str(tmp_path), "key": str(tmp_path)}}
    assert_names(raw, "tls.cert")


# Ports --------------------------------------------------------------------------------------


def test_duplicate_ports_are_refused() -> None:
    error = assert_names({"listen": {"port": 8080}}, "http.port")
    assert "listen.port" in error.problem
    assert_names({"admin": {"port": 8443}}, "admin.port")


def test_disabled_ports_do_not_clash() -> None:
    config = from_mapping({"http": {"port": None}, "admin": {"port": None}})
    assert (config.http.port, config.admin.port) == (None, None)


# load() -------------------------------------------------------------------------------------


def test_load_reads_and_validates(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text('listen:\n  port: 9443\napps:\n  - {id: "7", key: k, secret: s3cr3t-s3cr3t}\n')
    config = load(path)
    assert config.listen.port == 9443
    assert config.apps is not None
    assert config.apps[0].id == "7"
    assert config.source == str(path)


def test_load_of_an_empty_file_gives_the_defaults(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert load(path) == Config(source=str(path))


def test_load_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen:\n  port: 8443\n  host: [unclosed\nlog:\n  level: info\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    message = str(info.value)
    assert message.startswith(f"{path}: line ")
    line = int(message.split("line ", 1)[1].split(":", 1)[0])
    assert 3 <= line <= 5


def test_load_yaml_bad_indentation_names_line_3(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen:\n  port: 8443\n host: x\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: line 3:")


def test_load_of_a_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "missing.yaml"
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(f"{path}: cannot read")


def test_load_of_a_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b'log:\n  level: "\xe9"\n')
    with pytest.raises(ConfigError) as info:
        load(path)
    assert str(info.value).startswith(str(path))


def test_load_names_the_bad_key_of_a_valid_yaml(tmp_path: Path) -> None:
    path = tmp_path / "sidecar.yaml"
    path.write_text("limits:\n  send_queue_bytes: huge\n")
    with pytest.raises(ConfigError) as info:
        load(path)
    assert info.value.key == "limits.send_queue_bytes"


def test_presence_client_event_and_cache_limits() -> None:
    config = from_mapping(
        {
            "limits": {
                "max_presence_members": 500,
                "max_presence_user_info_bytes": "2KiB",
                "client_events_per_second": 50,
                "cache_ttl": 60,
                "cache_max_bytes": "1MiB",
            }
        }
    )
    assert config.limits.max_presence_members == 500
    assert config.limits.max_presence_user_info_bytes == 2048
    assert config.limits.client_events_per_second == 50
    assert config.limits.cache_ttl == 60
    assert config.limits.cache_max_bytes == MiB


def test_connection_caps_timeouts_and_subscription_rates() -> None:
    limits = from_mapping(
        {
            "limits": {
                "max_connections_per_ip": 0,
                "keepalive_timeout": 5,
                "request_head_timeout": 2.5,
                "publish_request_timeout": 3,
                "subscriptions_per_second": 20,
                "presence_joins_per_second": 2,
            }
        }
    ).limits
    assert limits.max_connections_per_ip == 0  # no limit
    assert (limits.keepalive_timeout, limits.request_head_timeout) == (5.0, 2.5)
    assert limits.publish_request_timeout == 3.0
    assert (limits.subscriptions_per_second, limits.presence_joins_per_second) == (20, 2)


def test_shutdown_deadline_defaults_to_ten_seconds_and_takes_fractions() -> None:
    assert from_mapping({}).shutdown.deadline == 10.0
    assert from_mapping({"shutdown": {"deadline": 2.5}}).shutdown.deadline == 2.5
