"""Keep freed memory in the process's heap while it trains (glibc's malloc).

A run's large temporaries (the EM's users × runs·C posteriors, 46 MB at 30,000 users; the bootstrap's blocks)
are freed and allocated again every round. glibc serves any block above its mmap threshold (at most 32 MB,
adjusted on the fly) with fresh pages from the kernel, and trims freed memory at the top of the heap back to it,
so every round paid the page faults of zeroing those pages again: 2.9 million faults and 9.5 s of system time
in the cluster step of a 30,000 × 32 run (issue 24). Raising both thresholds keeps that memory in the heap for
the next round: the same arithmetic, no faults. The cost is that freed memory stays the process's: blocks from
256 MB up are still mapped and unmapped each time (at 300,000 users keeping them raised the peak from 5.3 to
8.0 GiB), and at most 512 MB of free heap is kept. Runs happen in the CLI's and the workers' own processes, which
end with the run.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

__all__ = ["keep_freed_memory"]

#: Blocks below this come from the heap (glibc's default is dynamic, at most 32 MB).
MMAP_THRESHOLD = 256 << 20
#: Free memory at the top of the heap is given back to the kernel only above this.
TRIM_THRESHOLD = 512 << 20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameter numbers (malloc.h)


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds for this process (once); False where there is no glibc."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (musl, macOS): its allocator is left as it is
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
