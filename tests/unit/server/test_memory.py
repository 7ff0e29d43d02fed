"""Process tuning done once per process (sidecar/server/memory.py)."""

from __future__ import annotations

import gc
import subprocess
import sys

from sidecar.server.memory import (
    GC_THRESHOLDS,
    MMAP_THRESHOLD,
    HeapTrimmer,
    set_mmap_threshold,
    tune_memory,
)


def test_large_blocks_get_mappings_of_their_own_once_tuned() -> None:
    # In a process of its own: a freed large block first raises glibc's threshold, so that
    # later 256 KiB blocks (uvloop's TLS buffers) would come from the heap and fragment it.
    probe = """
import ctypes, sys
from sidecar.server.memory import MMAP_THRESHOLD, set_mmap_threshold
class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
        "fordblks", "keepcost")]
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
libc.mallinfo2.restype = Mallinfo2
libc.free(libc.malloc(1 << 20))  # raises the dynamic threshold past 256 KiB
if sys.argv[1] == "tuned":
    assert set_mmap_threshold(MMAP_THRESHOLD)
before = libc.mallinfo2().hblkhd
blocks = [libc.malloc(256 * 1024) for _ in range(64)]  # a TLS read buffer each
print((libc.mallinfo2().hblkhd - before) // 1024)  # KiB in mappings of their own
"""
    mapped_kib = {
        mode: int(
            subprocess.run(
                [sys.executable, "-c", probe, mode], capture_output=True, text=True, check=True
            ).stdout
        )
        for mode in ("default", "tuned")
    }
    assert mapped_kib["tuned"] >= 12 * 1024 > 4 * 1024 > mapped_kib["default"]  # of 16 MiB


def test_no_glibc_no_tuning() -> None:
    assert set_mmap_threshold(MMAP_THRESHOLD, "libc-that-is-not-here.so") is False


def test_the_trimmer_gives_free_heap_pages_back() -> None:
    # In a process of its own: many small blocks freed in the middle of the heap stay resident
    # (glibc trims only the heap's top) until malloc_trim hands their pages back.
    probe = """
import ctypes
from sidecar.server.memory import HeapTrimmer
def rss_kib():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS:"))
libc = ctypes.CDLL("libc.so.6")
libc.malloc.restype = ctypes.c_void_p
libc.malloc.argtypes = (ctypes.c_size_t,)
libc.free.argtypes = (ctypes.c_void_p,)
trimmer = HeapTrimmer.for_libc(when_free=8 << 20)
blocks = [libc.malloc(4000) for _ in range(20000)]  # ~80 MB of small blocks
for b in blocks:
    ctypes.memset(b, 1, 4000)
keep = blocks[-1]  # the top stays in use: free pages below it are not trimmed by free()
for b in blocks[:-1]:
    libc.free(b)
before = rss_kib()
held = trimmer.held_free()
assert trimmer.trim_if_worth_it()
print(held // 1024, before, rss_kib(), trimmer.trims)
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    held_kib, before_kib, after_kib, trims = map(int, out.split())
    assert held_kib > 60 * 1024
    assert before_kib - after_kib > 50 * 1024
    assert trims == 1


def test_the_trimmer_leaves_a_heap_with_little_free_alone() -> None:
    trimmer = HeapTrimmer.for_libc(when_free=1 << 40)
    assert trimmer is not None
    assert trimmer.trim_if_worth_it() is False
    assert trimmer.trims == 0


async def test_tune_memory_starts_the_trimmer_on_the_running_loop() -> None:
    trimmer = tune_memory()
    assert trimmer is not None
    try:
        assert trimmer._handle is not None
        assert gc.get_threshold() == GC_THRESHOLDS
    finally:
        trimmer.stop()
        gc.unfreeze()  # the test process's own objects, frozen by the call
    assert tune_memory("libc-that-is-not-here.so") is None
    gc.unfreeze()


def test_what_exists_when_tuned_is_frozen_and_garbage_first_collected() -> None:
    probe = """
import gc, weakref
from sidecar.server import memory
class Cycle:
    pass
garbage = Cycle(); garbage.me = garbage; gone = weakref.ref(garbage); del garbage
gc.disable()  # only tune_memory collects
memory.tune_memory("libc-that-is-not-here.so")
later = Cycle(); later.me = later
print(gc.get_freeze_count(), gone() is None, later in gc.get_objects())
"""
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout.split()
    assert int(out[0]) > 1000  # the modules imported, at least
    assert out[1] == "True"  # the cycle made before was collected, not frozen for good
    assert out[2] == "True"  # what is made later is tracked, and collectable, as ever
