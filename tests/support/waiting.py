"""Waiting in a test for something the code under test does on its own time."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


async def eventually(check: Callable[[], object], timeout: float = 10.0) -> None:
    """Until `check()` is true, polled every 20 ms; fails once `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"not true within {timeout} s"
        await asyncio.sleep(0.02)
