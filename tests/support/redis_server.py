"""A real redis-server a test owns: on a free port, nothing kept on disk, killable and pausable.

Tests of the Redis broker start their own (never the machine's Redis on 6379) so that they can
kill it, pause it (SIGSTOP/SIGCONT) and start it again empty on the same port, as a Redis
restart looks to the nodes. `redis_server` is the pytest fixture (re-exported by
tests/conftest.py); `RedisServer` is for tests that need more than one or their own timing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.process import free_port, missing_tool

START_TIMEOUT = 10.0


def require_redis_server() -> str:
    """The redis-server binary; skip loudly without it (never in CI: tests/run.sh installs it)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if binary is None:
        missing_tool("redis-server is not installed: apt-get install redis-server")
    return binary


class RedisServer:
    """One redis-server process on 127.0.0.1:`port`, in `folder` (its working directory)."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.binary = require_redis_server()
        self.folder = folder
        self.folder.mkdir(parents=True, exist_ok=True)
        self.port = port if port is not None else free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = folder / f"redis-{self.port}.log"

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def pid(self) -> int:
        assert self.proc is not None, "not started"
        return self.proc.pid

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        command = [
            self.binary,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.folder),
            "--logfile",
            str(self.log_path),
        ]
        self.proc = subprocess.Popen(command, cwd=self.folder, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while not self.answers():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited at start: {self._log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"redis-server did not answer in time: {self._log_tail()}")
            time.sleep(0.02)
        return self

    def answers(self) -> bool:
        """True if it answers PING now (a plain socket: no client library in the way)."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def command(self, *args: str) -> bytes:
        """One command over a plain socket (inline protocol), its raw answer: for checks."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(" ".join(args).encode() + b"\r\n")
            return sock.recv(65536)

    def kill(self) -> None:
        """SIGKILL, and wait for it: what the nodes see when Redis dies."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)  # a stopped process dies only once woken
                self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        """SIGSTOP: Redis hangs (connections stay open, nothing answers)."""
        os.kill(self.pid, signal.SIGSTOP)

    def cont(self) -> None:
        """SIGCONT after stop()."""
        os.kill(self.pid, signal.SIGCONT)

    def restart(self) -> RedisServer:
        """Killed and started again, empty, on the same port (as a Redis restart looks)."""
        self.kill()
        return self.start()

    def close(self) -> None:
        self.kill()

    def _log_tail(self) -> str:
        try:
            return " | ".join(self.log_path.read_text().splitlines()[-5:])
        except OSError:
            return "(no log)"


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A redis-server of the test's own, killed at the end."""
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.close()
