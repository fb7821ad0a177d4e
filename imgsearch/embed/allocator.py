"""Keep memory freed by one forward pass for the next (glibc's malloc).

A forward pass allocates the same large activations batch after batch. By default glibc serves
every allocation above its mmap threshold (32 MiB at most) with a fresh ``mmap`` and gives freed
heap tops back to the kernel, so each batch page-faults its activations in again: in a Celery
worker this cost about 385,000 minor page faults and a second of kernel time per batch of 16
images at 224 px, 0.8x of the same model in a process whose heap happened to keep the pages
(bench/work/workers.py, docs/benchmarks.md). With ``mmap``'d allocations and heap trimming off the pages
stay: resident memory holds at the peak of a batch, which every batch reaches anyway.

Process-wide, so it is applied by the entry points that embed batch after batch (workers,
``imgsearch ingest``, ``worker --drain``, ``reembed``), never on import, and only where the
operator has not tuned malloc already (``MALLOC_*_`` variables, ``GLIBC_TUNABLES``, or another
allocator preloaded).
"""

from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

from imgsearch.settings import Settings

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # <malloc.h>
M_MMAP_MAX = -4
NEVER_TRIM = 2**31 - 1  # mallopt takes an int


def operator_tuned() -> str | None:
    """What in the environment already tunes the allocator, if anything."""
    for name in sorted(os.environ):
        if name.startswith("MALLOC_") and name.endswith("_"):
            return name
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        return "GLIBC_TUNABLES"
    preload = os.environ.get("LD_PRELOAD", "")
    if any(allocator in preload for allocator in ("jemalloc", "tcmalloc", "mimalloc")):
        return "LD_PRELOAD"
    return None


def retain_freed_memory(settings: Settings) -> bool:
    """Turn off ``mmap``'d allocations and heap trimming in this process, unless
    ``settings.retain_freed_memory`` is off; True when applied."""
    if not settings.retain_freed_memory:
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    tuned = operator_tuned()
    if tuned is not None:
        log.info("allocator left as configured (%s is set)", tuned)
        return False
    mallopt = ctypes.CDLL(None).mallopt
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    applied = bool(mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, NEVER_TRIM) == 1)
    if applied:
        log.info("allocator: freed memory is kept for the next batch (no mmap, no trim)")
    return applied
