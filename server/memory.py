"""Keep the server's freed model-sized buffers in the process instead of unmapping them.

Every round the server allocates a few model-sized arrays (the sum, the new model, its
encoded bytes) and frees last round's. glibc's malloc serves blocks above its mmap
threshold with fresh ``mmap`` calls and returns freed memory at the top of the heap to
the kernel above its trim threshold; with several 4 MB blocks per round both happen,
and the server then spends more time in page faults (the kernel zeroing fresh pages,
about 1,000 faults per 4 MB) than in the aggregation itself. Raising both thresholds
lets freed blocks be reused: the process keeps what it used at its peak, which a
server holding n updates per round needs anyway.

The server applies it only for models of at least `LARGE_MODEL_VALUES` values: for
small models there is nothing to gain, and with the thresholds fixed the per-round time
of Ray simulations became more variable (measured with `benchmarks/bench_overhead.py`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_TRIM = 1 << 30  # bytes of free heap top kept before returning memory to the kernel
_MMAP = 32 << 20  # blocks above this still get their own mapping (glibc's maximum on 64-bit)

LARGE_MODEL_VALUES = 1_000_000
"""Servers of models with at least this many values (about 4 MB of float32) tune malloc."""

_done: bool | None = None


def keep_freed_memory() -> bool:
    """Tune glibc's malloc for a long-running server (idempotent); False where not glibc."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if sys.platform.startswith("linux"):
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError):  # musl and others have no mallopt
            return False
        mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        _done = bool(mallopt(_M_MMAP_THRESHOLD, _MMAP)) and bool(
            mallopt(_M_TRIM_THRESHOLD, _TRIM)
        )
    return _done
