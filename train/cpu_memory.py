"""Keep freed CPU memory in the process for reuse (glibc ``mallopt``), so a training step does not page-fault.

A CPU training step allocates and frees hundreds of MB of activations. glibc serves blocks above its mmap
threshold (128 KiB, rising to at most 32 MiB as such blocks are freed) with ``mmap`` and gives them back on
``free``, and trims the top of its heap: the next step touches fresh pages again. Here that was 12-85 k page
faults and 0.03-0.16 s of system CPU time per step (Lite-Mono disp_init, batch 3, 192x640; bench/RESULTS.md).
Raising both thresholds keeps the pages: the resident set stays at the step's peak (which the peak RSS
reports already count) and later steps reuse them (here: no new page faults and the same peak RSS after the
two warm-up steps). No effect on the math.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
_KEEP_BYTES = (1 << 30, 32 << 20)
"""Blocks up to 1 GiB come from the heap, and up to 1 GiB of free heap top is kept; a glibc that refuses an
mmap threshold above 32 MiB (its documented maximum on 64-bit) gets 32 MiB."""


def reuse_freed_memory() -> bool:
    """Set glibc's mmap and trim thresholds so freed memory stays mapped; True when glibc accepted both
    (False elsewhere: another C library, or a platform without ``mallopt``). Affects the whole process and
    the processes it forks later (DataLoader workers)."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return all(any(mallopt(option, size) == 1 for size in _KEEP_BYTES)
               for option in (M_MMAP_THRESHOLD, M_TRIM_THRESHOLD))
