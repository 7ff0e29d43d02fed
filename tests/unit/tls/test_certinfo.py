"""sidecar.tls.certinfo: names, issuer, renewal time and key checks, without I/O."""

from __future__ import annotations

import datetime

import pytest

from sidecar.tls.certinfo import CertificateError, certificate_info, check_pair, name_matches
from tests.support.certs import make_certificate

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


def test_names_issuer_and_dates_come_from_the_leaf() -> None:
    made = make_certificate("example.com", "www.example.com", "127.0.0.1", issuer="Test CA R1")
    info = certificate_info(made.cert_pem)
    assert info.names == ("example.com", "www.example.com", "127.0.0.1")
    assert info.issuer == "Test CA R1"
    assert info.serial == made.serial
    assert info.lifetime == datetime.timedelta(days=30)
    assert len(info.fingerprint) == 64


def test_the_first_certificate_of_a_chain_is_the_one_described() -> None:
    leaf, other = make_certificate("leaf.test"), make_certificate("intermediate.test")
    assert certificate_info(leaf.cert_pem + other.cert_pem).names == ("leaf.test",)


def test_garbage_is_a_certificate_error_naming_the_source() -> None:
    with pytest.raises(CertificateError, match=r"^/etc/x.pem: not a PEM certificate"):
        certificate_info(b"hello", "/etc/x.pem")


@pytest.mark.parametrize(
    ("days", "renew_after_days"),
    [(90, 60), (30, 20), (9, 4.5), (1, 0.5)],  # two thirds; half under 10 days
)
def test_default_renewal_time_follows_certbot(days: float, renew_after_days: float) -> None:
    info = certificate_info(make_certificate("a.test", days=days, not_before=START).cert_pem)
    assert info.renewal_time() == START + datetime.timedelta(days=renew_after_days)


def test_a_configured_fraction_wins_for_any_lifetime() -> None:
    info = certificate_info(make_certificate("a.test", days=8, not_before=START).cert_pem)
    assert info.renewal_time(0.75) == START + datetime.timedelta(days=6)


def test_expired() -> None:
    info = certificate_info(make_certificate("a.test", days=1, not_before=START).cert_pem)
    assert not info.expired(START + datetime.timedelta(hours=23))
    assert info.expired(START + datetime.timedelta(days=1))


@pytest.mark.parametrize(
    ("pattern", "hostname", "expected"),
    [
        ("example.com", "example.com", True),
        ("example.com", "EXAMPLE.com.", True),
        ("example.com", "www.example.com", False),
        ("*.example.com", "www.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "a.b.example.com", False),
        ("*.example.com", ".example.com", False),
    ],
)
def test_name_matches(pattern: str, hostname: str, expected: bool) -> None:
    assert name_matches(pattern, hostname) is expected


def test_covers_uses_every_name() -> None:
    info = certificate_info(make_certificate("a.test", "*.b.test").cert_pem)
    assert info.covers("a.test") and info.covers("x.b.test")
    assert not info.covers("c.test")


def test_check_pair_accepts_the_matching_key() -> None:
    made = make_certificate("a.test")
    assert check_pair(made.cert_pem, made.key_pem, "a.crt", "a.key").names == ("a.test",)


def test_check_pair_names_the_key_that_does_not_match() -> None:
    made, other = make_certificate("a.test"), make_certificate("b.test")
    with pytest.raises(CertificateError, match=r"^b.key is not the key of a.crt$"):
        check_pair(made.cert_pem, other.key_pem, "a.crt", "b.key")


def test_check_pair_refuses_a_key_that_is_not_pem() -> None:
    made = make_certificate("a.test")
    with pytest.raises(CertificateError, match=r"a\.key: not a PEM private key"):
        check_pair(made.cert_pem, b"-----BEGIN PRIVATE KEY-----\nxx\n", "a.crt", "a.key")
