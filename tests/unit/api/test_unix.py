"""sidecar.api.unix: claiming the publish socket path safely."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from sidecar.api.unix import SocketInUse, claim_socket_path


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: Unix socket paths are limited to about 100 bytes."""
    folder = Path(tempfile.mkdtemp(prefix="sc-", dir="/tmp"))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def bound_socket(path: Path, listen: bool) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(str(path))
    if listen:
        sock.listen(1)
    return sock


def test_a_missing_path_is_free(short_dir: Path) -> None:
    path = short_dir / "sidecar.sock"
    claim_socket_path(str(path))
    assert not path.exists()


def test_a_stale_socket_file_is_removed(short_dir: Path) -> None:
    path = short_dir / "sidecar.sock"
    bound_socket(path, listen=True).close()  # the process died: the file stays, nobody listens
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    claim_socket_path(str(path))
    assert not os.path.lexists(path)
    # And the path can be bound again.
    bound_socket(path, listen=True).close()


def test_a_live_listening_socket_is_refused(short_dir: Path) -> None:
    path = short_dir / "sidecar.sock"
    with bound_socket(path, listen=True):
        with pytest.raises(SocketInUse, match="in use"):
            claim_socket_path(str(path))
        assert stat.S_ISSOCK(os.lstat(path).st_mode)  # left alone


def test_a_regular_file_is_refused_and_not_deleted(short_dir: Path) -> None:
    path = short_dir / "sidecar.sock"
    path.write_text("precious")
    with pytest.raises(SocketInUse, match="not a socket"):
        claim_socket_path(str(path))
    assert path.read_text() == "precious"


def test_a_directory_is_refused_and_not_deleted(short_dir: Path) -> None:
    path = short_dir / "sidecar.sock"
    path.mkdir()
    with pytest.raises(SocketInUse, match="not a socket"):
        claim_socket_path(str(path))
    assert path.is_dir()


def test_a_symlink_is_refused_and_its_target_kept(short_dir: Path) -> None:
    target = short_dir / "target"
    target.write_text("precious")
    path = short_dir / "sidecar.sock"
    path.symlink_to(target)
    with pytest.raises(SocketInUse):
        claim_socket_path(str(path))
    assert path.is_symlink()
    assert target.read_text() == "precious"


def test_socket_in_use_is_a_runtime_error() -> None:
    assert issubclass(SocketInUse, RuntimeError)
