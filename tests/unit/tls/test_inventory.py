"""sidecar.tls.inventory: what `sidecar certs` says for each mode, from the files alone."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from sidecar.config.model import CertFiles, from_mapping
from sidecar.tls.inventory import report
from tests.support.certs import make_certificate

NOW = datetime.datetime.now(datetime.UTC)


def test_tls_off_has_nothing_to_show() -> None:
    text, ok = report(from_mapping({"tls": {"mode": "off"}}))
    assert ok and "no certificates" in text


def test_files_mode_lists_every_certificate_and_a_broken_one(tmp_path: Path) -> None:
    good = make_certificate("a.test", "www.a.test", issuer="Issuer R1", not_before=NOW)
    cert, key = good.write(tmp_path, "a")
    other_cert, _ = make_certificate("b.test").write(tmp_path, "b")
    config = from_mapping(
        {
            "tls": {
                "mode": "files",
                "cert": str(cert),
                "key": str(key),
                "certificates": [{"cert": str(other_cert), "key": str(key)}],
            }
        }
    )
    text, ok = report(config, NOW)
    assert not ok
    assert f"{cert}\n  names     a.test, www.a.test\n  issuer    Issuer R1\n" in text
    assert "expires   " in text and "(in 30 days)" in text
    assert "not by sidecar (tls.mode files)" in text
    assert f"problem   {key} is not the key of {other_cert}" in text


def test_acme_before_the_first_order(tmp_path: Path) -> None:
    config = from_mapping(
        {"tls": {"mode": "acme", "dir": str(tmp_path), "acme": {"domains": ["a.test"]}}}
    )
    text, ok = report(config, NOW)
    assert not ok
    assert "problem   no certificate yet" in text
    assert "sidecar run orders one from https://acme-v02.api.letsencrypt.org/directory" in text


def test_acme_with_a_certificate_shows_the_next_renewal(tmp_path: Path) -> None:
    raw = {"mode": "acme", "dir": str(tmp_path), "acme": {"domains": ["a.test"]}}
    config = from_mapping({"tls": raw})
    made = make_certificate("a.test", days=90, not_before=NOW, issuer="Fake R3")
    made.write(tmp_path / "acme", "a.test")
    record = {"directory": config.tls.acme.directory}  # type: ignore[union-attr]
    (tmp_path / "acme" / "a.test.json").write_text(json.dumps(record))
    text, ok = report(config, NOW)
    assert ok, text
    renewal = NOW + datetime.timedelta(days=60)
    assert f"renewal   {renewal:%Y-%m-%d %H:%M:%S} UTC (in 60 days), by sidecar over ACME" in text


def test_self_signed_not_made_yet_is_not_made_by_looking(tmp_path: Path) -> None:
    config = from_mapping({"tls": {"dir": str(tmp_path)}})
    text, ok = report(config, NOW)
    assert not ok and "sidecar run makes it" in text
    assert not (tmp_path / "localhost.crt").exists()
    assert CertFiles  # the entry type stays importable from sidecar.config.model
