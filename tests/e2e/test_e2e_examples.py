"""The examples as a user runs them: examples/puma and examples/unicorn behind the real sidecar.

Each test starts `sidecar run` with the example's own sidecar.yaml (only the TLS and admin
ports changed, so tests run side by side), the Ruby server with the example's own config,
both from one folder as the example's README says, and opens `https://localhost:<port>/` in
headless Chromium: the page, /pusher/auth and the WebSocket all come through the sidecar. A
button's request publishes three events (one of 1 MB) over the Unix socket with the Ruby
client; the pages must show them, and two pages must see each other on the presence channel.
Screenshots are kept in tests/artifacts/puma.png and unicorn.png.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.chromium import Chromium, require_chromium
from tests.support.process import (
    ROOT,
    SidecarProcess,
    free_port,
    missing_tool,
    require_node,
)

pytestmark = [pytest.mark.e2e, pytest.mark.chromium]

EXAMPLES = ROOT / "examples"
ARTIFACTS = ROOT / "tests" / "artifacts"
BIG_EVENT_BYTES = 1024 * 1024
UNICORN_WORKERS = 4
# The Ruby server of each example and how it is started from the example's folder.
SERVERS = {
    "puma": ["puma", "-C", str(EXAMPLES / "puma" / "puma.rb")],
    "unicorn": [
        "unicorn",
        "-c",
        str(EXAMPLES / "unicorn" / "unicorn.rb"),
        str(EXAMPLES / "unicorn" / "config.ru"),
    ],
}


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        missing_tool(
            f"{name} is not installed: apt-get install ruby ruby-rack puma unicorn",
            " (tests/run.sh installs it)",
        )
    return path


def example_config(name: str) -> dict[str, Any]:
    """The example's sidecar.yaml with free ports, everything else as a user gets it."""
    config = yaml.safe_load((EXAMPLES / name / "sidecar.yaml").read_text())
    config["listen"]["port"] = free_port()
    config["admin"] = {"host": "127.0.0.1", "port": free_port()}
    return config


def upstream_socket(config: dict[str, Any]) -> str:
    url = config["upstream"]["url"]
    assert url.startswith("unix:")
    return url.removeprefix("unix:")


@dataclass
class RubyServer:
    proc: subprocess.Popen[bytes]
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


