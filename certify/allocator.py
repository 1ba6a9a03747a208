"""CPU memory allocator settings for certification runs: keep freed memory instead of faulting it in again.

PyTorch's CPU tensors come from the C library's ``malloc``. With glibc's defaults a freed block larger than the
(dynamic) mmap threshold, or at the top of the heap beyond the trim threshold, goes back to the kernel, and the
next batch's activations of the same size are faulted in again, page by page. Randomized smoothing runs the
same model on thousands of equal batches, so this page-fault work can dominate a small model's forward pass,
and whether it happens depends on the heap's history, so two processes running the same code can differ in speed
by a large factor (measured in ``benchmarks/bench_smoothing.py --parts allocator``). :func:`keep_freed_memory`
raises glibc's mmap threshold and trim threshold to :data:`MALLOC_THRESHOLD` bytes, so freed blocks stay in the
process and are reused: the process's resident memory then stays near its peak instead of shrinking between
batches.

The ``certify`` command line calls it once at start, and the Ray worker processes start with the same settings
(:data:`MALLOC_ENV`); Python users call it themselves (it changes the whole process, so the library never does it
behind their back). Only the speed changes: every count, bound and certificate is the same.

>>> from certify.allocator import keep_freed_memory
>>> keep_freed_memory() in (True, False)   # False where malloc is not glibc's, or the user chose the settings
True
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

__all__ = ["MALLOC_THRESHOLD", "MALLOC_ENV", "keep_freed_memory"]

logger = logging.getLogger(__name__)

#: bytes: blocks up to this size come from the heap (not a fresh mapping), and freed memory is given back to the
#: kernel only beyond this much at the top of the heap (1 GiB; ``mallopt`` takes a C int)
MALLOC_THRESHOLD = 2 ** 30

#: the same settings as environment variables (read by glibc when a process starts: used for Ray workers)
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(MALLOC_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(MALLOC_THRESHOLD)}

# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3

_applied = False


def _user_settings() -> list[str]:
    """The malloc settings the user chose through the environment (respected: never overridden)."""
    names = [name for name in ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_") if name in os.environ]
    if "glibc.malloc" in os.environ.get("GLIBC_TUNABLES", ""):
        names.append("GLIBC_TUNABLES")
    return names


def keep_freed_memory() -> bool:
    """Make glibc's malloc keep freed memory for reuse (mmap and trim thresholds = :data:`MALLOC_THRESHOLD`).

    Returns True when the settings are in effect for this process (set now or by an earlier call), False when
    nothing was changed: not Linux with glibc (macOS, Windows, musl: those allocators are left alone), or the
    user set ``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_`` or ``GLIBC_TUNABLES=glibc.malloc...``
    themselves (their choice is kept). The reason is logged at DEBUG level. Process-wide and idempotent; only
    speed and resident memory change, never a result.
    """
    global _applied
    if _applied:
        return True
    if not sys.platform.startswith("linux"):
        logger.debug("allocator left alone: %s is not Linux with glibc", sys.platform)
        return False
    chosen = _user_settings()
    if chosen:
        logger.debug("allocator left alone: the environment sets %s", ", ".join(chosen))
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        gnu_get_libc_version = libc.gnu_get_libc_version  # only glibc has it
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        logger.debug("allocator left alone: the C library is not glibc")
        return False
    gnu_get_libc_version.restype = ctypes.c_char_p
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, MALLOC_THRESHOLD) == 1 and mallopt(_M_TRIM_THRESHOLD, MALLOC_THRESHOLD) == 1
    if not ok:
        logger.debug("allocator left alone: glibc %s refused the thresholds", gnu_get_libc_version().decode())
        return False
    _applied = True
    logger.debug("glibc %s malloc keeps freed memory (mmap and trim thresholds %d bytes)",
                 gnu_get_libc_version().decode(), MALLOC_THRESHOLD)
    return True
