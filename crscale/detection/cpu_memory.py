"""Keep the memory of a tile's activations for the next tile, on glibc CPUs.

Each tile allocates its activations afresh (a few MB each: 480² × 16 channels × 2 bytes is
7.4 MB) and frees them at its end. glibc serves allocations of that size with ``mmap`` once its
dynamic threshold has not risen past them, and gives freed memory at the top of the heap back
to the kernel once it exceeds the trim threshold; the next tile then touches fresh pages, and
every page costs a fault that zeroes it. Dask's nanny starts workers with
``MALLOC_TRIM_THRESHOLD_=65536``, which makes glibc give back almost everything at once. On the
2-core development machine a real dask worker took ~150,000 page faults per Mpix and ran the
default model at **0.58 s/Mpix, against 0.35** with the memory kept (``benchmarks/malloc_tuning.py``;
a worker's task thread still faults some, as glibc gives back a thread arena's heap once it is
wholly free).

:func:`keep_freed_memory` raises both thresholds (``mallopt``) once per process, when a CPU
predictor is made: allocations up to 32 MB (glibc's largest mmap threshold) come from the heap,
and up to 256 MB of freed heap stay with the process for the next tile. The process's peak
memory does not change (the same activations are live at once); only what is given back
between tiles does. ``CRSCALE_KEEP_FREED_MEMORY=0`` turns it off. Other C libraries (musl,
macOS) are left as they are.
"""

from __future__ import annotations

import ctypes
import logging
import os
import sys

log = logging.getLogger(__name__)

#: glibc's ``mallopt`` parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
#: Allocations up to this size come from the heap (glibc refuses more than 32 MB on 64-bit).
MMAP_THRESHOLD = 32 * 1024 * 1024
#: Freed memory at the heap's top that stays with the process.
TRIM_THRESHOLD = 256 * 1024 * 1024
#: Environment variable that turns the tuning off when set to 0 / false / no / off.
ENV = "CRSCALE_KEEP_FREED_MEMORY"

_done: bool | None = None


def glibc() -> ctypes.CDLL | None:
    """The process's glibc, or None on any other C library."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        if not os.confstr("CS_GNU_LIBC_VERSION"):
            return None
        return ctypes.CDLL("libc.so.6")
    except (OSError, ValueError, AttributeError):
        return None


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for this process, once; whether they are raised.

    Returns False where the C library is not glibc, where ``CRSCALE_KEEP_FREED_MEMORY`` is 0,
    or where glibc refused a value.
    """
    global _done
    if _done is not None:
        return _done
    if os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        log.debug("%s is off: glibc's malloc thresholds left as they are", ENV)
        _done = False
        return _done
    libc = glibc()
    if libc is None:
        _done = False
        return _done
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD))
    ok = bool(libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)) and ok
    if ok:
        log.debug("glibc malloc: mmap threshold %d MB, trim threshold %d MB",
                  MMAP_THRESHOLD >> 20, TRIM_THRESHOLD >> 20)
    else:
        log.warning("glibc refused the malloc thresholds; tiles may run slower (page faults)")
    _done = ok
    return _done
