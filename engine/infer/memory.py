"""Returning freed memory to the operating system (glibc).

glibc serves a large ``malloc`` from ``mmap`` and unmaps it on ``free``, but after each such
free it raises its threshold (up to 32 MB on 64-bit), so later arrays of a few to 32 MB
come from the heap and stay resident after NumPy and PyTorch free them. On a
512 x 512 x 192 CT that kept about 900 MB resident through a propagation's export
(docs/benchmarks.md, "Fourth pass"). Fixing the threshold (``mallopt(M_MMAP_THRESHOLD)``,
glibc's ``malloc(3)``) keeps every block of 1 MiB or more in ``mmap``, returned on ``free``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools

_M_MMAP_THRESHOLD = -3  # glibc's malloc.h
MMAP_THRESHOLD_BYTES = 1 << 20


@functools.cache
def return_large_blocks_to_os() -> bool:
    """Fix glibc's mmap threshold at ``MMAP_THRESHOLD_BYTES`` for this process (once);
    False where the C library is not glibc (nothing changes there)."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
