"""The `sidecar` command: defaults with no arguments, config errors, the socket's owner."""

from __future__ import annotations

import argparse
import json
import os
import pty
import select
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from sidecar.tls.contexts import ensure_self_signed
from tests.support.process import ROOT, SidecarProcess, base_config, free_port, sidecar_command

pytestmark = pytest.mark.e2e


def run_cli(*args: str, cwd: Path, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*sidecar_command(), *args], cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def ports_free(*ports: int) -> bool:
    for port in ports:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers bind
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                return False
    return True


def test_run_without_arguments_uses_embedded_defaults(tmp_path: Path) -> None:
    if not ports_free(8443, 8080, 9601):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true but the default ports 8443/8080/9601 are taken")
        pytest.skip("SKIPPED LOUDLY: default ports 8443/8080/9601 are taken on this machine")
    proc = subprocess.Popen(
        [*sidecar_command(), "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: (tmp_path / "sidecar.sock").exists())
        wait_for(lambda: not ports_free(8443))
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    assert proc.returncode == 0, err
    banner = out.decode()
    app = json.loads((tmp_path / "certs" / "app.json").read_text())
    assert f"wss://localhost:8443/app/{app['key']}?protocol=7" in banner
    assert '"wsHost": "localhost", "wsPort": 8443' in banner
    assert '"forceTLS": true, "enabledTransports": ["ws"], "cluster": "sidecar"' in banner
    assert str((tmp_path / "certs" / "localhost.crt").resolve()) in banner
    assert "sidecar publish --socket ./sidecar.sock my-channel my-event" in banner
    # stdout is a pipe here, as under systemd: the secret stays in its file, the banner says where
    assert app["secret"] not in banner
    assert "its secret is in certs/app.json" in banner
    for secret_file in ("localhost.key", "app.json"):
        mode = stat.S_IMODE((tmp_path / "certs" / secret_file).stat().st_mode)
        assert mode == 0o600, secret_file
    assert not (tmp_path / "sidecar.sock").exists()  # removed on a clean stop
    assert app["secret"] not in err.decode()  # never in the log

    cert_before = (tmp_path / "certs" / "localhost.crt").read_bytes()
    proc = subprocess.Popen(
        [*sidecar_command(), "run"], cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        wait_for(lambda: (tmp_path / "sidecar.sock").exists())
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=15)
    assert (tmp_path / "certs" / "localhost.crt").read_bytes() == cert_before  # reused
    assert app["secret"] not in out.decode()  # not shown again


def read_terminal(master: int, until: bytes, timeout: float = 20) -> bytes:
    """What a process wrote to the terminal whose master end is `master`, up to `until`."""
    seen = b""
    deadline = time.monotonic() + timeout
    while until not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.2)
        if ready:
            try:
                seen += os.read(master, 65536)
            except OSError:  # the process closed the terminal
                break
    return seen


def test_generated_secret_is_shown_on_a_terminal_only(tmp_path: Path) -> None:
    config = base_config(tmp_path, workers=1)
    (tmp_path / "sidecar.yaml").write_text(yaml.safe_dump(config))
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [*sidecar_command(), "run", "--config", "sidecar.yaml"],
        cwd=tmp_path,
        stdout=slave,
        stderr=slave,
    )
    os.close(slave)
    try:
        shown = read_terminal(master, b"Publish an event")
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
        os.close(master)
    app = json.loads((tmp_path / "certs" / "app.json").read_text())
    assert f"secret {app['secret']}".encode() in shown
    assert b"shown this one time only" in shown


def test_banner_names_the_command_as_it_was_run(tmp_path: Path, monkeypatch) -> None:
    from sidecar.cli import invoked_as

    venv = tmp_path / ".venv" / "bin"
    venv.mkdir(parents=True)
    (venv / "sidecar").write_text("")
    (venv / "sidecar").chmod(0o755)
    monkeypatch.setenv("PATH", "/usr/bin:/bin")  # the venv not activated
    assert invoked_as(".venv/bin/sidecar") == ".venv/bin/sidecar"
    assert invoked_as("sidecar") == "sidecar"  # found on the PATH by the shell
    monkeypatch.setenv("PATH", f"{venv}:/usr/bin:/bin")  # activated
    assert invoked_as(str(venv / "sidecar")) == "sidecar"
    assert invoked_as("/x/sidecar/cli.py").endswith(" -m sidecar.cli")


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"listen": {"port": "eighty"}}, "listen.port: must be an integer from 1 to 65535"),
        ({"lisen": {}}, "lisen: unknown key"),
        ({"apps": [{"id": "1", "key": "k"}]}, "apps[0].secret: is required"),
        ({"tls": {"mode": "files"}}, "tls.cert: is required when tls.mode is files"),
        ({"limits": {"send_queue_bytes": "lots"}}, "limits.send_queue_bytes: must be a size"),
    ],
)
def test_bad_config_stops_with_one_line_naming_the_key(
    tmp_path: Path, config: dict, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(config))
    for args in (("run", "--config", str(path)), ("check-config", str(path))):
        result = run_cli(*args, cwd=tmp_path)
        assert result.returncode == 2
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr
        assert expected in lines[0]
    assert not (tmp_path / "sidecar.sock").exists()


