"""Keep large array buffers in the process heap, so a training step reuses memory instead of faulting it in.

glibc serves every allocation above a threshold (128 KiB, adapting up to 32 MiB) with
a fresh mmap and unmaps it on free; each step of a CNN then page-faults tens of MB of
new temporaries. Raising the mmap threshold to its maximum and keeping freed memory
(PyTorch's caching allocator plays the same role) took the CNN step of
``scripts/bench_engine.py`` from 111 ms to 93 ms. Set DISTDL_MALLOC_TUNING=0 to leave
the C library alone; elsewhere than glibc this does nothing.
"""

import ctypes
import os

_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 1024 * 1024  # glibc's upper bound on 64-bit systems
_TRIM_THRESHOLD = 1024 * 1024 * 1024


def tune_allocator():
    """Apply the setting once per process; returns whether it took effect."""
    if os.environ.get("DISTDL_MALLOC_TUNING", "1") == "0":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl, Windows)
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)) and bool(mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD))
