"""Keep freed memory for reuse. glibc's malloc maps every large block fresh from the kernel and unmaps it when freed,
so the big tensors of each evaluation and step fault their pages in again: a third of a Dyck analysis evaluation.

With mmap off and a trim threshold of 2 GiB, freed blocks stay in the process's heap and the next ones reuse them.
``lit-grok`` sets this itself; in your own script call ``keep_freed_memory()`` first, or set the same through the
environment (``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=2147483647``), which it leaves alone.

Example::

    from lit_grok.allocator import keep_freed_memory

    keep_freed_memory()  # True on glibc: the analyses' evaluations no longer fault their pages in
"""
from __future__ import annotations

import ctypes
import os
import platform

M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # mallopt's parameters (malloc.h)
TRIM_THRESHOLD = 2**31 - 1  # bytes of free heap top kept (mallopt takes an int)
ENVIRONMENT = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_")  # the user's own settings (or glibc.malloc tunables)


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to serve large blocks from its heap and keep freed memory there; True if it did. A no-op
    (False) off glibc, or where the environment already configures the allocator (that choice stands)."""
    chosen = any(name in os.environ for name in ENVIRONMENT) or "glibc.malloc." in os.environ.get("GLIBC_TUNABLES", "")
    if chosen or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the process's C library
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