def test_check_config_accepts_the_examples(tmp_path: Path) -> None:
    examples = sorted((ROOT / "configs").glob("*.yaml"))
    assert examples
    pair = ensure_self_signed(tmp_path / "certs")
    for example in examples:
        config = yaml.safe_load(example.read_text())
        if config.get("tls", {}).get("mode") == "files":
            # The example names certbot's paths; check it with files that exist here.
            config["tls"].update(cert=str(pair.cert), key=str(pair.key))
        # Production paths (/run/sidecar, /var/lib/sidecar) may not be this user's to make.
        config.setdefault("publish", {})["socket"] = str(tmp_path / "run" / "sidecar.sock")
        if "dir" in config.get("tls", {}):
            config["tls"]["dir"] = str(tmp_path / "certs")
        for app in config.get("apps") or []:
            app["secret"] = "0123456789abcdef" * 3  # its placeholder is refused (next test)
        checked = tmp_path / example.name
        checked.write_text(yaml.safe_dump(config))
        result = run_cli("check-config", str(checked), cwd=tmp_path)
        assert result.returncode == 0, f"{example}: {result.stderr}"
        assert "ok" in result.stdout


def test_production_example_is_refused_until_its_secret_is_replaced(tmp_path: Path) -> None:
    example = ROOT / "configs" / "production.yaml"
    result = run_cli("check-config", str(example), cwd=tmp_path)
    assert result.returncode == 2
    assert "apps[0].secret: is a placeholder" in result.stderr
    assert "replace-with" not in result.stderr  # a secret is never echoed


def test_check_config_names_a_publish_directory_it_cannot_make(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    made = tmp_path / "made" / "sidecar.sock"
    path.write_text(yaml.safe_dump({"publish": {"socket": str(made)}}))
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"{made.parent} will be made (mode 0750) for publish.socket" in result.stdout
    assert not made.parent.exists()  # checking makes nothing
    path.write_text(yaml.safe_dump({"publish": {"socket": str(tmp_path / "a" / "b" / "s")}}))
    result = run_cli("check-config", str(path), cwd=tmp_path)
    assert result.returncode == 2
    assert f"publish.socket: directory {tmp_path / 'a' / 'b'} does not exist" in result.stderr


def test_help_lists_only_what_a_person_runs() -> None:
    result = subprocess.run(
        [*sidecar_command(), "--help"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert "_worker" not in result.stdout
    assert "SUPPRESS" not in result.stdout
    for command in ("run", "check-config", "certs", "publish", "status"):
        assert f"    {command}" in result.stdout


def test_every_argument_has_a_help_line() -> None:
    from sidecar.cli import parser, worker_parser

    def undocumented(p: argparse.ArgumentParser) -> list[str]:
        missing = []
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    missing += undocumented(sub)
            elif not action.help:
                missing.append(f"{p.prog} {'/'.join(action.option_strings) or action.dest}")
        return missing

    assert undocumented(parser()) == []
    assert undocumented(worker_parser()) == []


def test_version() -> None:
    from sidecar import __version__

    result = subprocess.run(
        [*sidecar_command(), "--version"], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0
    assert result.stdout.strip() == f"sidecar {__version__}"


def test_socket_held_by_live_sidecar_is_refused(sidecar: SidecarProcess, tmp_path: Path) -> None:
    config = dict(sidecar.config)
    config["listen"] = {"host": "127.0.0.1", "port": free_port()}
    config["publish"] = {"socket": sidecar.socket}
    path = tmp_path / "second.yaml"
    path.write_text(yaml.safe_dump(config))
    result = run_cli("run", "--config", str(path), cwd=tmp_path)
    assert result.returncode == 1
    assert "is in use by a running sidecar" in result.stderr
    # The first one still serves.
    published = run_cli("publish", "--socket", sidecar.socket, "a", "e", "x", cwd=tmp_path)
    assert published.returncode == 0, published.stderr


def test_stale_socket_file_is_replaced(start_sidecar: Callable[..., SidecarProcess], tmp_path):
    workdir = tmp_path / "stale"
    workdir.mkdir()
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(workdir / "sidecar.sock"))  # bound, never listening: what a crash leaves
    stale.close()
    sidecar = start_sidecar(workdir=workdir)
    result = run_cli("publish", "--socket", sidecar.socket, "a", "e", "x", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    mode = stat.S_IMODE(os.stat(sidecar.socket).st_mode)
    assert mode == 0o660


def test_publish_errors_are_one_line(sidecar: SidecarProcess, tmp_path: Path) -> None:
    result = run_cli("publish", "--socket", sidecar.socket, "bad channel!", "e", "x", cwd=tmp_path)
    assert result.returncode == 1
    assert "publish refused: 400" in result.stderr
    assert "channel" in result.stderr
    result = run_cli(
        "publish", "--socket", str(tmp_path / "none.sock"), "a", "e", "x", cwd=tmp_path
    )
    assert result.returncode == 1
    assert "cannot reach" in result.stderr
