"""Build one store in a fresh process and report its time and peak resident memory (JSON on stdout).

Usage: python benchmarks/_build_worker.py N ROOT BATCH WORKERS DEVICE
"""
from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LAYER, setup  # noqa: E402


def _status(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024          # kB -> MB
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM). Not ru_maxrss: on Linux that keeps the
    parent's peak across fork + exec, so a child of a big process would report the parent's."""
    peak = _status("VmHWM")
    return peak if peak is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0), so the next peak is the build's own."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def main() -> None:
    n, root, batch, workers, device = int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
    workers = None if workers == "auto" else int(workers)
    from lavise_nb.store import ActivationStore, BuildSettings

    model, data = setup(n)
    model.fingerprint           # hash the weights before timing (the store key needs it)
    setup_peak = peak_rss_mb()
    before = _status("VmRSS") or setup_peak
    reset = reset_peak()
    start = time.perf_counter()
    store = ActivationStore.build(model, LAYER, data, root, BuildSettings(batch_size=batch, num_workers=workers),
                                  device=device, show_progress=False)
    seconds = time.perf_counter() - start
    build_peak = peak_rss_mb()
    print(json.dumps({"n": n, "seconds": seconds, "peak_rss_mb": max(build_peak, setup_peak),
                      "build_peak_rss_mb": build_peak if reset else float("nan"),
                      "rss_before_build_mb": before, "setup_peak_rss_mb": setup_peak,
                      "path": str(store.path), "shape": list(store.shape)}))


if __name__ == "__main__":
    main()
