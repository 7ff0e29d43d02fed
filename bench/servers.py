"""The servers the fan-out benchmark compares, each started the same way and measured the same way.

Every server gets a WebSocket port (plaintext or TLS with the same certificate), a publish
endpoint and a CPU to be pinned to. The load client subscribes through `subscribe_args()` and the
harness publishes through `publisher()`; CPU and memory are read from /proc for the server's
whole process tree.
"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidecar.api.client import UnixHTTPConnection

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
APP_ID, APP_KEY, APP_SECRET = "1", "bench-key", "bench-secret-0123456789abcdef0123"
NCHAN_MODULE = Path("/usr/lib/nginx/modules/ngx_nchan_module.so")
SOKETI_DIR = BENCH / "peers" / "soketi"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"port {port} not listening after {timeout}s")


def process_tree(pid: int) -> list[int]:
    """pid and all its descendants (nginx workers, sidecar workers)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


def cpu_times(pids: list[int]) -> tuple[float, float]:
    """User and system (kernel) CPU seconds of the processes."""
    user = system = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            user += int(fields[11])  # utime
            system += int(fields[12])  # stime
        except OSError:
            pass
    return user / CLK_TCK, system / CLK_TCK


def cpu_seconds(pids: list[int]) -> float:
    return sum(cpu_times(pids))


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class PeakRss:
    """Samples the RSS of a process tree in a thread while the `with` block runs."""

    def __init__(self, pids: list[int], interval: float = 0.002) -> None:
        self.pids = pids
        self.interval = interval
        self.before = rss_bytes(pids)
        self.peak = self.before
        self._running = False
        self._thread = threading.Thread(target=self._sample)

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_bytes(self.pids))
            time.sleep(self.interval)

    def __enter__(self) -> PeakRss:
        self._running = True
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._running = False
        self._thread.join()
        self.peak = max(self.peak, rss_bytes(self.pids))


def paced(count: int, rate: float) -> Iterator[int]:
    """Yield 0..count-1, each at its slot of a fixed rate (0: as fast as the caller goes)."""
    interval = 1.0 / rate if rate > 0 else 0.0
    next_at = time.perf_counter()
    for i in range(count):
        if interval:
            next_at += interval
            delay = next_at - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
        yield i


@dataclass
class Publisher:
    """Publishes one event per call and returns when the server acknowledged it."""

    make_connection: Any
    build: Any  # (channel, data) -> (method, path, body bytes, headers)
    build_batch: Any = None  # [(channel, data), ...] -> the same, where the server has batches
    conn: http.client.HTTPConnection | None = None

    def publish(self, channel: str, data: str) -> None:
        self._send(*self.build(channel, data))

    def publish_batch(self, items: list[tuple[str, str]]) -> None:
        if self.build_batch is None:
            raise RuntimeError("this server has no batch publishing")
        self._send(*self.build_batch(items))

    def _send(self, method: str, path: str, body: bytes, headers: dict[str, str]) -> None:
        for attempt in (1, 2):
            if self.conn is None:
                self.conn = self.make_connection()
            try:
                self.conn.request(method, path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                break
            except (ConnectionError, http.client.HTTPException):
                self.conn.close()
                self.conn = None
                if attempt == 2:
                    raise
        if response.status >= 300:
            raise RuntimeError(f"publish refused: {response.status}")

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()


def unix_pusher_publisher(socket_path: str) -> Publisher:
    """The Pusher HTTP API over a Unix socket, unsigned (sidecar and the naive relay)."""
    headers = {"Content-Type": "application/json"}

    def build(channel: str, data: str) -> tuple[str, str, bytes, dict[str, str]]:
        return "POST", f"/apps/{APP_ID}/events", pusher_body(channel, data), headers

    def build_batch(items: list[tuple[str, str]]) -> tuple[str, str, bytes, dict[str, str]]:
        batch = [{"name": "bench", "channel": ch, "data": data} for ch, data in items]
        body = json.dumps({"batch": batch}).encode()
        return "POST", f"/apps/{APP_ID}/batch_events", body, headers

    return Publisher(lambda: UnixHTTPConnection(socket_path, 30), build, build_batch)


def pusher_body(channel: str, data: str) -> bytes:
    return json.dumps({"name": "bench", "channel": channel, "data": data}).encode()


def signed_path(path: str, body: bytes) -> str:
    params = {
        "auth_key": APP_KEY,
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    signature = hmac.new(
        APP_SECRET.encode(), f"POST\n{path}\n{query}".encode(), hashlib.sha256
    ).hexdigest()
    return f"{path}?{query}&auth_signature={signature}"


@dataclass
class Server:
    """Base: a process tree started in `workdir`, pinned to `cpus`."""

    name: str
    workdir: Path
    tls: bool
    cert: Path
    key: Path
    cpus: str
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def command(self) -> list[str]:
        raise NotImplementedError

    def env(self) -> dict[str, str]:
        return dict(os.environ)

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = (self.workdir / f"{self.name}.log").open("wb")
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpus, *self.command()],
            cwd=self.workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env(),
            start_new_session=True,
        )
        wait_port(self.port)
        self.ready()

    def ready(self) -> None:
        """Wait for anything beyond the WebSocket port (a publish socket)."""

    def pids(self) -> list[int]:
        assert self.proc is not None
        return process_tree(self.proc.pid)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def subscribe_args(self) -> list[str]:
        return ["--mode", "pusher", "--path", f"/app/{APP_KEY}?protocol=7"]

    def publisher(self) -> Publisher:
        raise NotImplementedError


