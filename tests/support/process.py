"""Helpers for end-to-end tests: the real `sidecar run` process and the real pusher-js client."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import pytest
import yaml

# The repository: found from here wherever this helper lives under tests/.
ROOT = next(p for p in Path(__file__).resolve().parents if (p / "pyproject.toml").is_file())
NODE_DIR = ROOT / "tests/support/node"
IN_CI = os.environ.get("CI") == "true"


def missing_tool(what: str, ci_note: str = "") -> NoReturn:
    """A test needs a program that is not installed: a failure under CI=true (tests/run.sh
    installs everything there), else a skip that says so loudly."""
    if IN_CI:
        pytest.fail(f"CI=true but {what}{ci_note}")
    pytest.skip(f"SKIPPED LOUDLY: {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def sidecar_command() -> list[str]:
    """The installed `sidecar` command of the interpreter running the tests."""
    exe = Path(sys.executable).parent / "sidecar"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "sidecar.cli"]


def require_node() -> str:
    """The node binary, with pusher-js installed; skip loudly without it (never in CI)."""
    node = shutil.which("node")
    missing = None
    if node is None:
        missing = "node is not installed"
    elif not (NODE_DIR / "node_modules" / "pusher-js").is_dir():
        missing = "pusher-js is not installed: run `npm ci --prefix tests/support/node`"
    if missing:
        missing_tool(missing)
    assert node is not None
    return node


@dataclass
class SidecarProcess:
    """A running `sidecar run --config FILE` in its own folder."""

    workdir: Path
    config: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    open_files: int | None = None  # RLIMIT_NOFILE (soft and hard) of the process, if set
    stdout_path: Path = field(init=False)
    stderr_path: Path = field(init=False)

    def __post_init__(self) -> None:
        self.stdout_path = self.workdir / "sidecar.out"
        self.stderr_path = self.workdir / "sidecar.err"

    @property
    def port(self) -> int:
        return self.config["listen"]["port"]

    @property
    def socket(self) -> str:
        return str(self.workdir / self.config["publish"]["socket"])

    @property
    def cert(self) -> Path:
        return self.workdir / "certs" / "localhost.crt"

    @property
    def app(self) -> dict[str, Any]:
        if "apps" in self.config:
            return self.config["apps"][0]
        return json.loads((self.workdir / "certs" / "app.json").read_text())

    @property
    def config_path(self) -> Path:
        return self.workdir / "sidecar.yaml"

    def start(self, timeout: float = 15.0) -> SidecarProcess:
        return self.launch().wait_ready(timeout)

    def launch(self) -> SidecarProcess:
        """Start the process without waiting for it to be ready."""
        self.config_path.write_text(yaml.safe_dump(self.config))
        open_files = self.open_files

        def limit_open_files() -> None:
            if open_files is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (open_files, open_files))

        self.proc = subprocess.Popen(
            [*sidecar_command(), "run", "--config", str(self.config_path)],
            cwd=self.workdir,
            stdout=self.stdout_path.open("wb"),
            stderr=self.stderr_path.open("wb"),
            preexec_fn=limit_open_files if open_files is not None else None,
        )
        return self

    def wait_ready(self, timeout: float = 15.0) -> SidecarProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sidecar exited {self.proc.returncode}: {self.stderr()}")
            if self._ready():
                return self
            time.sleep(0.05)
        raise RuntimeError(f"sidecar not ready after {timeout}s: {self.stderr()}")

    def _ready(self) -> bool:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(self.socket)
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text() if self.stderr_path.exists() else ""

    def stdout(self) -> str:
        return self.stdout_path.read_text() if self.stdout_path.exists() else ""

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.stderr().splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines

    async def wait_for_log(self, predicate: Any, timeout: float = 10.0) -> list[dict[str, Any]]:
        """The log lines matching `predicate`, once there is at least one (or after `timeout`).

        A line about a socket is written when the server sees the socket gone, which can be
        a moment after the client does.
        """
        deadline = time.monotonic() + timeout
        while True:
            lines = [entry for entry in self.log_lines() if predicate(entry)]
            if lines or time.monotonic() > deadline:
                return lines
            await asyncio.sleep(0.05)

    def ws_url(self, key: str | None = None, query: str = "protocol=7") -> str:
        return f"wss://localhost:{self.port}/app/{key or self.app['key']}?{query}"

    def pusher_options(self) -> dict[str, Any]:
        return {
            "wsHost": "localhost",
            "wsPort": self.port,
            "wssPort": self.port,
            "forceTLS": True,
            "enabledTransports": ["ws"],
            "cluster": "sidecar",
        }


def base_config(workdir: Path, **overrides: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "http": {"port": None},
        "admin": {"port": None},
        "tls": {"mode": "self-signed", "dir": str(workdir / "certs")},
        "publish": {"socket": "sidecar.sock"},
    }
    config.update(overrides)
    return config


@contextlib.contextmanager
def running_sidecar(folder: Path, **config: Any) -> Iterator[SidecarProcess]:
    """A sidecar shared by the tests of a module (a module-scoped fixture): one start, not many.

    Tests sharing it use channel names of their own.
    """
    folder.mkdir(parents=True, exist_ok=True)
    process = SidecarProcess(folder, base_config(folder, **config))
    try:
        yield process.start()
    finally:
        process.stop()


class PusherJs:
    """The node driver (tests/support/node/driver.js) running real pusher-js clients."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.reports: list[dict[str, Any]] = []
        self._new = asyncio.Event()
        self._reader = asyncio.ensure_future(self._read())

    @classmethod
    async def start(cls, cert: Path) -> PusherJs:
        node = require_node()
        env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert)}
        proc = await asyncio.create_subprocess_exec(
            node,
            str(NODE_DIR / "driver.js"),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
            limit=16 * 1024 * 1024,
        )
        driver = cls(proc)
        await driver.expect(lambda r: r["type"] == "ready")
        return driver

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            self.reports.append(json.loads(line))
            self._new.set()

    def send(self, **command: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(command) + "\n").encode())

    async def expect(self, predicate: Any, timeout: float = 15.0, count: int = 1) -> list[dict]:
        """Wait until `count` reports match `predicate`; return them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            found = [r for r in self.reports if predicate(r)]
            if len(found) >= count:
                return found
            remaining = deadline - loop.time()
            if remaining <= 0:
                tail = self.reports[-10:]
                raise AssertionError(f"timed out: {len(found)}/{count} matching; last: {tail}")
            self._new.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._new.wait(), remaining)

    async def close(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(Exception):
                self.send(cmd="exit")
            try:
                await asyncio.wait_for(self.proc.wait(), 5)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        self._reader.cancel()
