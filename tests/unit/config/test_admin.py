"""sidecar.config.model: the admin listener's block (`admin: null`, admin.token off loopback), and
`http: null` alike."""

from __future__ import annotations

import pytest

from sidecar.config.model import ConfigError, from_mapping, is_loopback


def test_admin_null_turns_the_listener_off() -> None:
    assert from_mapping({"admin": None}).admin.port is None
    assert from_mapping({"admin": {"port": None}}).admin.port is None
    assert from_mapping({}).admin.port == 9601


def test_http_null_turns_the_plain_port_off_as_admin_null_does() -> None:
    assert from_mapping({"http": None}).http.port is None
    assert from_mapping({"http": {"port": None}}).http.port is None
    assert from_mapping({}).http.port == 8080
    with pytest.raises(ConfigError) as exc:  # ACME's challenges need it
        from_mapping({"http": None, "tls": {"mode": "acme", "acme": {"domains": ["a.test"]}}})
    assert exc.value.key == "http.port"


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    admin = from_mapping({"admin": {"host": host}}).admin
    assert admin.host == host and admin.token is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.1.2.3", "admin.example.com"])
def test_elsewhere_a_token_is_required(host: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"admin": {"host": host}})
    assert exc.value.key == "admin.token"
    assert host in str(exc.value)
    token = "t" * 16
    assert from_mapping({"admin": {"host": host, "token": token}}).admin.token == token


def test_no_listener_needs_no_token() -> None:
    assert from_mapping({"admin": {"host": "0.0.0.0", "port": None}}).admin.port is None


@pytest.mark.parametrize(("token", "problem"), [("short", "at least 16"), (123, "string")])
def test_a_bad_token_is_named(token: object, problem: str) -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"admin": {"token": token}})
    assert exc.value.key == "admin.token" and problem in str(exc.value)


def test_the_token_is_never_in_the_config_repr() -> None:
    config = from_mapping({"admin": {"token": "secret-admin-token-123"}})
    assert "secret-admin-token-123" not in repr(config)


def test_unknown_admin_key_is_named() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping({"admin": {"metrics": False}})
    assert exc.value.key == "admin.metrics"


def test_is_loopback() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.com")
