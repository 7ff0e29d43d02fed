"""Several real `sidecar run` nodes meeting in one real redis-server the test owns (issue 11).

Each node is a process of its own in its own folder: its own TLS port, Unix socket and admin
port, and `broker: {kind: redis}` with short timings (a heartbeat of 1 s: a silent node is swept
after about 3 s). Node 1 runs two workers, the others one. They share one certificate (so one
pusher-js driver trusts them all), one app, and one webhook receiver. pusher-js clients are
placed on the node a test names; the app's auth endpoint (tests/support/auth_app.py) signs
their private and presence subscriptions and sign-ins.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import http.client
import json
import os
import secrets
import signal
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pusher
import pytest

from sidecar.api.client import SidecarClient, UnixHTTPConnection
from sidecar.tls.contexts import ensure_self_signed
from tests.support.auth_app import AuthApp
from tests.support.cluster_socket import APP, Socket, open_socket
from tests.support.process import PusherJs, SidecarProcess, free_port, require_node
from tests.support.process_tree import children
from tests.support.pusher_server import server_library
from tests.support.redis_server import RedisServer
from tests.support.webhook_receiver import ALL_KINDS, FAST_WEBHOOKS, Receiver, serve

HEARTBEAT = 1  # seconds; a node is swept after 3 missed heartbeats
WORKERS = (1, 2, 1)  # node 1 runs two workers
LIMITS = {"max_presence_members": 3, "client_events_per_second": 100}


@dataclass
class ClusterNode(SidecarProcess):
    """One node: a `sidecar run` whose broker is the test's Redis."""

    index: int = 0
    cert_dir: Path = field(default_factory=Path)

    @property
    def cert(self) -> Path:
        return self.cert_dir / "localhost.crt"

    def local(self, timeout: float = 5.0) -> SidecarClient:
        """The node's Unix socket (close it, or use it in a `with`)."""
        return SidecarClient(self.socket, app_id=APP["id"], timeout=timeout)

    def signed(self) -> pusher.Pusher:
        """The app's server library pointed at this node's TLS port."""
        return server_library(self, APP)

    def admin(self, path: str) -> tuple[int, Any]:
        """GET on the admin listener: (status, decoded JSON or text)."""
        url = f"http://127.0.0.1:{self.config['admin']['port']}{path}"
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                status, raw = response.status, response.read()
        except urllib.error.HTTPError as refused:
            status, raw = refused.code, refused.read()
        try:
            return status, json.loads(raw)
        except ValueError:
            return status, raw.decode()

    def readyz(self) -> int:
        try:
            return self.admin("/readyz")[0]
        except OSError:
            return 0

    def pids(self) -> list[int]:
        """The supervisor and its workers."""
        assert self.proc is not None
        return [self.proc.pid, *children(self.proc.pid)]

    def signal_all(self, sig: int) -> None:
        """The supervisor and every worker at once (SIGSTOP: the machine froze)."""
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill_all(self) -> None:
        """SIGKILL the supervisor and every worker at once: the machine is gone."""
        self.signal_all(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)


def publish_raw(node: ClusterNode, channel: str, event: str, data: Any, signed: bool) -> Reply:
    """Publish one event without a client library's error handling: status, JSON body, time.

    signed=False: the node's Unix socket; signed=True: the signed API on its TLS port.
    """
    body = json.dumps({"name": event, "channel": channel, "data": json.dumps(data)}).encode()
    path = f"/apps/{APP['id']}/events"
    conn: http.client.HTTPConnection
    if signed:
        path = signed_path(path, body)
        ctx = ssl.create_default_context(cafile=str(node.cert))
        conn = http.client.HTTPSConnection("localhost", node.port, context=ctx, timeout=10)
    else:
        conn = UnixHTTPConnection(node.socket, 10)
    started = time.monotonic()
    try:
        conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    finally:
        conn.close()
    elapsed = time.monotonic() - started
    try:
        decoded = json.loads(raw)
    except ValueError:
        decoded = None
    return Reply(response.status, decoded, elapsed)


@dataclass(frozen=True)
class Reply:
    status: int
    json: Any
    seconds: float


