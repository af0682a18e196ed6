"""Keep freed heap memory in the process instead of handing it back to the kernel.

By default glibc serves large allocations (above a threshold it adapts between 128 KiB and
32 MiB) with fresh `mmap`s and returns freed memory to the kernel, so a new tensor of a few
megabytes has to fault in its pages again, and page faults are slow in virtual machines.
Inference and training allocate the same sizes every frame or step, so keeping the memory is
faster and bounded by the largest working set. Measured on a 2-core VM (`python -m
bench.allocator`, two runs): converting a rig's six decoded images to float and scaling them,
in the main thread, 6.7 / 7.9 ms -> 0.4 / 0.7 ms; the CPU demo model's forward pass 139 -> 123
and 145 -> 147 ms, i.e. no change beyond the noise. Threads other than the main one allocate
from their own arenas, where the defaults did not fault pages in here either, so the gain is
the main thread's: the training loader's worker processes assemble samples there.

Only glibc's allocator is tuned; elsewhere (macOS, musl) this does nothing.
"""
from __future__ import annotations

import ctypes
import sys

M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's malloc.h
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper limit on 64-bit systems
TRIM_THRESHOLD_BYTES = 1024 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Serve allocations up to 32 MiB from the heap and keep up to 1 GiB of freed memory at
    its top. Returns whether glibc accepted the settings. Call once, early in a main()."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return (mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1
            and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1)
