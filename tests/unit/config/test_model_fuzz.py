"""Fuzzing sidecar.config.model: any YAML mapping gives a Config or a ConfigError naming a key,
never another exception; the same mapping read from YAML text gives the same outcome.

The keys each section knows are asked of the loader itself (its "unknown key" error lists
them), so keys added later are fuzzed too without this file changing.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from hypothesis import given
from hypothesis import strategies as st

import tests.support.fuzz  # noqa: F401  (the hypothesis profile)
from sidecar.config.model import Config, ConfigError, from_mapping, parse

PROBE = "zz_not_a_key"


def known_keys(*where: str | int) -> list[str]:
    """The keys the loader accepts at `where` (("limits",), ("apps", 0), ...)."""
    raw: Any = {PROBE: 1}
    for step in reversed(where):
        raw = [raw] if isinstance(step, int) else {step: raw}
    if where[:2] == ("apps", 0):
        raw["apps"][0].update(id=1, key="k", secret="secret-123")
    try:
        from_mapping(raw)
    except ConfigError as exc:
        found = re.search(r"known here: (.*)\)", str(exc))
        if found:
            return found.group(1).split(", ")
    return []


TOP = known_keys()
SECTIONS = {name: known_keys(name) for name in TOP}
SECTIONS["apps"] = known_keys("apps", 0)
NESTED = {("tls", name): known_keys("tls", name) for name in ("acme", "hsts", "certificates")}

# Values that mean something somewhere in the file, and values that mean nothing anywhere.
meaningful = st.sampled_from(
    [
        "auto", "memory", "redis", "self-signed", "files", "acme", "off", "info", "debug",
        "8MiB", "512KiB", "10 MB", "0660", "0999", "127.0.0.1", "0.0.0.0", "::1", "localhost",
        "10.0.0.0/8", "not-an-ip", "http://127.0.0.1:3000", "https://example.com/hook",
        "unix:/tmp/app.sock", "ftp://x", "*", "https://*.example.com", "example.com",
        "*.example.com", "a@b.c", "channel_occupied", "member_added", "./sidecar.sock",
        "/nonexistent/cert.pem", "0123456789abcdef0123", "", " ", "\n", "1e400",
    ]
)  # fmt: skip
scalar = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.integers(-2, 70_000)
    | st.floats()
    | meaningful
    | st.text(max_size=20)
)
value = st.recursive(
    scalar,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.text(max_size=8) | meaningful, inner, max_size=3)
    ),
    max_leaves=8,
)


def section(name: str) -> st.SearchStrategy[Any]:
    keys = SECTIONS.get(name, [])
    if not keys:
        return value
    fields = {}
    for key in keys:
        nested = NESTED.get((name, key))
        if nested:
            fields[key] = st.fixed_dictionaries({}, optional=dict.fromkeys(nested, value)) | value
        else:
            fields[key] = value
    mapping = st.fixed_dictionaries({}, optional=fields)
    if name == "apps":
        return st.lists(mapping, max_size=3) | value
    return mapping | value


top_level = st.fixed_dictionaries(
    {}, optional={name: section(name) for name in TOP} | {PROBE: value}
)


def outcome(load: Any) -> Config | str:
    """The Config, or the key the ConfigError names."""
    try:
        config = load()
    except ConfigError as exc:
        # The key is empty only where the file's own key is (`"": 1` at the top level).
        assert isinstance(exc.key, str)
        assert exc.problem
        return exc.key
    assert isinstance(config, Config)
    return config


def test_the_probe_finds_the_sections() -> None:
    """The strategies below are only as good as the keys found here."""
    assert {"listen", "tls", "limits", "apps", "webhooks"} <= set(TOP)
    assert "max_connections" in SECTIONS["limits"]
    assert "secret" in SECTIONS["apps"]


@given(top_level)
def test_any_mapping_gives_a_config_or_an_error_naming_a_key(raw: dict[str, Any]) -> None:
    result = outcome(lambda: from_mapping(raw, source="fuzz.yaml"))
    if isinstance(result, str):
        # The key named is one of the file's: a top-level key, or under one.
        top = re.split(r"[.\[]", result, maxsplit=1)[0]
        assert top in raw or top in TOP or result.startswith("fuzz.yaml"), result


@given(top_level)
def test_the_same_mapping_read_from_yaml_text_gives_the_same_outcome(raw: dict[str, Any]) -> None:
    try:
        text = yaml.safe_dump(raw)
    except yaml.YAMLError:
        return
    direct = outcome(lambda: from_mapping(yaml.safe_load(text), source="fuzz.yaml"))
    assert outcome(lambda: parse(text, "fuzz.yaml")) == direct


@given(value)
def test_any_document_gives_a_config_or_an_error(raw: Any) -> None:
    outcome(lambda: from_mapping(raw))


@given(st.text(max_size=200))
def test_any_text_gives_a_config_or_an_error(text: str) -> None:
    outcome(lambda: parse(text, "fuzz.yaml"))
