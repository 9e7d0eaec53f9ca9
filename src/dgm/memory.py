"""Process-wide CPU memory settings that the Trainer and the samplers share (below the models and the Trainer)."""
from __future__ import annotations

import ctypes
import os
import sys

_ALLOCATOR_TUNED: bool | None = None


def tune_allocator() -> bool:
    """Keep freed memory inside the process (glibc's malloc, Linux), once per process; returns whether it applied.

    By default glibc gives blocks over 128 KiB straight back to the OS and maps them afresh on the next allocation, so
    every large activation of every step pays page faults and zero-filling; keeping them speeds up a small UNet's
    training step (benchmarks/allocator.py; benchmarks/results/history.md, "Speed notes"). Raising the mmap threshold to its 32 MiB maximum and the trim threshold to 1 GiB lets those blocks be reused, as
    jemalloc or tcmalloc would (the allocators PyTorch's CPU tuning guides suggest preloading). The cost: up to 1 GiB
    of freed memory stays with the process. DGM_MALLOC_TUNE=0 turns it off."""
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED is None:
        _ALLOCATOR_TUNED = False
        if os.environ.get("DGM_MALLOC_TUNE", "1") != "0" and sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)
                if hasattr(libc, "gnu_get_libc_version"):  # glibc only (not musl)
                    m_trim_threshold, m_mmap_threshold = -1, -3
                    _ALLOCATOR_TUNED = bool(libc.mallopt(m_mmap_threshold, 32 << 20)
                                            and libc.mallopt(m_trim_threshold, 1 << 30))
            except (OSError, AttributeError):
                pass
    return _ALLOCATOR_TUNED