def signed_path(path: str, body: bytes) -> str:
    """The Pusher HTTP API signature (auth_version 1.0) of a POST with this body."""
    params = {
        "auth_key": APP["key"],
        "auth_timestamp": str(int(time.time())),
        "auth_version": "1.0",
        "body_md5": hashlib.md5(body).hexdigest(),
    }
    query = "&".join(f"{k}={v}" for k, v in sorted(params.items()))
    message = f"POST\n{path}\n{query}".encode()
    signature = hmac.new(APP["secret"].encode(), message, hashlib.sha256).hexdigest()
    return f"{path}?{query}&auth_signature={signature}"


class ClusterClients:
    """pusher-js clients by name, each on the node it was connected to."""

    def __init__(self, driver: PusherJs, auth: AuthApp, nodes: list[ClusterNode]) -> None:
        self.driver = driver
        self.auth = auth
        self.nodes = nodes
        self.node_of: dict[str, int] = {}
        self.disconnected: set[str] = set()  # by the test: not a reconnect to look for

    async def connect(self, name: str, node: int, user: str | None = None) -> str:
        options = self.auth.options(self.nodes[node], user or name)
        self.node_of[name] = node
        self.driver.send(cmd="connect", id=name, key=APP["key"], options=options)
        (connected,) = await self.expect(name, "connected")
        return str(connected["socket_id"])

    async def subscribe(self, name: str, channel: str, outcome: str = "subscribed") -> dict:
        self.driver.send(cmd="subscribe", id=name, channel=channel)
        (report,) = await self.expect(name, outcome, channel=channel)
        return report

    def send(self, name: str, cmd: str, **fields: Any) -> None:
        self.driver.send(cmd=cmd, id=name, **fields)

    def disconnect(self, name: str) -> None:
        self.disconnected.add(name)
        self.driver.send(cmd="disconnect", id=name)

    async def expect(
        self, name: str, kind: str, count: int = 1, timeout: float = 15, **fields: Any
    ) -> list[dict]:
        return await self.driver.expect(
            lambda r: r.get("id") == name and r["type"] == kind and matches(r, fields),
            count=count,
            timeout=timeout,
        )

    def reports(self, name: str | None, kind: str, **fields: Any) -> list[dict]:
        return [
            r
            for r in self.driver.reports
            if (name is None or r.get("id") == name) and r["type"] == kind and matches(r, fields)
        ]

    def reconnects(self) -> dict[str, int]:
        """Clients that left the connected state or connected again since their first connect."""
        moved: dict[str, int] = {}
        for name in self.node_of.keys() - self.disconnected:
            again = len(self.reports(name, "connected")) - 1
            left = len([r for r in self.reports(name, "state") if r["previous"] == "connected"])
            if again or left:
                moved[name] = again + left
        return moved


def matches(report: dict[str, Any], fields: dict[str, Any]) -> bool:
    return all(report.get(k) == v for k, v in fields.items())


@dataclass
class RedisCluster:
    """The Redis server, the nodes, the webhook receiver and the pusher-js clients of a test."""

    folder: Path
    redis: RedisServer
    hooks: Receiver
    nodes: list[ClusterNode]
    clients: ClusterClients
    prefix: str
    _sessions: list[aiohttp.ClientSession] = field(default_factory=list)

    async def add_node(self, workers: int = 1) -> ClusterNode:
        """One more node joining the running cluster (it is stopped with the others)."""
        index = len(self.nodes)
        config = node_config(
            self.folder / f"node{index}",
            self.redis.url,
            self.prefix,
            self.hooks,
            workers,
        )
        self.nodes.append(await asyncio.to_thread(start_node, self.folder, index, config))
        return self.nodes[-1]

    async def socket(self, node: int) -> Socket:
        """A raw WebSocket on `node` (for what pusher-js hides: exact frames and timing)."""
        session = aiohttp.ClientSession()
        self._sessions.append(session)
        return await open_socket(session, self.nodes[node])

    async def eventually(self, check: Callable[[], Any], timeout: float = 15) -> float:
        """Seconds until `check()` is true (sync; exceptions count as not yet); fails after."""
        started = time.monotonic()
        last: Any = None
        while time.monotonic() - started < timeout:
            try:
                last = await asyncio.to_thread(check)
            except Exception as exc:  # a refused query during recovery: not yet
                last = exc
            if last and not isinstance(last, Exception):
                return time.monotonic() - started
            await asyncio.sleep(0.1)
        raise AssertionError(f"not true after {timeout}s: {last!r}")

    def redis_keys(self) -> list[str]:
        """The keys of this cluster's prefix in Redis (a check, never the nodes' own reading)."""
        answer = self.redis.command("KEYS", f"{self.prefix}*").decode(errors="replace")
        return [line for line in answer.split("\r\n")[1:] if line and not line.startswith("$")]

    async def close(self) -> None:
        for session in self._sessions:
            await session.close()


