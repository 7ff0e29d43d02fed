"""Starting next to something in the way: one line naming the key, exit 1, no traceback, and
whatever was already running there is left alone."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import subprocess
from pathlib import Path

import aiohttp
import pytest
import yaml

from tests.support.process import SidecarProcess, base_config, free_port, sidecar_command

pytestmark = pytest.mark.e2e


def run_second(folder: Path, config: dict, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """`sidecar run` in its own folder, expected to stop by itself."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    return subprocess.run(
        [*sidecar_command(), "run", "--config", str(path)],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line(result: subprocess.CompletedProcess[str], status: int, *needles: str) -> None:
    """One line says why (info lines logged before it, like a certificate made, aside)."""
    lines = [line for line in result.stderr.splitlines() if line.strip() and not is_info(line)]
    assert result.returncode == status, result.stderr
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


def is_info(line: str) -> bool:
    try:
        return json.loads(line).get("level") == "info"
    except ValueError:
        return False


async def upgrades_answered(sidecar: SidecarProcess, count: int) -> list[str]:
    """The first frame of `count` WebSockets opened with `sidecar`'s key, each on its own
    connection (the kernel spreads connections over the listeners of the port)."""
    ctx = ssl.create_default_context(cafile=str(sidecar.cert))
    events = []
    async with aiohttp.ClientSession() as session:
        for _ in range(count):
            async with session.ws_connect(sidecar.ws_url(), ssl=ctx) as ws:
                msg = await ws.receive(timeout=5)
                if msg.type == aiohttp.WSMsgType.TEXT:
                    events.append(json.loads(msg.data)["event"])
                else:
                    events.append(f"closed {ws.close_code}")
    return events


@pytest.mark.parametrize(("first_workers", "second_workers"), [(2, 2), (1, 2), (2, 1), (1, 1)])
async def test_second_instance_on_the_same_port_is_refused(
    tmp_path: Path, first_workers: int, second_workers: int
) -> None:
    first = SidecarProcess(
        tmp_path / "first", base_config(tmp_path / "first", workers=first_workers)
    )
    first.workdir.mkdir()
    first.start()
    try:
        # Another sidecar, its own app and socket, the same TLS port: the bug let it join the
        # port's SO_REUSEPORT group and answer 4001 to a share of the first one's clients.
        second = base_config(tmp_path / "second", workers=second_workers)
        second["listen"] = dict(first.config["listen"])
        result = run_second(tmp_path / "second", second)
        assert_one_line(result, 1, "listen.port", str(first.port))
        assert len(result.stderr.strip().splitlines()) == 1  # not even an info line
        assert not (tmp_path / "second" / "sidecar.sock").exists()
        assert not (tmp_path / "second" / "certs").exists()  # nothing made by a refused start
        events = await upgrades_answered(first, 10)
        assert events == ["pusher:connection_established"] * 10
        assert first.proc is not None and first.proc.poll() is None
    finally:
        assert first.stop() == 0


def test_plain_http_port_taken_is_refused_naming_http_port(tmp_path: Path) -> None:
    held = free_port()
    with socket.socket() as other:  # any process, not only a sidecar
        other.bind(("127.0.0.1", held))
        other.listen(1)
        config = base_config(tmp_path, http={"port": held})
        result = run_second(tmp_path, config)
    assert_one_line(result, 1, "http.port", f"127.0.0.1:{held}")


def test_admin_port_taken_is_refused_naming_admin_port(tmp_path: Path) -> None:
    held = free_port()
    with socket.socket() as other:
        other.bind(("127.0.0.1", held))
        other.listen(1)
        result = run_second(tmp_path, base_config(tmp_path, admin={"port": held}, workers=2))
    assert_one_line(result, 1, "admin.port", f"127.0.0.1:{held}")


