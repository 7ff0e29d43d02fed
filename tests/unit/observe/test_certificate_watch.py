"""sidecar.observe.certificate_watch: the certificate in use, read again when its file changes."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from sidecar.observe.certificate_watch import CertificateWatch
from sidecar.tls.contexts import ensure_self_signed


def test_tls_off_has_no_certificate() -> None:
    assert CertificateWatch(None).current() is None


def test_a_valid_certificate(tmp_path: Path) -> None:
    info = CertificateWatch(ensure_self_signed(tmp_path).cert).current()
    assert info is not None and info.valid()
    remaining = info.expires_in()
    assert remaining is not None and remaining > 300 * 86400
    assert "localhost" in info.subject
    assert info.as_dict()["valid"] is True


def test_a_replaced_file_is_read_again(tmp_path: Path) -> None:
    first = ensure_self_signed(tmp_path / "a").cert
    second = ensure_self_signed(tmp_path / "b").cert
    path = tmp_path / "in-use.crt"
    shutil.copy(first, path)
    watch = CertificateWatch(path)
    before = watch.current()
    assert watch.current() is before  # unchanged: not read again
    shutil.copy(second, path)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    after = watch.current()
    assert before is not None and after is not None
    assert after is not before  # changed: read again


def test_missing_or_garbled_files_say_why(tmp_path: Path) -> None:
    missing = CertificateWatch(tmp_path / "nope.crt").current()
    assert missing is not None and not missing.valid() and missing.error
    garbled = tmp_path / "bad.crt"
    garbled.write_text("not a certificate")
    info = CertificateWatch(garbled).current()
    assert info is not None and not info.valid() and "unreadable" in info.error
    assert info.as_dict()["expires_in_s"] is None
