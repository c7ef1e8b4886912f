"""Tuning of the serving process (the garbage collector, glibc's malloc), applied where each
process starts serving: the app's lifespan, which runs in every uvicorn worker."""

from __future__ import annotations

import ctypes
import gc
import logging

logger = logging.getLogger("mlplatform.serving")

# A young generation of 10,000 objects instead of 700: each request allocates dozens, and at
# thousands of requests a second the default ran a full collection (milliseconds, every
# request waiting) several times a second (bench/BENCHMARKS.md). The model and libraries are
# frozen out of the collector's view at each load (``ModelRuntime.load``).
GC_THRESHOLDS = (10_000, 10, 10)

# glibc's malloc maps each block of over 128 kB afresh and gives it back when freed, so the
# log writer's frames and Parquet buffers were faulted in page by page on every write. Blocks
# of up to 32 MB now come from the heap, and each arena keeps up to 64 MB of it free
# (bench/BENCHMARKS.md, session 9).
MALLOC_MMAP_THRESHOLD = 32 * 2**20
MALLOC_TRIM_THRESHOLD = 64 * 2**20
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # mallopt's parameters, <malloc.h>


def tune() -> None:
    """Apply this module's settings to the current process."""
    gc.set_threshold(*GC_THRESHOLDS)
    keep_freed_memory()


def keep_freed_memory() -> bool:
    """Set glibc's malloc thresholds (``MALLOC_MMAP_THRESHOLD``, ``MALLOC_TRIM_THRESHOLD``)
    for this process; False, logged, where the C library has no ``mallopt`` (not glibc) or
    refuses a value (32 MB is its most on 64-bit)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        logger.info("malloc thresholds not set: the C library has no mallopt (not glibc)")
        return False
    refused = [
        name
        for name, param, value in (
            ("M_MMAP_THRESHOLD", _M_MMAP_THRESHOLD, MALLOC_MMAP_THRESHOLD),
            ("M_TRIM_THRESHOLD", _M_TRIM_THRESHOLD, MALLOC_TRIM_THRESHOLD),
        )
        if mallopt(param, value) != 1  # 1: set
    ]
    if refused:
        logger.warning("malloc refused %s; freed memory may be faulted in again", refused)
    return not refused
