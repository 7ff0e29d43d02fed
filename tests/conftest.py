from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.process import PusherJs, SidecarProcess, base_config
from tests.support.redis_server import redis_server
from tests.support.relay_clients import make_client, relay

# The relay with recording clients, for every unit test that does not define its own `relay`;
# a redis-server of the test's own (tests/support/redis_server.py).
__all__ = ["make_client", "redis_server", "relay"]


@pytest.fixture
def start_sidecar(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start real `sidecar run` processes; each is stopped at the end of the test.

    `wait=False` returns as soon as the process is started (SidecarProcess.wait_ready later).
    """
    started: list[SidecarProcess] = []

    def start(workdir: Path | None = None, *, wait: bool = True, **config: Any) -> SidecarProcess:
        folder = workdir or tmp_path / f"sidecar{len(started)}"
        folder.mkdir(parents=True, exist_ok=True)
        process = SidecarProcess(folder, base_config(folder, **config))
        started.append(process)
        return process.start() if wait else process.launch()

    yield start
    for process in started:
        process.stop()


@pytest.fixture
def sidecar(start_sidecar: Callable[..., SidecarProcess]) -> SidecarProcess:
    return start_sidecar()


@pytest.fixture
async def pusher_js(sidecar: SidecarProcess) -> AsyncIterator[PusherJs]:
    driver = await PusherJs.start(sidecar.cert)
    yield driver
    await driver.close()
