"""sidecar.config.origins: the Origin allow-list for WebSockets and browser API calls."""

from __future__ import annotations

import pytest

from sidecar.config.origins import LOCAL_ORIGINS, OriginPattern, OriginPolicy, parse_origin_pattern


def allows(entries: list[str], origin: str | None) -> bool:
    return OriginPolicy(entries).allows(origin)


# Exact origins ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    ["https://app.example.com", "https://app.example.com:443", "HTTPS://App.Example.COM"],
)
def test_exact_origin_with_default_port(origin: str) -> None:
    assert allows(["https://app.example.com"], origin)


def test_exact_pattern_that_spells_the_default_port() -> None:
    assert parse_origin_pattern("https://app.example.com:443") == OriginPattern(
        "https", "app.example.com", 443
    )
    assert allows(["https://app.example.com:443"], "https://app.example.com")


@pytest.mark.parametrize(
    "origin",
    [
        "http://app.example.com",  # other scheme
        "https://app.example.com:8443",  # other port
        "https://example.com",
        "https://other.example.com",
        "https://app.example.com.evil.com",
        "https://evilapp.example.com",
    ],
)
def test_exact_origin_refuses_everything_else(origin: str) -> None:
    assert not allows(["https://app.example.com"], origin)


def test_exact_origin_with_a_non_default_port() -> None:
    policy = OriginPolicy(["http://app.example.com:8080"])
    assert policy.allows("http://app.example.com:8080")
    assert not policy.allows("http://app.example.com")
    assert not policy.allows("http://app.example.com:8081")


def test_http_default_port_is_80() -> None:
    assert allows(["http://app.example.com"], "http://app.example.com:80")
    assert not allows(["http://app.example.com"], "http://app.example.com:443")


# Wildcards ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "origin",
    [
        "https://a.example.com",
        "http://a.example.com",
        "https://deep.sub.example.com",
        "https://a.example.com:8443",
    ],
)
def test_star_dot_matches_subdomains_with_either_scheme(origin: str) -> None:
    assert allows(["*.example.com"], origin)


@pytest.mark.parametrize(
    "origin",
    [
        "https://example.com",  # the bare domain
        "https://evilexample.com",
        "https://a.example.com.evil.net",
        "https://example.com.a.net",
        "ftp://a.example.com",
    ],
)
def test_star_dot_refuses_the_bare_domain_and_lookalikes(origin: str) -> None:
    assert not allows(["*.example.com"], origin)


def test_scheme_restricted_wildcard() -> None:
    policy = OriginPolicy(["https://*.example.com"])
    assert policy.allows("https://a.example.com")
    assert not policy.allows("http://a.example.com")
    assert not policy.allows("https://a.example.com:8443")  # default port only
    assert not policy.allows("https://example.com")


def test_any_port_pattern() -> None:
    policy = OriginPolicy(["http://localhost:*"])
    assert policy.allows("http://localhost")
    assert policy.allows("http://localhost:3000")
    assert policy.allows("http://localhost:65535")
    assert not policy.allows("https://localhost:3000")
    assert not policy.allows("http://localhost.evil.com:3000")
    assert not policy.allows("http://127.0.0.1:3000")


def test_star_allows_anyone() -> None:
    policy = OriginPolicy(["*"])
    assert policy.allow_all
    assert policy.allows("https://anything.test")
    assert policy.allows("null")


# Odd origins --------------------------------------------------------------------------------


@pytest.mark.parametrize("entries", [[], ["https://app.example.com"], ["*"]])
def test_no_origin_header_is_allowed(entries: list[str]) -> None:
    assert allows(entries, None)


@pytest.mark.parametrize(
    "origin",
    [
        "",
        "null",  # sandboxed iframes and file: pages
        "garbage",
        "app.example.com",
        "ftp://app.example.com",
        "https://",
        "https://app.example.com:notaport",
        "https://app.example.com:99999",
    ],
)
def test_garbage_origin_is_refused(origin: str) -> None:
    assert not allows(["*.example.com", "https://app.example.com", "http://localhost:*"], origin)


def test_empty_allow_list_refuses_every_browser() -> None:
    assert not allows([], "https://app.example.com")


def test_ipv6_loopback() -> None:
    policy = OriginPolicy(list(LOCAL_ORIGINS))
    assert policy.allows("http://[::1]:5173")
    assert policy.allows("https://[::1]")
    assert not policy.allows("http://[::2]:5173")
    assert not policy.allows("http://[::1.evil.com]:5173")


def test_ipv6_exact_pattern() -> None:
    assert parse_origin_pattern("http://[::1]:8080") == OriginPattern("http", "[::1]", 8080)
    assert parse_origin_pattern("http://[::1]") == OriginPattern("http", "[::1]", 80)
    policy = OriginPolicy(["http://[::1]:8080"])
    assert policy.allows("http://[::1]:8080")
    assert not policy.allows("http://[::1]")


def test_local_defaults_allow_this_machine_only() -> None:
    policy = OriginPolicy(list(LOCAL_ORIGINS))
    assert policy.allows("http://localhost:8000")
    assert policy.allows("https://127.0.0.1:4443")
    assert not policy.allows("https://app.example.com")


# Parsing the allow-list ---------------------------------------------------------------------


def test_parse_patterns() -> None:
    assert parse_origin_pattern("*.Example.com") == OriginPattern(None, "*.example.com", None)
    assert parse_origin_pattern("https://*.example.com") == OriginPattern(
        "https", "*.example.com", 443
    )
    assert parse_origin_pattern("http://localhost:*") == OriginPattern("http", "localhost", None)
    assert parse_origin_pattern("  https://a.example.com  ") == OriginPattern(
        "https", "a.example.com", 443
    )


@pytest.mark.parametrize(
    ("entry", "says"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("example.com", "needs a scheme"),
        ("localhost:3000", "needs a scheme"),
        ("ftp://example.com", "scheme must be http or https"),
        ("wss://example.com", "scheme must be http or https"),
        ("https://example.com/path", "no path"),
        ("https://example.com/", "no path"),
        ("https://example.com:abc", "bad port"),
        ("https://example.com:70000", "bad port"),
        ("https://", "no host"),
        ("http://:*", "no host"),
    ],
)
def test_bad_patterns_raise_value_error(entry: str, says: str) -> None:
    with pytest.raises(ValueError, match=says):
        parse_origin_pattern(entry)


def test_policy_with_a_bad_pattern_raises() -> None:
    with pytest.raises(ValueError):
        OriginPolicy(["https://ok.example.com", "nonsense"])


@pytest.mark.parametrize(
    "entry", ["*.example.com:8080", "https://*example.com", "https://a.*.example.com"]
)
def test_patterns_that_can_never_match_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_origin_pattern(entry)


def test_update_swaps_the_list_in_place_or_not_at_all() -> None:
    policy = OriginPolicy(["https://app.example.com"])
    policy.update(["*.example.org"])
    assert policy.allows("https://a.example.org")
    assert not policy.allows("https://app.example.com")
    with pytest.raises(ValueError):
        policy.update(["https://ok.example.com", "ftp://bad"])
    assert policy.allows("https://a.example.org")  # the bad list changed nothing
    policy.update(["*"])
    assert policy.allows("https://anyone.test")
