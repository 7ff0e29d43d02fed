"""A running sidecar's process tree read from /proc: its workers' pids and resident memory."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # bench/webhook_memory.py reads memory without the test process helpers
    from tests.support.process import SidecarProcess


def worker_pids(sidecar: SidecarProcess) -> list[int]:
    assert sidecar.proc is not None
    pid = sidecar.proc.pid
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]


def rss_bytes(pid: int) -> int:
    """Resident memory of the sidecar and its worker processes."""
    total = 0
    for child in [pid, *children(pid)]:
        with open(f"/proc/{child}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
    return total


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(p) for p in f.read().split()]
