"""sidecar.config.tls (and listen.trusted_proxies): every bad value names its key."""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from sidecar.config.model import ConfigError, from_mapping
from sidecar.config.tls import LETS_ENCRYPT, AcmeConfig, CertFiles, HstsConfig

EAB_KEY = "zWNDZM6eQGHWpSRTPal5eIUYFTu7EajVIoguysqZ9wG44nMEtx3MUAsUDkMTQ12W"


def acme(**fields: Any) -> dict[str, Any]:
    return {"tls": {"mode": "acme", "acme": {"domains": ["example.com"], **fields}}}


def error_key(raw: dict[str, Any]) -> str:
    with pytest.raises(ConfigError) as info:
        from_mapping(raw)
    assert "\n" not in str(info.value)
    return info.value.key


@pytest.fixture
def pem_files(tmp_path: Path) -> tuple[str, str]:
    cert, key = tmp_path / "a.crt", tmp_path / "a.key"
    cert.write_text("x")
    key.write_text("x")
    return str(cert), str(key)


def test_acme_defaults() -> None:
    tls = from_mapping(acme()).tls
    assert tls.acme == AcmeConfig(domains=("example.com",))
    assert tls.acme.directory == LETS_ENCRYPT
    assert tls.acme.renew_at is None  # 2/3, or 1/2 for short certificates
    assert tls.hsts is None
    assert tls.handshake_timeout == 10.0


def test_acme_full(tmp_path: Path) -> None:
    bundle = tmp_path / "ca.pem"
    bundle.write_text("x")
    acme_config = from_mapping(
        acme(
            directory="https://ca.internal/dir",
            email="ops@example.com",
            domains=["Example.com", "www.example.com", "example.com"],
            ca_bundle=str(bundle),
            eab={"kid": "kid-1", "hmac_key": EAB_KEY},
            renew_at=0.5,
            retry_min=1,
            retry_max=60,
        )
    ).tls.acme
    assert acme_config is not None
    assert acme_config.domains == ("example.com", "www.example.com")  # lower-cased, once each
    assert acme_config.eab is not None and acme_config.eab.kid == "kid-1"
    assert EAB_KEY not in repr(acme_config)  # a secret never reaches a log through repr
    assert (acme_config.renew_at, acme_config.retry_min, acme_config.retry_max) == (0.5, 1, 60)


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ({"tls": {"mode": "acme"}}, "tls.acme"),
        (acme(domains=[]), "tls.acme.domains"),
        (acme(domains="example.com"), "tls.acme.domains"),
        (acme(domains=["*.example.com"]), "tls.acme.domains[0]"),
        (acme(domains=["ok.com", "bad_name.com"]), "tls.acme.domains[1]"),
        (acme(domains=["-x.com"]), "tls.acme.domains[0]"),
        (acme(directory="http://ca/dir"), "tls.acme.directory"),
        (acme(email="not-an-email"), "tls.acme.email"),
        (acme(ca_bundle="/no/such/file.pem"), "tls.acme.ca_bundle"),
        (acme(eab={"kid": "k"}), "tls.acme.eab.hmac_key"),
        (acme(eab={"hmac_key": EAB_KEY}), "tls.acme.eab.kid"),
        (acme(eab={"kid": "k", "hmac_key": "not base64 !"}), "tls.acme.eab.hmac_key"),
        (acme(eab={"kid": "k", "hmac_key": EAB_KEY, "alg": "x"}), "tls.acme.eab.alg"),
        (acme(renew_at=1.5), "tls.acme.renew_at"),
        (acme(renew_at="2/3"), "tls.acme.renew_at"),
        (acme(retry_min=10, retry_max=5), "tls.acme.retry_max"),
        (acme(staging=True), "tls.acme.staging"),
        ({**acme(), "http": {"port": None}}, "http.port"),
        ({"tls": {"acme": {"domains": ["example.com"]}}}, "tls.acme"),  # mode not acme
        ({"tls": {"hsts": {"max_age": -1}}}, "tls.hsts.max_age"),
        ({"tls": {"hsts": {"preload": "yes"}}}, "tls.hsts.preload"),
        ({"tls": {"hsts": "on"}}, "tls.hsts"),
        ({"tls": {"handshake_timeout": 0}}, "tls.handshake_timeout"),
        ({"tls": {"handshake_timeout": "10s"}}, "tls.handshake_timeout"),
        ({"tls": {"reload_interval": 0}}, "tls.reload_interval"),
        ({"tls": {"mode": "files", "certificates": "a.pem"}}, "tls.certificates"),
        ({"listen": {"trusted_proxies": ["10.0.0.0/33"]}}, "listen.trusted_proxies[0]"),
        ({"listen": {"trusted_proxies": "10.0.0.1"}}, "listen.trusted_proxies"),
    ],
)
def test_bad_values_name_their_key(raw: dict[str, Any], key: str) -> None:
    assert error_key(raw) == key


def test_a_bad_hmac_key_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(acme(eab={"kid": "k", "hmac_key": "secret !!"}))
    assert "secret" not in str(info.value)


def test_files_with_sni_certificates(pem_files: tuple[str, str]) -> None:
    cert, key = pem_files
    raw = {"mode": "files", "cert": cert, "key": key, "certificates": [{"cert": cert, "key": key}]}
    tls = from_mapping({"tls": raw}).tls
    assert tls.files() == (CertFiles(cert, key), CertFiles(cert, key))


def test_files_with_only_a_certificates_list(pem_files: tuple[str, str]) -> None:
    cert, key = pem_files
    tls = from_mapping({"tls": {"mode": "files", "certificates": [{"cert": cert, "key": key}]}})
    assert tls.tls.files() == (CertFiles(cert, key),)


@pytest.mark.parametrize(
    ("make", "key"),
    [
        (lambda c, k: {"mode": "files", "certificates": [{"cert": c}]}, "tls.certificates[0].key"),
        (lambda c, k: {"mode": "files", "certificates": [{"key": k}]}, "tls.certificates[0].cert"),
        (lambda c, k: {"mode": "files", "cert": c}, "tls.key"),
        (lambda c, k: {"mode": "self-signed", "cert": c, "key": k}, "tls.cert"),
        (
            lambda c, k: {
                "mode": "acme",
                "certificates": [{"cert": c, "key": k}],
                "acme": {"domains": ["a.com"]},
            },
            "tls.certificates",
        ),
    ],
)
def test_certificate_files_in_the_wrong_place_name_their_key(
    pem_files: tuple[str, str], make: Callable[[str, str], dict[str, Any]], key: str
) -> None:
    assert error_key({"tls": make(*pem_files)}) == key


def test_hsts_forms() -> None:
    assert from_mapping({"tls": {"hsts": True}}).tls.hsts == HstsConfig()
    assert from_mapping({"tls": {"hsts": False}}).tls.hsts is None
    hsts = from_mapping({"tls": {"hsts": {"max_age": 60, "preload": True}}}).tls.hsts
    assert hsts is not None and hsts.header() == "max-age=60; preload"
    assert HstsConfig(include_subdomains=True).header() == "max-age=31536000; includeSubDomains"


def test_trusted_proxies_are_networks() -> None:
    listen = from_mapping({"listen": {"trusted_proxies": ["10.0.0.0/8", "::1", "192.0.2.7"]}})
    assert listen.listen.trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.0.2.7/32"),
    )


def test_tls_off_unquoted_in_yaml_is_off() -> None:
    assert from_mapping({"tls": {"mode": False}}).tls.mode == "off"
