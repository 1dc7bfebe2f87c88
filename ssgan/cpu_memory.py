"""Keep freed memory in the process for reuse, so a CPU training step stops paying page faults.

glibc hands every allocation above its mmap threshold (128 KiB at first) straight back to the
kernel when it is freed, and trims the top of its heap past a trim threshold. A training step
frees and reallocates the same megabyte-sized activations and temporaries every time, so each
step faults all of them in afresh; with the thresholds below it faults none
(docs/cpu-path.md).
"""
from __future__ import annotations

import ctypes
import platform

# mallopt parameters, from glibc's malloc.h
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 * 2**20    # glibc's largest allowed value on 64-bit systems
TRIM_THRESHOLD = 512 * 2**20   # free memory kept at the top of the heap before returning it

_applied = False


def keep_freed_memory() -> bool:
    """Raise glibc's mmap and trim thresholds for the whole process (once; later calls do
    nothing). Allocations up to 32 MiB are then served from the heap and reused, and up to
    512 MiB of freed memory stays mapped. Returns whether the settings are in effect: False off
    glibc (macOS, Windows, musl), where the system allocator is left as it is."""
    global _applied
    if _applied:
        return True
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        _applied = bool(libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                        and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):
        return False
    return _applied