@dataclass
class SidecarServer(Server):
    workers: int = 1
    # With metrics: the admin listener on (it is what keeps metrics) and /metrics scraped
    # every `scrape_interval` seconds while the server runs. Without: `admin: null`.
    metrics: bool = False
    scrape_interval: float = 1.0
    admin_port: int = field(default_factory=free_port)
    scrapes: int = 0
    broker: dict[str, Any] | None = None  # the `broker` section; None: memory (the pipe hub)
    _scraping: threading.Event = field(default_factory=threading.Event)

    @property
    def socket(self) -> str:
        return str(self.workdir / "publish.sock")

    def command(self) -> list[str]:
        config = {
            "listen": {"host": "127.0.0.1", "port": self.port},
            "http": {"port": None},
            "admin": {"host": "127.0.0.1", "port": self.admin_port} if self.metrics else None,
            "tls": {"mode": "files", "cert": str(self.cert), "key": str(self.key)}
            if self.tls
            else {"mode": "off", "dir": str(self.workdir / "certs")},
            "publish": {"socket": self.socket},
            "apps": [{"id": APP_ID, "key": APP_KEY, "secret": APP_SECRET}],
            "log": {"level": "warning"},
            # Every client of a benchmark comes from one address.
            "limits": {"send_queue_bytes": "64MiB", "max_connections_per_ip": 0},
        }
        config["workers"] = self.workers  # explicit: "auto" would follow the taskset
        if self.broker is not None:
            config["broker"] = self.broker
        path = self.workdir / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        return [*self.executable(), "run", "--config", str(path)]

    def executable(self) -> list[str]:
        exe = Path(sys.executable).parent / "sidecar"
        return [str(exe)] if exe.exists() else [sys.executable, "-m", "sidecar.cli"]

    def ready(self) -> None:
        wait_unix(self.socket)
        if self.metrics:
            wait_port(self.admin_port)
            threading.Thread(target=self._scrape, daemon=True).start()

    def _scrape(self) -> None:
        """Scrape like Prometheus would, only more often (its default is every 15 s)."""
        while not self._scraping.wait(self.scrape_interval):
            conn = http.client.HTTPConnection("127.0.0.1", self.admin_port, timeout=10)
            try:
                conn.request("GET", "/metrics")
                body = conn.getresponse().read()
                if b"sidecar_messages_delivered_total" in body:
                    self.scrapes += 1
            except OSError:
                pass
            finally:
                conn.close()

    def stop(self) -> None:
        self._scraping.set()
        super().stop()

    def publisher(self) -> Publisher:
        return unix_pusher_publisher(self.socket)

    def signed_publisher(self) -> Publisher:
        return tcp_signed_publisher(self.port, self.tls)


def tcp_signed_publisher(port: int, tls: bool) -> Publisher:
    import ssl

    def connect() -> http.client.HTTPConnection:
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
            return http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
        return http.client.HTTPConnection("127.0.0.1", port, timeout=30)

    def build(channel: str, data: str) -> tuple[str, str, bytes, dict[str, str]]:
        body = pusher_body(channel, data)
        path = signed_path(f"/apps/{APP_ID}/events", body)
        return "POST", path, body, {"Content-Type": "application/json"}

    return Publisher(connect, build)


