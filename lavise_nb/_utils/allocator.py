"""Keep large CPU buffers in the heap instead of mapping them afresh on every forward pass.

glibc serves allocations above its mmap threshold (at most 32 MiB, adjusted
dynamically) with a fresh ``mmap`` and returns them with ``munmap`` on free. A
convolutional network's activations for a batch are often 50 to 100 MiB each, so
every forward pass page-faults its whole working set again; on the project's
2-core machines that made EfficientNet-Lite0 inference 3 to 4 times slower
(``make bench``, ``allocator_speedup``). Raising the mmap and trim thresholds
once per process lets freed buffers be reused. The cost is memory: the process
keeps its heap instead of returning it, and heap fragmentation made the peak of a
store build 10 to 30 % higher and less predictable (it grew with the number of
images in some runs, where glibc's defaults stay flat).

So it is opt-in: set ``LAVISE_NB_MALLOC=fast`` before starting Python (the
Makefile does for ``make demo``, ``test`` and ``quality``). Anything else, or a C
library other than glibc, leaves the allocator alone.
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
    """With ``LAVISE_NB_MALLOC=fast``, raise glibc's mmap and trim thresholds to 1 GiB, once per process.

    Returns
    -------
    bool
        True when the thresholds are (now) raised.
    """
    if _state["done"]:
        return _state["tuned"]
    _state["done"] = True
    if os.environ.get("LAVISE_NB_MALLOC", "").lower() != "fast" or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    _state["tuned"] = bool(mallopt(_M_MMAP_THRESHOLD, _LARGE)) and bool(mallopt(_M_TRIM_THRESHOLD, _LARGE))
    return _state["tuned"]
