"""Process settings that suit training on the CPU.

A training step allocates and frees a handful of activation-sized temporaries (a fused group of
25 members at batch 128 and width 256: 3.3 MB each). glibc's allocator serves blocks above its
mmap threshold with fresh ``mmap`` calls and returns freed memory at the top of the heap to the
kernel past its trim threshold, so every step pays for thousands of page faults: a fused group
of 25 spent about a third of its time in the kernel (``benchmarks/engine.py``). Raising both
thresholds keeps the freed blocks in the process for the next step. Nothing measured changes.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

logger = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20  # blocks up to 32 MiB come from the heap (glibc's own upper bound)
TRIM_THRESHOLD = 256 << 20  # up to 256 MiB of freed heap is kept for reuse


def keep_freed_memory(
    mmap_threshold: int = MMAP_THRESHOLD, trim_threshold: int = TRIM_THRESHOLD
) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; ``False`` where the C library is
    not glibc (musl, macOS, Windows), which is left as it is."""
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1
    ok = mallopt(_M_TRIM_THRESHOLD, trim_threshold) == 1 and ok
    logger.debug("mallopt thresholds %s", "raised" if ok else "left as they were")
    return ok
