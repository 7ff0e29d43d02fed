"""sidecar/config/secrets.py: outside development, an app secret is long and not an example."""

from __future__ import annotations

import pytest

from sidecar.config.model import ConfigError, from_mapping
from sidecar.config.secrets import MIN_SECRET, is_placeholder

GOOD = "3f9c2a7d1e8b4c6a0f5d2e9b7a1c3e8f4d6b2a90"
PRODUCTION = {"tls": {"mode": "off"}}


def with_secret(secret: str, **raw: object) -> dict:
    return {**raw, "apps": [{"id": "1", "key": "k", "secret": secret}]}


@pytest.mark.parametrize(
    "secret",
    [
        "replace-with-40-random-hex-characters",  # configs/production.yaml's
        "change-me-please",  # README's
        "change-me-now",
        "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "CHANGE-ME-TO-SOMETHING-LONG-AND-RANDOM-PLEASE",
    ],
)
def test_a_placeholder_is_refused_outside_development(secret: str) -> None:
    assert is_placeholder(secret)
    for tls in ({"mode": "off"}, {"mode": "files", "cert": __file__, "key": __file__}):
        with pytest.raises(ConfigError) as exc:
            from_mapping(with_secret(secret, tls=tls))
        assert exc.value.key == "apps[0].secret"
        assert secret not in str(exc.value)  # never echoed to a log


def test_the_shortest_examples_are_placeholders_too() -> None:
    assert is_placeholder("secret") and is_placeholder("...") and is_placeholder("change-me")


def test_a_short_secret_is_refused_outside_development() -> None:
    with pytest.raises(ConfigError) as exc:
        from_mapping(with_secret("a" * 8 + "b" * (MIN_SECRET - 9), **PRODUCTION))
    assert exc.value.key == "apps[0].secret"
    assert f"at least {MIN_SECRET} characters" in str(exc.value)


def test_the_second_app_is_named() -> None:
    raw = with_secret(GOOD, **PRODUCTION)
    raw["apps"].append({"id": "2", "key": "k2", "secret": "short-secret"})
    with pytest.raises(ConfigError) as exc:
        from_mapping(raw)
    assert exc.value.key == "apps[1].secret"


def test_a_long_random_secret_is_accepted_anywhere() -> None:
    assert from_mapping(with_secret(GOOD, **PRODUCTION)).apps[0].secret == GOOD  # type: ignore[index]
    assert not is_placeholder(GOOD)


def test_development_takes_short_secrets() -> None:
    """tls.mode self-signed (the default): the certificate for localhost, a development box."""
    assert from_mapping(with_secret("change-me-please")).apps[0].secret == "change-me-please"  # type: ignore[index]