def wait_unix(path: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(path)
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{path} not ready")


@dataclass
class NaiveServer(Server):
    @property
    def socket(self) -> str:
        return str(self.workdir / "naive.sock")

    def command(self) -> list[str]:
        cmd = [
            sys.executable,
            str(BENCH / "peers" / "naive_relay.py"),
            "--port",
            str(self.port),
            "--socket",
            self.socket,
        ]
        if self.tls:
            cmd += ["--cert", str(self.cert), "--key", str(self.key)]
        return cmd

    def ready(self) -> None:
        wait_unix(self.socket)

    def publisher(self) -> Publisher:
        return unix_pusher_publisher(self.socket)


@dataclass
class NchanServer(Server):
    """nginx with nchan: one worker process (`workers`), publishing over a Unix socket like the
    others."""

    workers: int = 1

    @property
    def socket(self) -> str:
        return str(self.workdir / "nchan.sock")

    def command(self) -> list[str]:
        listen = f"127.0.0.1:{self.port}" + (" ssl" if self.tls else "")
        tls = (
            f"ssl_certificate {self.cert}; ssl_certificate_key {self.key}; "
            "ssl_protocols TLSv1.2 TLSv1.3;"
            if self.tls
            else ""
        )
        conf = f"""
load_module {NCHAN_MODULE};
daemon off;
worker_processes {self.workers};
pid {self.workdir}/nginx.pid;
error_log {self.workdir}/nginx-error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 65536; }}
http {{
  access_log off;
  client_max_body_size 64m;
  client_body_buffer_size 64m;
  nchan_max_reserved_memory 512M;
  server {{
    listen {listen};
    listen unix:{self.socket};
    {tls}
    location ~ /sub/(\\w+)$ {{ nchan_subscriber websocket; nchan_channel_id $1; }}
    location ~ /pub/(\\w+)$ {{
      nchan_publisher; nchan_channel_id $1;
      nchan_message_buffer_length 1; nchan_message_timeout 10s;
    }}
  }}
}}
"""
        path = self.workdir / "nginx.conf"
        path.write_text(conf)
        return ["nginx", "-c", str(path), "-p", str(self.workdir), "-e", "stderr"]

    def ready(self) -> None:
        wait_unix(self.socket)

    def subscribe_args(self) -> list[str]:
        return ["--mode", "nchan", "--path-template", "/sub/%s"]

    def publisher(self) -> Publisher:
        return Publisher(
            lambda: UnixHTTPConnection(self.socket, 30),
            lambda ch, data: ("POST", f"/pub/{ch}", data.encode(), {}),
        )


@dataclass
class SoketiServer(Server):
    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            SOKETI_PORT=str(self.port),
            SOKETI_HOST="127.0.0.1",
            SOKETI_DEFAULT_APP_ID=APP_ID,
            SOKETI_DEFAULT_APP_KEY=APP_KEY,
            SOKETI_DEFAULT_APP_SECRET=APP_SECRET,
            SOKETI_DEFAULT_APP_MAX_CONNS="-1",
            SOKETI_DEFAULT_APP_MAX_BACKEND_EVENTS_PER_SEC="-1",
            SOKETI_EVENT_MAX_SIZE_IN_KB=str(64 * 1024),
            SOKETI_METRICS_ENABLED="false",
            SOKETI_HTTP_ACCEPT_TRAFFIC_MEMORY_THRESHOLD="100",
        )
        if self.tls:
            env.update(SOKETI_SSL_CERT=str(self.cert), SOKETI_SSL_KEY=str(self.key))
        return env

    def command(self) -> list[str]:
        return ["node", str(SOKETI_DIR / "node_modules" / ".bin" / "soketi"), "start"]

    def publisher(self) -> Publisher:
        return tcp_signed_publisher(self.port, self.tls)


def require(kind: str) -> str:
    """`kind`, or the benchmark stops naming why that server cannot run here."""
    reason = available(kind)
    if reason:
        raise SystemExit(f"{kind}: {reason}")
    return kind


def available(kind: str) -> str | None:
    """None when the peer can run here, else why not."""
    if (
        kind == "sidecar-baseline"
        and not Path(os.environ.get(BASELINE_ENV, "/nonexistent")).exists()
    ):
        return f"set {BASELINE_ENV} to the sidecar executable of the checkout to compare with"
    if kind == "nchan" and not (NCHAN_MODULE.exists() and shutil.which("nginx")):
        return "nginx with libnginx-mod-nchan is not installed (bash bench/setup.sh)"
    if kind == "soketi" and not (SOKETI_DIR / "node_modules" / "uWebSockets.js").exists():
        return "soketi is not installed (bash bench/setup.sh)"
    return None


@dataclass
class SidecarMetricsServer(SidecarServer):
    """Sidecar with its admin listener and metrics on, scraped once a second."""

    metrics: bool = True


# Before/after in one run: another checkout's `sidecar` (its own venv), e.g.
#   git worktree add --detach /tmp/before <commit> && python3 -m venv /tmp/before/.venv \
#     && /tmp/before/.venv/bin/pip install -e /tmp/before
#   SIDECAR_BASELINE=/tmp/before/.venv/bin/sidecar .venv/bin/python bench/fanout.py \
#     --servers sidecar,sidecar-baseline
BASELINE_ENV = "SIDECAR_BASELINE"


@dataclass
class SidecarBaselineServer(SidecarServer):
    """The same configuration, run by the checkout $SIDECAR_BASELINE names."""

    def executable(self) -> list[str]:
        return [os.environ[BASELINE_ENV]]


KINDS = {
    "sidecar": SidecarServer,
    "sidecar-baseline": SidecarBaselineServer,
    "sidecar-metrics": SidecarMetricsServer,
    "naive": NaiveServer,
    "nchan": NchanServer,
    "soketi": SoketiServer,
}