def node_config(
    folder: Path, redis_url: str, prefix: str, hooks: Receiver, workers: int
) -> dict[str, Any]:
    # One development certificate for every node (made here once, reused by each), so one
    # pusher-js driver trusts them all.
    certs = folder.parent / "certs"
    ensure_self_signed(certs)
    app = {**APP, "webhooks": [{"url": hooks.url, "events": ALL_KINDS}]}
    return {
        "listen": {"host": "127.0.0.1", "port": free_port()},
        "http": {"port": None},
        "admin": {"host": "127.0.0.1", "port": free_port()},
        "tls": {"mode": "self-signed", "dir": str(certs)},
        "publish": {"socket": "sidecar.sock"},
        "apps": [app],
        "broker": {"kind": "redis", "url": redis_url, "prefix": prefix, "heartbeat": HEARTBEAT},
        "workers": workers,
        "webhooks": FAST_WEBHOOKS,
        "limits": LIMITS,
        "shutdown": {"deadline": 2},
    }


def start_node(cluster_folder: Path, index: int, config: dict[str, Any]) -> ClusterNode:
    folder = cluster_folder / f"node{index}"
    folder.mkdir(parents=True, exist_ok=True)
    node = ClusterNode(folder, config, index=index, cert_dir=cluster_folder / "certs")
    node.start(timeout=30)
    wait_ready(node)
    return node


def wait_ready(node: ClusterNode, timeout: float = 20) -> None:
    """Until /readyz says 200: the node has joined the cluster (Redis reached, state restored)."""
    deadline = time.monotonic() + timeout
    while node.readyz() != 200:
        assert node.proc is not None
        if node.proc.poll() is not None:
            raise RuntimeError(f"node {node.index} exited {node.proc.returncode}: {node.stderr()}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"node {node.index} not ready: {node.admin('/readyz')}")
        time.sleep(0.1)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[RedisCluster]:
    """A test's own cluster (its tests drive pusher-js: skipped loudly without node)."""
    require_node()
    async with redis_cluster(tmp_path) as started:
        yield started


@contextlib.asynccontextmanager
async def redis_cluster(folder: Path) -> AsyncIterator[RedisCluster]:
    """Redis, then the nodes one after another (each ready before the next), the webhook
    receiver, the auth app and one pusher-js driver; everything stopped at the end."""
    folder.mkdir(parents=True, exist_ok=True)
    redis = RedisServer(folder / "redis").start()
    hooks = Receiver()
    runner = await serve(hooks)
    auth = await AuthApp(APP).start()
    prefix = f"t{secrets.token_hex(4)}"
    nodes: list[ClusterNode] = []
    driver: PusherJs | None = None
    cluster: RedisCluster | None = None
    try:
        for index, count in enumerate(WORKERS):
            config = node_config(folder / f"node{index}", redis.url, prefix, hooks, count)
            nodes.append(await asyncio.to_thread(start_node, folder, index, config))
        driver = await PusherJs.start(nodes[0].cert)
        cluster = RedisCluster(
            folder, redis, hooks, nodes, ClusterClients(driver, auth, nodes), prefix
        )
        yield cluster
    finally:
        if cluster is not None:
            await cluster.close()
        if driver is not None:
            await driver.close()
        with contextlib.suppress(ProcessLookupError, AssertionError):
            redis.cont()  # a test that failed while Redis was paused
        await asyncio.gather(*(asyncio.to_thread(node.stop, timeout=10) for node in nodes))
        redis.close()
        await auth.close()
        await runner.cleanup()
