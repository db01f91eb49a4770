"""Give the C heap's free memory back to the system between the bisect's stages (glibc only).

Design note: torch allocates CPU tensors with ``posix_memalign``. glibc serves blocks under its
mmap threshold from the heap, and raises that threshold (up to 32 MB) each time a larger mmapped
block is freed, so after the first few weights most tensors of a 270M model live in the heap. Freed
heap memory inside the heap stays in the process (RSS) until ``malloc_trim``: measured on Gemma 3
270M, 1.8 GiB of a finished bisect's 2.4 GiB anonymous RSS was such free memory, and the expected
lane's and localization's peaks stood on top of what the loads and comparison had freed. Calling
``malloc_trim(0)`` after a stage that frees much (a load's temporaries, the comparison's float64
copies, the expected lane's modules) lets the next stage's peak be its live memory. It only returns
free pages; nothing live moves. Elsewhere (no glibc) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

_TRIM = None


def release_free_memory(*devices: object) -> None:
    """``malloc_trim(0)`` on glibc: return the heap's free pages to the system (milliseconds on a CPU-sized heap).

    ``devices``: where the stage's tensors live; when any is not the CPU nothing is done: the host heap is
    small there, and ``malloc_trim`` holds the allocator's lock while it walks the free chunks, stalling the
    threads that run beside the stage (the two-device pipeline, ``jobs.py``).
    """
    global _TRIM
    if not sys.platform.startswith("linux") or any(str(d).split(":")[0] != "cpu" for d in devices):
        return
    if _TRIM is None:
        try:
            _TRIM = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim
        except (OSError, AttributeError):  # musl and others: no malloc_trim
            _TRIM = False
    if _TRIM:
        _TRIM(0)


__all__ = ["release_free_memory"]
