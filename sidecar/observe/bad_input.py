"""Bad input from clients: one info line each, rate-limited, and a counter for the metrics.

A malformed request, a refused WebSocket handshake or a bad frame is the client's doing, not
the server's: it is logged at info with the peer's address and a reason from a fixed set of
strings (never the bytes received, which may carry a signature or a token), at most
`LINES_PER_SECOND` lines a second; the lines held back are summed up in one line when the
second is over. Every one is counted by kind (`sidecar_bad_input_total{kind}`), whatever the
log shows.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from sidecar.observe.snapshot import key

log = logging.getLogger("sidecar.bad_input")

Kind = Literal["request", "upgrade", "frame"]
# request: an HTTP request aiohttp's parser refused; upgrade: a WebSocket handshake refused
# at the edge; frame: a WebSocket frame the relay refused.
KINDS: tuple[Kind, ...] = ("request", "upgrade", "frame")
# Enough to see what is going on; a flood of bad input costs one summary line a second.
LINES_PER_SECOND = 20


class BadInputLog:
    """Counts every report; logs the first `per_second` of each second, then a summary."""

    def __init__(
        self, per_second: int = LINES_PER_SECOND, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.per_second = per_second
        self.clock = clock
        self.counts: dict[str, int] = dict.fromkeys(KINDS, 0)
        self._second = -1.0
        self._lines = 0
        self.held_back = 0  # lines not written in the current second
        self._summary: asyncio.TimerHandle | None = None

    def report(self, kind: Kind, peer: str | None, reason: str) -> None:
        self.counts[kind] += 1
        now = self.clock()
        if now - self._second >= 1.0:
            self.flush()
            self._second, self._lines = now, 0
        if self._lines < self.per_second:
            self._lines += 1
            log.info("bad input", extra={"kind": kind, "peer": peer, "reason": reason})
            return
        self.held_back += 1
        if self.held_back == 1:
            self._schedule_summary(self._second + 1.0 - now)

    def flush(self) -> None:
        """The summary of the lines held back, if any."""
        if self._summary is not None:
            self._summary.cancel()
            self._summary = None
        if self.held_back:
            log.info("bad input lines held back", extra={"count": self.held_back, "seconds": 1})
            self.held_back = 0

    def _schedule_summary(self, delay: float) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a test): the summary comes with the next report
            return
        self._summary = loop.call_later(max(delay, 0.0), self.flush)

    def write(self, counters: dict[Any, float]) -> None:
        for kind, n in self.counts.items():
            counters[key("bad_input", kind=kind)] = n


# This process's: its count goes into the process's snapshot (a worker's is merged with the
# others' by the supervisor).
BAD_INPUT = BadInputLog()


def peer_address(transport: asyncio.BaseTransport | None) -> str | None:
    """The peer's IP address; None when unknown (the log of bad input never fails itself:
    a transport without get_extra_info, a test's stand-in, is one that does not know)."""
    extra = getattr(transport, "get_extra_info", None)
    peer = extra("peername") if extra is not None else None
    return peer[0] if isinstance(peer, tuple) and peer else None


def bad_input(kind: Kind, transport: asyncio.BaseTransport | None, reason: str) -> None:
    """Report bad input from the client on `transport`: `reason` is a fixed string."""
    BAD_INPUT.report(kind, peer_address(transport), reason)
