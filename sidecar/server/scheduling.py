"""The CPU time slice each process asks the kernel for: long for workers, short for the supervisor.

Linux's scheduler (EEVDF, 6.6 and later) lets the process running on a core finish its time
slice (~1.4 ms here, 0.7 ms times 1 + log2 of the cores) before one that has just woken gets the
core, unless the woken one asked for a shorter slice than the running one's (6.12 and later:
`sched_setattr` with `sched_runtime` for an ordinary process; no privilege needed). Workers busy
fanning out run for long stretches; the app that publishes and the supervisor that acknowledges
sleep between publishes and each waited for the rest of a worker's slice at every wake-up. So
workers ask for a long slice (any process woken on their core with the default one runs first)
and the supervisor, whose work a publish is tens of microseconds, for the shortest: at 1,000
publishes/s to 5,000 subscribers with 2 workers, the acknowledgement p99 went from 2,486 to
1,607 µs, median of 7 runs side by side, lower in each (bench/ack_latency.py; bench/RESULTS.md).

Where the kernel lacks it (an older one, another system or machine), nothing changes.
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import struct

log = logging.getLogger("sidecar.scheduling")

WORKER_SLICE = 0.004
SUPERVISOR_SLICE = 0.0001  # the least the kernel grants
# sched_setattr's number where the project runs (Linux on x86-64, or on 64-bit ARM).
SCHED_SETATTR = {"x86_64": 314, "aarch64": 274}
# struct sched_attr as of Linux 4.13 (SCHED_ATTR_SIZE_VER1): size, policy, flags, nice, priority,
# runtime, deadline, period (ns), utilisation clamps. SCHED_OTHER is policy 0.
SCHED_ATTR = struct.Struct("=IIQiIQQQII")


def set_time_slice(seconds: float) -> bool:
    """Ask for this time slice for the calling process (its nice value kept); False, logged
    at debug, where the system does not take it. Never raises."""
    number = SCHED_SETATTR.get(platform.machine())
    if number is None or not hasattr(os, "getpriority"):
        return False
    try:
        nice = os.getpriority(os.PRIO_PROCESS, 0)
        attr = SCHED_ATTR.pack(SCHED_ATTR.size, 0, 0, nice, 0, round(seconds * 1e9), 0, 0, 0, 0)
        libc = ctypes.CDLL(None, use_errno=True)
        if libc.syscall(number, 0, ctypes.c_char_p(attr), 0) == 0:
            return True
        error = ctypes.get_errno()
        reason = os.strerror(error)
    except (OSError, AttributeError) as exc:  # no libc to load, or no syscall() in it
        reason = str(exc)
    log.debug("time slice not set", extra={"seconds": seconds, "reason": reason})
    return False
