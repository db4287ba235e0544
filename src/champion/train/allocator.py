"""Freed memory kept in the process while it trains, instead of handed back to the OS.

A training step allocates and frees the same large buffers (activations, their gradients: MBs each)
hundreds of times an epoch. glibc's malloc serves blocks over its mmap threshold with new mappings
and trims the free top of its heap back to the OS, so each step touches fresh pages that the kernel
must fault in and zero: a plain loop of MNIST's model took 1.6-2.1 million page faults and 7.9-9.7 s
an epoch on 2 cores, and about 10 thousand and 5.8-6.0 s with the two settings below
(bench/allocator.py, docs/benchmarks.md).
"""

from __future__ import annotations

import ctypes
import sys

# mallopt(3) parameters, from glibc's malloc.h.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# glibc refuses an mmap threshold over half its largest heap (32 MiB on 64-bit): blocks larger than
# that are still mapped and unmapped each time, which a training on larger images may still pay.
MMAP_THRESHOLD = 32 << 20
# Free memory at the top of the heap kept for the next step rather than trimmed; the process never
# holds more than its peak, and a training process's peak is what it needs again every step.
TRIM_THRESHOLD = 1 << 30


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed blocks instead of returning them to the OS; whether it took.

    For the rest of the process (a training's evaluation and export reuse the same buffers). On an
    allocator without `mallopt` (macOS, musl) nothing changes and it answers False.
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # mallopt answers 1 when it accepted a value; both are needed (either alone still faults millions of times).
    return mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
