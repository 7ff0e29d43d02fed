"""sidecar.edge.redirect and the plain-HTTP port: redirects only to the sidecar's own names."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from sidecar.config.model import from_mapping
from sidecar.edge.redirect import RedirectNames
from sidecar.http_glue import host_name
from sidecar.server.prepare import redirect_application, redirect_names
from sidecar.tls.contexts import ensure_self_signed


@pytest.mark.parametrize(
    ("host", "name"),
    [
        ("localhost:9601", "localhost"),
        ("LOCALHOST", "localhost"),
        ("127.0.0.1:9601", "127.0.0.1"),
        ("[::1]:9601", "[::1]"),
        ("[::1]", "[::1]"),
        ("localhost.", "localhost"),
        ("evil.test:9601", "evil.test"),
    ],
)
def test_host_name(host: str, name: str) -> None:
    assert host_name(host) == name


NAMES = RedirectNames(["example.com", "*.example.com", "2001:db8::1"], 8443)


@pytest.mark.parametrize(
    ("host", "location"),
    [
        ("example.com", "https://example.com:8443/p?q=1"),
        ("Example.COM:8080", "https://example.com:8443/p?q=1"),
        ("www.example.com", "https://www.example.com:8443/p?q=1"),
        ("localhost:8080", "https://localhost:8443/p?q=1"),
        ("127.0.0.1", "https://127.0.0.1:8443/p?q=1"),
        ("[2001:db8::1]:8080", "https://[2001:db8::1]:8443/p?q=1"),
    ],
)
def test_our_names_are_redirected(host: str, location: str) -> None:
    assert NAMES.location(host, "/p?q=1") == location


@pytest.mark.parametrize(
    "host",
    [
        None,
        "",
        "evil.test",
        "example.com.evil.test",
        "a.b.example.com",  # a wildcard stands for one label
        "evil.test/x.example.com",
        "x@evil.example.com",
        "evil.test#.example.com",
        "exa mple.com",
    ],
)
def test_other_names_are_not(host: str | None) -> None:
    assert NAMES.location(host, "/") is None


def test_port_443_is_left_out() -> None:
    assert (
        RedirectNames(["example.com"], 443).location("example.com", "/") == "https://example.com/"
    )


async def test_an_unknown_host_is_421_json_and_not_written_back() -> None:
    app = redirect_application(8443, None, ["example.com"])
    async with TestClient(TestServer(app)) as client:
        response = await client.get("/x", headers={"Host": "evil.test"}, allow_redirects=False)
        assert response.status == 421
        assert response.content_type == "application/json"
        body = await response.text()
        assert "evil" not in body and "Location" not in response.headers
        response = await client.get("/x", headers={"Host": "example.com"}, allow_redirects=False)
        assert response.status == 308
        assert response.headers["Location"] == "https://example.com:8443/x"


def test_the_names_are_acmes_domains_or_the_certificates(tmp_path: Path) -> None:
    acme = from_mapping(
        {"tls": {"mode": "acme", "acme": {"domains": ["sidecar.test"]}}, "http": {"port": 8080}}
    )
    assert redirect_names(acme) == ("sidecar.test",)
    pair = ensure_self_signed(tmp_path)
    files = from_mapping({"tls": {"mode": "files", "cert": str(pair.cert), "key": str(pair.key)}})
    assert set(redirect_names(files)) >= {"localhost", "127.0.0.1"}
