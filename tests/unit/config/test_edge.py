"""sidecar.config.edge: the cors and upstream sections, each bad value named by its key."""

from __future__ import annotations

import pytest

from sidecar.config.edge import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_UPSTREAM_TIMEOUT,
    UpstreamConfig,
    parse_upstream,
)
from sidecar.config.model import ConfigError, from_mapping
from sidecar.config.origins import LOCAL_ORIGINS


def error_for(raw: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    return info.value


# cors ---------------------------------------------------------------------------------------


def test_cors_defaults_allow_localhost_without_credentials() -> None:
    config = from_mapping({})
    assert config.allowed_origins == LOCAL_ORIGINS
    assert config.cors_allow_credentials is False


def test_cors_credentials_can_be_turned_on() -> None:
    config = from_mapping(
        {"cors": {"allowed_origins": ["https://app.example.com"], "allow_credentials": True}}
    )
    assert config.cors_allow_credentials is True


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"cors": {"allow_credentials": "yes"}}, "cors.allow_credentials"),
        ({"cors": {"allowed_origins": ["*"], "allow_credentials": True}}, "cors.allow_credentials"),
        ({"cors": {"allowed_origins": ["https://*.*.example.com"]}}, "cors.allowed_origins[0]"),
    ],
)
def test_bad_cors_names_its_key(raw: dict[str, object], key: str) -> None:
    assert error_for(raw).key == key


# upstream -----------------------------------------------------------------------------------


def test_no_upstream_by_default() -> None:
    assert from_mapping({}).upstream is None
    assert from_mapping({"upstream": None}).upstream is None


@pytest.mark.parametrize(
    ("url", "host", "port", "origin"),
    [
        ("http://127.0.0.1:3000", "127.0.0.1", 3000, "http://127.0.0.1:3000"),
        ("http://localhost:3000/", "localhost", 3000, "http://localhost:3000"),
        ("http://app.internal", "app.internal", 80, "http://app.internal:80"),
        ("http://[::1]:9292", "::1", 9292, "http://[::1]:9292"),
        ("HTTP://127.0.0.1:3000", "127.0.0.1", 3000, "http://127.0.0.1:3000"),
    ],
)
def test_tcp_upstream(url: str, host: str, port: int, origin: str) -> None:
    upstream = from_mapping({"upstream": url}).upstream
    assert upstream == UpstreamConfig(url=url, host=host, port=port)
    assert upstream.origin == origin
    assert upstream.timeout == DEFAULT_UPSTREAM_TIMEOUT
    assert upstream.connect_timeout == DEFAULT_CONNECT_TIMEOUT


@pytest.mark.parametrize(
    ("url", "path"),
    [
        ("unix:/run/app/puma.sock", "/run/app/puma.sock"),
        ("unix:///run/app/puma.sock", "/run/app/puma.sock"),  # Puma's form
        ("unix://tmp/puma.sock", "tmp/puma.sock"),  # Puma's relative form
        ("unix:tmp/unicorn.sock", "tmp/unicorn.sock"),
    ],
)
def test_unix_upstream(url: str, path: str) -> None:
    upstream = parse_upstream(url)
    assert upstream is not None
    assert upstream.socket == path
    assert upstream.host is None
    assert upstream.origin == "http://localhost"


def test_a_missing_socket_file_is_fine_at_start(tmp_path: object) -> None:
    # The app may start after the sidecar: requests get 502 until the socket is there.
    upstream = from_mapping({"upstream": "unix:/nonexistent/dir/puma.sock"}).upstream
    assert upstream is not None
    assert upstream.socket == "/nonexistent/dir/puma.sock"


def test_upstream_as_a_mapping() -> None:
    upstream = from_mapping(
        {"upstream": {"url": "unix:/run/puma.sock", "timeout": 5, "connect_timeout": 0.5}}
    ).upstream
    assert upstream == UpstreamConfig(
        url="unix:/run/puma.sock", socket="/run/puma.sock", timeout=5.0, connect_timeout=0.5
    )


@pytest.mark.parametrize(
    ("raw", "key", "words"),
    [
        ("ftp://localhost:3000", "upstream", "http://host:port or unix:"),
        ("localhost:3000", "upstream", "http://host:port or unix:"),
        ("https://localhost:3000", "upstream", "https is not supported"),
        ("http://localhost:99999", "upstream", "bad port"),
        ("http://localhost:3000/app", "upstream", "no path"),
        ("http://localhost:3000/?x=1", "upstream", "no path"),
        ("http://user:pw@localhost:3000", "upstream", "credentials"),
        ("http://:3000", "upstream", "http://host:port"),
        ("unix:", "upstream", "no socket path"),
        ("unix://", "upstream", "no socket path"),
        ("unix:/" + "x" * 120, "upstream", "longer than 107 bytes"),
        ("", "upstream", "http://host:port"),
        (3000, "upstream", "http://host:port"),
        (["http://localhost:3000"], "upstream", "null, a URL"),
        ({"timeout": 5}, "upstream.url", "is required"),
        ({"url": "ftp://x"}, "upstream.url", "http://host:port"),
        ({"url": "http://localhost:3000", "timeout": 0}, "upstream.timeout", "from"),
        ({"url": "http://localhost:3000", "timeout": "1m"}, "upstream.timeout", "from"),
        ({"url": "http://localhost:3000", "connect_timeout": -1}, "upstream.connect_timeout", ""),
        ({"url": "http://localhost:3000", "retries": 3}, "upstream.retries", "unknown key"),
    ],
)
def test_bad_upstream_names_its_key(raw: object, key: str, words: str) -> None:
    error = error_for({"upstream": raw})
    assert error.key == key
    assert words in str(error)
    assert "\n" not in str(error)


def test_credentials_in_a_bad_url_are_not_echoed() -> None:
    error = error_for({"upstream": "http://user:hunter2@localhost:3000/x"})
    assert "hunter2" not in str(error)


@pytest.mark.parametrize(
    ("listen", "upstream"),
    [
        ({"host": "0.0.0.0", "port": 8443}, "http://127.0.0.1:8443"),
        ({"host": "0.0.0.0", "port": 8443}, "http://localhost:8443"),
        ({"host": "127.0.0.1", "port": 8443}, "http://127.0.0.1:8443"),
        ({"host": "10.0.0.5", "port": 8443}, "http://10.0.0.5:8443"),
    ],
)
def test_an_upstream_that_is_the_sidecar_itself_is_refused(
    listen: dict[str, object], upstream: str
) -> None:
    error = error_for({"listen": listen, "upstream": upstream})
    assert error.key == "upstream"
    assert "own listen port" in str(error)


def test_the_publish_socket_is_not_an_upstream() -> None:
    error = error_for({"publish": {"socket": "./s.sock"}, "upstream": "unix:s.sock"})
    assert error.key == "upstream"


def test_another_port_or_address_is_fine() -> None:
    assert from_mapping({"upstream": "http://127.0.0.1:3000"}).upstream is not None
    config = from_mapping({"listen": {"host": "10.0.0.5"}, "upstream": "http://127.0.0.1:8443"})
    assert config.upstream is not None


def test_credentials_in_another_scheme_are_not_echoed() -> None:
    error = error_for({"upstream": "ftp://user:hunter2@localhost:3000"})
    assert "hunter2" not in str(error)
