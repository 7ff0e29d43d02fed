"""sidecar.tls.certificates: load, reload in place, keep serving on bad files, SNI."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
from cryptography import x509

from sidecar.config.tls import CertFiles
from sidecar.tls.certificates import CertificateManager
from sidecar.tls.certinfo import CertificateError
from tests.support.certs import Made, make_certificate


def served_serial(context: ssl.SSLContext, server_name: str | None = "a.test") -> int:
    """Handshake with `context` over a socketpair; the serial of the certificate it sent."""
    left, right = socket.socketpair()
    left.settimeout(5)
    right.settimeout(5)

    def serve() -> None:
        try:
            with context.wrap_socket(left, server_side=True) as tls:
                tls.recv(1)
        except (ssl.SSLError, OSError):
            pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    try:
        with client.wrap_socket(right, server_hostname=server_name) as tls:
            der = tls.getpeercert(binary_form=True)
            tls.sendall(b"x")
    finally:
        thread.join(5)
        left.close()
    assert der is not None
    return x509.load_der_x509_certificate(der).serial_number


def replace(made: Made, files: CertFiles) -> None:
    """Write a new pair over the files the way a renewal tool does, and make the change seen."""
    Path(files.cert).write_bytes(made.cert_pem)
    Path(files.key).write_bytes(made.key_pem)
    for path in (files.cert, files.key):  # a coarse mtime clock must still see the change
        st = os.stat(path)
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Made, CertFiles]:
    made = make_certificate("a.test")
    cert, key = made.write(tmp_path, "a")
    return made, CertFiles(str(cert), str(key))


def test_load_serves_the_certificate(pair: tuple[Made, CertFiles]) -> None:
    made, files = pair
    manager = CertificateManager([files])
    manager.load()
    assert served_serial(manager.context) == made.serial
    ((_, info),) = manager.certificates
    assert info is not None and info.names == ("a.test",)


def test_load_with_a_mismatched_key_says_which_files(tmp_path: Path) -> None:
    cert, _ = make_certificate("a.test").write(tmp_path, "a")
    _, other_key = make_certificate("b.test").write(tmp_path, "b")
    manager = CertificateManager([CertFiles(str(cert), str(other_key))])
    with pytest.raises(CertificateError, match=r"b.key is not the key of .*a.crt"):
        manager.load()


def test_load_with_a_missing_file_says_which(tmp_path: Path) -> None:
    manager = CertificateManager([CertFiles(str(tmp_path / "no.crt"), str(tmp_path / "no.key"))])
    with pytest.raises(CertificateError, match=r"cannot read .*no.crt"):
        manager.load()


def test_reload_swaps_in_place_only_when_files_changed(pair: tuple[Made, CertFiles]) -> None:
    _, files = pair
    manager = CertificateManager([files])
    manager.load()
    context = manager.context
    assert manager.reload() == 0
    newer = make_certificate("a.test")
    replace(newer, files)
    assert manager.reload() == 1
    assert manager.context is context  # the listener's object, updated in place
    assert served_serial(context) == newer.serial


def test_an_established_connection_keeps_its_certificate(pair: tuple[Made, CertFiles]) -> None:
    made, files = pair
    manager = CertificateManager([files])
    manager.load()
    left, right = socket.socketpair()
    server = manager.context.wrap_socket(left, server_side=True, do_handshake_on_connect=False)
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    client = client_ctx.wrap_socket(right, server_hostname="a.test", do_handshake_on_connect=False)
    thread = threading.Thread(target=server.do_handshake)
    thread.start()
    client.do_handshake()
    thread.join(5)
    replace(make_certificate("a.test"), files)
    assert manager.reload() == 1
    client.sendall(b"still here")
    assert server.recv(10) == b"still here"
    server.sendall(b"and here")
    assert client.recv(8) == b"and here"
    der = client.getpeercert(binary_form=True)
    assert der is not None and x509.load_der_x509_certificate(der).serial_number == made.serial
    client.close()
    server.close()


def test_a_half_written_pair_keeps_the_current_certificate(
    pair: tuple[Made, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    made, files = pair
    manager = CertificateManager([files])
    manager.load()
    newer = make_certificate("a.test")
    replace(Made(newer.cert_pem, made.key_pem, newer.serial), files)  # new cert, old key
    with caplog.at_level(logging.INFO, "sidecar.tls"):
        assert manager.reload() == 0
        assert served_serial(manager.context) == made.serial
        assert [r.levelname for r in caplog.records] == ["INFO"]  # may be mid-write: no alarm
        assert manager.reload() == 0
        assert [r.levelname for r in caplog.records] == ["INFO", "ERROR"]  # it persists
        assert "is not the key of" in caplog.records[-1].reason  # type: ignore[attr-defined]
        assert manager.reload() == 0
        assert len(caplog.records) == 2  # said once
    Path(files.key).write_bytes(newer.key_pem)  # the key catches up
    assert manager.reload() == 1
    assert served_serial(manager.context) == newer.serial


def test_a_forced_reload_reports_a_bad_pair_at_once(
    pair: tuple[Made, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    _, files = pair
    manager = CertificateManager([files])
    manager.load()
    Path(files.cert).write_bytes(b"garbage")
    with caplog.at_level(logging.INFO, "sidecar.tls"):
        assert manager.reload(force=True) == 0
    assert caplog.records[-1].levelname == "ERROR"
    assert "not a PEM certificate" in caplog.records[-1].reason  # type: ignore[attr-defined]


def test_a_removed_file_is_a_warning_and_the_certificate_stays(
    pair: tuple[Made, CertFiles], caplog: pytest.LogCaptureFixture
) -> None:
    made, files = pair
    manager = CertificateManager([files])
    manager.load()
    os.unlink(files.key)
    with caplog.at_level(logging.INFO, "sidecar.tls"):
        assert manager.reload() == 0
        assert manager.reload() == 0
    assert [r.levelname for r in caplog.records] == ["WARNING"]
    assert served_serial(manager.context) == made.serial


# SNI ----------------------------------------------------------------------------------------


@pytest.fixture
def three(tmp_path: Path) -> tuple[list[Made], CertificateManager]:
    made = [
        make_certificate("default.test"),
        make_certificate("b.test", "www.b.test"),
        make_certificate("*.c.test"),
    ]
    files = []
    for i, m in enumerate(made):
        cert, key = m.write(tmp_path, f"cert{i}")
        files.append(CertFiles(str(cert), str(key)))
    manager = CertificateManager(files)
    manager.load()
    return made, manager


@pytest.mark.parametrize(
    ("server_name", "index"),
    [
        ("default.test", 0),
        ("b.test", 1),
        ("WWW.B.TEST", 1),
        ("x.c.test", 2),
        ("c.test", 0),  # the wildcard does not cover its own parent
        ("unknown.test", 0),
        (None, 0),  # no SNI at all
    ],
)
def test_sni_chooses_the_certificate_that_covers_the_name(
    three: tuple[list[Made], CertificateManager], server_name: str | None, index: int
) -> None:
    made, manager = three
    assert served_serial(manager.context, server_name) == made[index].serial


def test_a_reloaded_sni_certificate_is_chosen_with_its_new_names(tmp_path: Path) -> None:
    first, second = make_certificate("a.test"), make_certificate("b.test")
    files = []
    for i, m in enumerate((first, second)):
        cert, key = m.write(tmp_path, f"c{i}")
        files.append(CertFiles(str(cert), str(key)))
    manager = CertificateManager(files)
    manager.load()
    renamed = make_certificate("b.test", "new.test")
    replace(renamed, files[1])
    assert manager.reload() == 1
    assert served_serial(manager.context, "new.test") == renamed.serial


async def test_the_watcher_picks_up_changes_and_sighup_forces_a_reload(
    pair: tuple[Made, CertFiles],
) -> None:
    _, files = pair
    manager = CertificateManager([files], reload_interval=0.05)
    manager.load()
    manager.start()
    try:
        newer = make_certificate("a.test")
        replace(newer, files)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if manager.certificates[0][1].serial == newer.serial:  # type: ignore[union-attr]
                break
        assert manager.certificates[0][1].serial == newer.serial  # type: ignore[union-attr]
    finally:
        await manager.stop()
    # Stopped: no more polling; what the process's SIGHUP calls (sidecar/server/single.py).
    latest = make_certificate("a.test")
    Path(files.cert).write_bytes(latest.cert_pem)
    Path(files.key).write_bytes(latest.key_pem)
    manager.reload(force=True)
    assert manager.certificates[0][1].serial == latest.serial  # type: ignore[union-attr]
