"""Process tuning done once per process (sidecar/server/prepare.py)."""

from __future__ import annotations

import subprocess
import sys

from sidecar.server.prepare import MMAP_THRESHOLD, set_mmap_threshold


def test_large_blocks_get_mappings_of_their_own_once_tuned() -> None:
    # In a process of its own: a freed large block first raises glibc's threshold, so that
    # later 256 KiB blocks (uvloop's TLS buffers) would come from the heap and fragment it.
    probe = """
import ctypes, sys
from sidecar.server.prepare import MMAP_THRESHOLD, set_mmap_threshold
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
