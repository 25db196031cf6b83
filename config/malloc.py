"""Memory a web process frees is kept for its next request (glibc's malloc; elsewhere nothing changes).

glibc returns a freed block of more than 128 KB straight to the kernel (the mmap
threshold) and trims the heap above the same size, so every request's
megabyte-sized arrays (a grid's 200 candidate vectors, the index's hits, their
scores) arrive as fresh pages and each page fault is paid again, on every click
(tests/test_click_path.py bounds the faults; docs/benchmarks.md, "Full run after
the memory and click-path changes", measures the click). A worker then holds its
peak working set (tens of MB) instead of giving it back between requests. No
Django here: config/wsgi.py calls it before the site loads.
"""

from __future__ import annotations

import ctypes

# mallopt's parameters (malloc.h).
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# glibc's largest mmap threshold on 64-bit: blocks up to this size come from (and return to) the heap.
KEEP_BYTES = 32 * 1024 * 1024


def keep_freed_memory() -> bool:
    """Raise malloc's mmap and trim thresholds; False where the C library has no ``mallopt`` (musl, macOS)."""
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)  # the C library this Python runs on
    if mallopt is None:
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, KEEP_BYTES)) and bool(mallopt(M_TRIM_THRESHOLD, 2 * KEEP_BYTES))
