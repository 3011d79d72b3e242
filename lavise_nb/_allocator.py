"""Keep large CPU buffers in the heap instead of mapping them afresh on every forward pass.

glibc serves allocations above its mmap threshold (at most 32 MiB, adjusted
dynamically) with a fresh ``mmap`` and returns them with ``munmap`` on free. A
convolutional network's activations for a batch are often 50 to 100 MiB each, so
every forward pass page-faults its whole working set again; on the project's
2-core machines that made EfficientNet-Lite0 inference 3 to 4 times slower
(``make bench``, ``allocator`` row). Raising the mmap and trim thresholds once
per process lets freed buffers be reused. The cost is that the process keeps its
peak heap instead of returning it to the system.

Set ``LAVISE_NB_MALLOC=system`` to leave the allocator alone. Other C libraries
(macOS, musl, Windows) are left alone too.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_LARGE = 1 << 30
_state = {"done": False, "tuned": False}


def keep_large_buffers() -> bool:
    """Raise glibc's mmap and trim thresholds to 1 GiB, once per process.

    Returns
    -------
    bool
        True when the thresholds are (now) raised.
    """
    if _state["done"]:
        return _state["tuned"]
    _state["done"] = True
    if os.environ.get("LAVISE_NB_MALLOC", "").lower() == "system" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _state["tuned"] = bool(mallopt(_M_MMAP_THRESHOLD, _LARGE)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGE))
    return _state["tuned"]
