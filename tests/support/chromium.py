"""Headless Chromium (Debian's `chromium`) driven over the DevTools protocol, for page tests."""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import shutil
import time
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.process import missing_tool

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--remote-debugging-port=0",
)


def require_chromium() -> str:
    exe = shutil.which("chromium")
    if exe is None:
        missing_tool("chromium is not installed: apt-get install chromium (tests/run.sh does)")
    return exe


class Chromium:
    def __init__(self, proc: asyncio.subprocess.Process, profile: Path) -> None:
        self.proc = proc
        self.profile = profile
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._ids = itertools.count(1)

    @classmethod
    async def start(cls, profile: Path, width: int = 1280, height: int = 900) -> Chromium:
        exe = require_chromium()
        profile.mkdir(parents=True, exist_ok=True)
        log = (profile / "chromium.log").open("wb")
        proc = await asyncio.create_subprocess_exec(
            exe,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            "about:blank",
            stdout=log,
            stderr=log,
        )
        browser = cls(proc, profile)
        try:
            await browser._attach(width, height)
        except BaseException:
            await browser.close()
            raise
        return browser

    async def _attach(self, width: int, height: int) -> None:
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.exists() or not port_file.read_text().strip():
            if self.proc.returncode is not None or time.monotonic() > deadline:
                log = (self.profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"chromium did not start: {log}")
            await asyncio.sleep(0.05)
        port = int(port_file.read_text().split()[0])
        self._session = aiohttp.ClientSession()
        page = None
        while page is None:
            async with self._session.get(f"http://127.0.0.1:{port}/json/list") as response:
                targets = await response.json()
            page = next((t for t in targets if t.get("type") == "page"), None)
            if page is None:
                if time.monotonic() > deadline:
                    raise RuntimeError("chromium has no page")
                await asyncio.sleep(0.05)
        self._ws = await self._session.ws_connect(page["webSocketDebuggerUrl"], max_msg_size=0)
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        assert self._ws is not None
        ident = next(self._ids)
        await self._ws.send_str(json.dumps({"id": ident, "method": method, "params": params}))
        while True:
            message = json.loads(await self._ws.receive_str(timeout=30))
            if message.get("id") == ident:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True)
        return result.get("result", {}).get("value")

    async def wait_for(self, expression: str, timeout: float = 15.0) -> Any:
        """Evaluate until the value is truthy; the value (or AssertionError with the last)."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{expression} still {value!r} after {timeout}s")
            await asyncio.sleep(0.1)

    async def screenshot(self, path: Path) -> None:
        result = await self.send("Page.captureScreenshot", format="png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(result["data"]))

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self.proc.returncode is None:
            self.proc.terminate()
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
