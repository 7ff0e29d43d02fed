"""How a serving process keeps its memory: the collector's thresholds and glibc's heap.

Done once per process (`tune_memory`, by sidecar/server/single.py and worker.py) and, while it
serves, a `HeapTrimmer` that hands freed heap pages back to the system when enough are held.
On a C library other than glibc (musl, macOS) only the collector is tuned.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("sidecar.memory")

# A full (generation 2) collection walks every live object: 30-190 ms with 10,000 subscribed
# connections open (bench/attacks.py gc-pause, a busy 2-core machine). At Python's default
# third threshold (10) a storm of 10,000 TLS connects ran five, 472 ms of its 5.4 s of CPU, the
# last one the storm's longest stall (176 ms; bench/reconnect_storm.py, issue 14). At 100, one
# needs 700,000 allocations since the last (and, as always, a quarter more long-lived objects):
# none in such a storm. Rarer full collections only matter for cyclic garbage that lived long
# first; closed connections are not that, they are freed by reference counting as they close
# (tests/unit/engine/test_connection_memory.py; it was +171 MB after 30,000 TLS cycles when
# each was a cycle, issue 13). Young garbage cycles are still collected by the first two.
GC_THRESHOLDS = (700, 10, 100)

# glibc serves a freed large block's size from its heap from then on (its mmap threshold rises
# up to 32 MiB), and uvloop allocated a 256 KiB read buffer for every TLS connection (the
# browser port's TLS is now sidecar/batched_tls.py, with one shared buffer; aiohttp and big
# events still make such blocks): with clients coming and going, the heap fragments and its
# pages stay resident (bench/soak.py: the workers' [heap] grew while Python's own objects
# stayed flat; malloc_trim gave most of it back). Fixed at 128 KiB, each such buffer is a
# mapping of its own, returned when it is freed.
MMAP_THRESHOLD = 128 * 1024
_M_MMAP_THRESHOLD = -3  # malloc.h

# What is left after that: freed small blocks in the middle of the heap (connections' objects,
# OpenSSL's per-connection state) that glibc keeps resident until something below its top is
# freed too. Churn of thousands of connections leaves tens of MB of them per worker, growing
# for an hour (bench/soak.py: +186 MiB/h with the threshold fixed). malloc_trim(0) returns their
# pages (madvise), keeping the address space; it walks the heap, so it runs only when enough is
# held free, and at most every TRIM_INTERVAL seconds.
TRIM_INTERVAL = 30.0
TRIM_WHEN_FREE = 16 * 1024 * 1024


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena",
            "ordblks",
            "smblks",
            "hblks",
            "hblkhd",
            "usmblks",
            "fsmblks",
            "uordblks",
            "fordblks",
            "keepcost",
        )
    ]


def _glibc(libc_name: str | None) -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL(libc_name)
        libc.mallopt  # noqa: B018  (glibc has it; musl and macOS do not)
    except (OSError, AttributeError):
        return None
    return libc


def tune_memory(libc_name: str | None = "libc.so.6") -> HeapTrimmer | None:
    """The collector's thresholds, what exists so far frozen and, on glibc, the allocator's
    mmap threshold; with a running event loop, a HeapTrimmer started on it (None without
    glibc)."""
    gc.set_threshold(*GC_THRESHOLDS)
    # What exists by now (modules, classes, the configuration: ~70,000 objects) lives as long
    # as the process. Frozen, no full collection walks it again (~28 ms each); collected
    # first, so no garbage is kept for good.
    gc.collect()
    gc.freeze()
    if not set_mmap_threshold(MMAP_THRESHOLD, libc_name):
        return None
    trimmer = HeapTrimmer.for_libc(libc_name)
    if trimmer is not None:
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return trimmer
        trimmer.start()
    return trimmer


def set_mmap_threshold(size: int, libc_name: str | None = "libc.so.6") -> bool:
    """True when glibc took it; elsewhere (musl, macOS) nothing to do."""
    libc = _glibc(libc_name)
    if libc is None:
        return False
    mallopt = libc.mallopt
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, size))


class HeapTrimmer:
    """Every `interval` seconds, if glibc holds at least `when_free` bytes free in its heaps,
    gives their pages back (malloc_trim). `trims` and `longest_pause` say what it cost."""

    def __init__(
        self,
        free_bytes: Callable[[], Any],
        trim: Callable[[int], int],
        interval: float = TRIM_INTERVAL,
        when_free: int = TRIM_WHEN_FREE,
    ) -> None:
        self._free_bytes = free_bytes
        self._trim = trim
        self.interval = interval
        self.when_free = when_free
        self.trims = 0
        self.longest_pause = 0.0
        self._handle: asyncio.TimerHandle | None = None

    @classmethod
    def for_libc(
        cls,
        libc_name: str | None = "libc.so.6",
        interval: float = TRIM_INTERVAL,
        when_free: int = TRIM_WHEN_FREE,
    ) -> HeapTrimmer | None:
        libc = _glibc(libc_name)
        if libc is None or not hasattr(libc, "mallinfo2") or not hasattr(libc, "malloc_trim"):
            return None  # glibc before 2.33
        libc.mallinfo2.restype = _Mallinfo2
        libc.malloc_trim.argtypes = (ctypes.c_size_t,)
        libc.malloc_trim.restype = ctypes.c_int
        return cls(libc.mallinfo2, libc.malloc_trim, interval, when_free)

    def held_free(self) -> int:
        """Bytes glibc holds free in its heaps (not in mappings of their own)."""
        return int(self._free_bytes().fordblks)

    def trim_if_worth_it(self) -> bool:
        if self.held_free() < self.when_free:
            return False
        started = time.perf_counter()
        self._trim(0)
        pause = time.perf_counter() - started
        self.trims += 1
        self.longest_pause = max(self.longest_pause, pause)
        log.debug("heap trimmed", extra={"pause_ms": round(pause * 1000, 2)})
        return True

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_later(self.interval, self._tick)

    def _tick(self) -> None:
        try:
            self.trim_if_worth_it()
        finally:
            self.start()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