@contextlib.contextmanager
def ruby_server(name: str, folder: Path, app_socket: Path) -> Iterator[RubyServer]:
    require_program("ruby")
    require_program(SERVERS[name][0])
    log = folder / f"{name}.log"
    proc = subprocess.Popen(
        SERVERS[name],
        cwd=folder,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "RACK_ENV": "production"},
    )
    server = RubyServer(proc, log)
    try:
        deadline = time.monotonic() + 30
        while not accepts(app_socket):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {server.output()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def accepts(path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(str(path))
    except OSError:
        return False
    return True


@dataclass
class Stack:
    sidecar: SidecarProcess
    app: RubyServer

    def url(self, visitor: str) -> str:
        return f"https://localhost:{self.sidecar.port}/?name={visitor}"


@contextlib.asynccontextmanager
async def example_stack(name: str, folder: Path) -> AsyncIterator[Stack]:
    require_chromium()
    require_node()  # pusher-js, which the example app serves from tests/support/node
    folder.mkdir(parents=True, exist_ok=True)
    config = example_config(name)
    sidecar = SidecarProcess(folder, config)
    sidecar.start()
    try:
        with ruby_server(name, folder, folder / upstream_socket(config)) as app:
            yield Stack(sidecar, app)
    finally:
        sidecar.stop()


async def open_page(profile: Path, url: str) -> Chromium:
    """A browser on the example's page, signed in as the visitor the url names.

    The sidecar's development certificate is self-signed: this browser is told to accept it,
    as a developer clicks through the warning once (or trusts tmp/certs/localhost.crt).
    """
    browser = await Chromium.start(profile, width=1200, height=860)
    try:
        await browser.send("Security.setIgnoreCertificateErrors", ignore=True)
        await browser.navigate(url)
        await browser.wait_for("typeof demo === 'object' && demo.state === 'connected'", 30)
        await browser.wait_for(
            "['demo', 'private-demo', 'presence-demo'].every(c => demo.subscribed[c])"
        )
    except AssertionError as exc:
        state = await browser.evaluate("JSON.stringify(window.demo)")
        await browser.close()
        raise AssertionError(f"{exc}; the page: {state}") from None
    except BaseException:
        await browser.close()
        raise
    return browser


async def both_see_each_other(alice: Chromium, bob: Chromium) -> None:
    for page in (alice, bob):
        await page.wait_for("demo.members.join(',') === 'alice,bob'")
        assert await page.evaluate("document.getElementById('members').textContent.trim()")


async def published_and_seen(page: Chromium, count: int) -> list[dict[str, Any]]:
    """The app's answers to `count` publishes, once the page has every event they sent."""
    await page.wait_for(f"demo.published.length + demo.publishErrors.length >= {count}", 60)
    assert await page.evaluate("demo.publishErrors") == []
    await page.wait_for(f"demo.big.length >= {count}", 60)
    await page.wait_for(
        f"demo.events.filter(e => e.event === 'hello').length >= {count}"
        f" && demo.events.filter(e => e.event === 'note').length >= {count}",
        30,
    )
    return await page.evaluate("demo.published")


async def assert_big_events_intact(page: Chromium, replies: list[dict[str, Any]]) -> None:
    """Each 1 MB event the page got is the one the app published: length and SHA-256."""
    seen = {(b["pid"], b["n"]): b for b in await page.evaluate("demo.big")}
    for reply in replies:
        assert reply["bytes"] == BIG_EVENT_BYTES
        big = seen[(reply["pid"], reply["n"])]
        assert (big["length"], big["sha256"]) == (BIG_EVENT_BYTES, reply["sha256"])


async def test_puma_example_in_a_browser(tmp_path: Path) -> None:
    async with example_stack("puma", tmp_path / "puma") as stack:
        alice = await open_page(tmp_path / "alice", stack.url("alice"))
        bob = None
        try:
            bob = await open_page(tmp_path / "bob", stack.url("bob"))
            await both_see_each_other(alice, bob)

            await alice.evaluate("document.getElementById('publish').click()")
            replies = await published_and_seen(alice, 1)
            await assert_big_events_intact(alice, replies)
            await bob.wait_for("demo.big.length === 1", 30)
            await assert_big_events_intact(bob, replies)
            assert (
                await alice.evaluate("demo.events.find(e => e.event === 'hello').pid")
                == (replies[0]["pid"])
            )
            shown = await alice.evaluate("document.getElementById('last-publish').textContent")
            assert "1,048,576 bytes" in shown and replies[0]["sha256"][:16] in shown

            # Threads: several requests at once, all published by the one Puma process.
            await alice.evaluate("demo.publishMany(6), true")
            replies = await published_and_seen(alice, 7)
            await assert_big_events_intact(alice, replies)
            assert {r["pid"] for r in replies} == {stack.app.proc.pid}

            await alice.screenshot(ARTIFACTS / "puma.png")
            await bob.close()
            bob = None
            await alice.wait_for("demo.members.join(',') === 'alice'")
        finally:
            await alice.close()
            if bob is not None:
                await bob.close()


async def test_unicorn_example_every_worker_publishes(tmp_path: Path) -> None:
    async with example_stack("unicorn", tmp_path / "unicorn") as stack:
        alice = await open_page(tmp_path / "alice", stack.url("alice"))
        bob = None
        try:
            bob = await open_page(tmp_path / "bob", stack.url("bob"))
            await both_see_each_other(alice, bob)

            # Requests at once land on different workers; press until all four published.
            pids: set[int] = set()
            published = 0
            for _ in range(12):
                await alice.evaluate("demo.publishMany(8), true")
                published += 8
                replies = await published_and_seen(alice, published)
                pids = {r["pid"] for r in replies}
                if len(pids) == UNICORN_WORKERS:
                    break
            assert len(pids) == UNICORN_WORKERS, f"only {pids} published: {stack.app.output()}"
            # They are the master's workers (forked after it made the client and used it).
            master = stack.app.proc.pid
            assert master not in pids
            assert all(parent_of(pid) == master for pid in pids)
            await assert_big_events_intact(alice, replies)
            hello_pids = await alice.evaluate(
                "[...new Set(demo.events.filter(e => e.event === 'hello').map(e => e.pid))]"
            )
            assert set(hello_pids) == pids
            await bob.wait_for(f"demo.big.length >= {published}", 60)
            await assert_big_events_intact(bob, replies)

            await alice.screenshot(ARTIFACTS / "unicorn.png")
        finally:
            await alice.close()
            if bob is not None:
                await bob.close()


def parent_of(pid: int) -> int:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])
