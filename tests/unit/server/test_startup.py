"""sidecar/server/startup.py: what a start claims on the machine, and the one-line refusals."""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import pytest

from sidecar.config.model import ConfigError, from_mapping
from sidecar.server.startup import (
    StartError,
    blame,
    check_paths,
    claim_port,
    make_publish_directory,
    port_claim,
    publish_directory,
)
from tests.support.process import free_port


def reuseport_listener(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", port))
    sock.listen(1)
    return sock


def test_a_port_shared_with_so_reuseport_is_refused_by_the_probe() -> None:
    """What the fix stands on (Linux): another SO_REUSEPORT socket of ours could join the
    first one's group, but a bind without SO_REUSEPORT fails while it listens."""
    port = free_port()
    with reuseport_listener(port):
        reuseport_listener(port).close()  # the bug: a second instance joins unnoticed
        with pytest.raises(StartError) as exc:
            claim_port("127.0.0.1", port, "listen.port")
        assert str(exc.value).startswith(f"listen.port: cannot listen on 127.0.0.1:{port}")
        with pytest.raises(StartError):
            claim_port("0.0.0.0", port, "listen.port")  # a wider address overlaps too
    claim_port("127.0.0.1", port, "listen.port")  # free again


def test_a_connection_left_in_time_wait_does_not_block_a_restart() -> None:
    port = free_port()
    with socket.socket() as server:
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", port))
        server.listen(1)
        client = socket.create_connection(("127.0.0.1", port))
        accepted, _ = server.accept()
        accepted.close()  # the server closes first: its side waits in TIME_WAIT
        client.close()
    claim_port("127.0.0.1", port, "listen.port")


def test_claims_of_one_port_wait_for_each_other() -> None:
    port = free_port()
    order = []
    with port_claim(port, "listen.port"):

        def second() -> None:
            with port_claim(port, "listen.port"):
                order.append("second")

        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.1)
        order.append("first done")
    thread.join(5)
    assert order == ["first done", "second"]
    with (
        port_claim(port, "listen.port"),
        pytest.raises(StartError, match="another sidecar"),
        port_claim(port, "listen.port", wait=0.05),
    ):
        pass
    with port_claim(port + 1 if port < 65535 else port - 1, "listen.port"):
        pass  # another port: its own claim


def test_blame_names_the_key_and_the_path(tmp_path: Path) -> None:
    with pytest.raises(StartError) as exc, blame("tls.dir"):
        (tmp_path / "none" / "x").read_text()
    assert str(exc.value) == f"tls.dir: {tmp_path / 'none' / 'x'}: No such file or directory"


def test_publish_directory(tmp_path: Path) -> None:
    assert publish_directory(str(tmp_path / "s.sock")) == (tmp_path, False)
    assert publish_directory(str(tmp_path / "run" / "s.sock")) == (tmp_path / "run", True)
    with pytest.raises(ConfigError, match="does not exist, nor does"):
        publish_directory(str(tmp_path / "a" / "b" / "s.sock"))
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="is not a directory"):
        publish_directory(str(tmp_path / "file" / "s.sock"))
    with pytest.raises(ConfigError, match="bytes long") as exc:
        publish_directory(str(tmp_path / ("x" * 120)))
    assert exc.value.key == "publish.socket"


def test_the_directory_is_made_with_mode_0750(tmp_path: Path) -> None:
    made = make_publish_directory(str(tmp_path / "run" / "s.sock"))
    assert made == tmp_path / "run"
    assert (made.stat().st_mode & 0o777) == 0o750
    assert make_publish_directory(str(tmp_path / "run" / "s.sock")) is None
    with pytest.raises(StartError, match=r"^publish.socket: directory .* does not exist"):
        make_publish_directory(str(tmp_path / "a" / "b" / "s.sock"))


def test_check_paths(tmp_path: Path) -> None:
    config = from_mapping(
        {"publish": {"socket": str(tmp_path / "run" / "s")}, "tls": {"dir": str(tmp_path / "c")}}
    )
    assert check_paths(config) == [
        f"{tmp_path / 'run'} will be made (mode 0750) for publish.socket"
    ]
    assert not (tmp_path / "run").exists()
    (tmp_path / "file").write_text("")
    config = from_mapping({"tls": {"dir": str(tmp_path / "file" / "certs")}})
    with pytest.raises(ConfigError) as exc:
        check_paths(config)
    assert exc.value.key == "tls.dir"