@pytest.mark.parametrize("workers", [1, 2])
def test_publish_socket_directory_is_made_when_only_it_is_missing(
    tmp_path: Path, workers: int
) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    config = base_config(folder, workers=workers, publish={"socket": str(folder / "s" / "x.sock")})
    process = SidecarProcess(folder, config)
    process.start()
    try:
        made = folder / "s"
        assert made.is_dir()
        assert oct(made.stat().st_mode & 0o777) == oct(0o750)
    finally:
        assert process.stop() == 0


@pytest.mark.parametrize("workers", [1, 2])
def test_publish_socket_directory_that_cannot_be_made_is_one_line(
    tmp_path: Path, workers: int
) -> None:
    missing = tmp_path / "no" / "such" / "dir" / "sidecar.sock"
    config = base_config(tmp_path, workers=workers, publish={"socket": str(missing)})
    result = run_second(tmp_path, config)
    assert_one_line(result, 1, "publish.socket", str(missing.parent))
    assert "did not stop in time" not in result.stderr
    path = tmp_path / "sidecar.yaml"
    checked = subprocess.run(
        [*sidecar_command(), "check-config", str(path)], capture_output=True, text=True, timeout=20
    )
    assert_one_line(checked, 2, "publish.socket", str(missing.parent))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_publish_socket_directory_without_permission_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = base_config(tmp_path, publish={"socket": str(locked / "sidecar.sock")})
    result = run_second(tmp_path, config)
    assert_one_line(result, 1, "publish.socket", str(locked))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may read anything")
def test_certificate_that_cannot_be_read_is_one_line(tmp_path: Path) -> None:
    from sidecar.tls.contexts import ensure_self_signed

    pair = ensure_self_signed(tmp_path / "certs")
    pair.key.chmod(0o000)
    config = base_config(
        tmp_path, tls={"mode": "files", "cert": str(pair.cert), "key": str(pair.key)}
    )
    config["apps"] = [{"id": "1", "key": "k", "secret": "0123456789abcdef0123456789abcdef"}]
    result = run_second(tmp_path, config)
    assert_one_line(result, 1, "tls.cert", str(pair.key))


def test_certificate_that_cannot_be_used_is_one_line_naming_its_key(tmp_path: Path) -> None:
    from sidecar.tls.contexts import ensure_self_signed

    pair = ensure_self_signed(tmp_path / "certs")
    broken = tmp_path / "broken.crt"
    broken.write_text("not a certificate")
    config = base_config(
        tmp_path,
        tls={
            "mode": "files",
            "cert": str(pair.cert),
            "key": str(pair.key),
            "certificates": [{"cert": str(broken), "key": str(pair.key)}],
        },
    )
    config["apps"] = [{"id": "1", "key": "k", "secret": "0123456789abcdef0123456789abcdef"}]
    result = run_second(tmp_path, config)
    assert_one_line(result, 1, "tls.certificates[0]", str(broken))


@pytest.mark.skipif(os.geteuid() == 0, reason="root may write anywhere")
def test_tls_dir_without_permission_is_one_line(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    config = base_config(tmp_path, tls={"mode": "self-signed", "dir": str(locked / "certs")})
    result = run_second(tmp_path, config)
    assert_one_line(result, 1, "tls.dir", str(locked / "certs"))


def test_tls_dir_that_cannot_be_made_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("")
    certs = tmp_path / "a-file" / "certs"
    result = run_second(
        tmp_path, base_config(tmp_path, tls={"mode": "self-signed", "dir": str(certs)})
    )
    assert_one_line(result, 1, "tls.dir", str(tmp_path / "a-file"))


def test_the_first_instance_survives_many_refused_starts(tmp_path: Path) -> None:
    """A deploy script retrying: each try refused, the running one never disturbed."""
    first = SidecarProcess(tmp_path / "first", base_config(tmp_path / "first", workers=2))
    first.workdir.mkdir()
    first.start()
    try:
        second = base_config(tmp_path / "second", workers=2)
        second["listen"] = dict(first.config["listen"])
        for _ in range(3):
            assert run_second(tmp_path / "second", second).returncode == 1
        events = asyncio.run(upgrades_answered(first, 4))
        assert events == ["pusher:connection_established"] * 4
    finally:
        assert first.stop() == 0
