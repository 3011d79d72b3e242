"""Shared pieces of the benchmark: the data/model setup, a dataset prefix view, machine facts."""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:       # run as `python benchmarks/bench.py` from anywhere
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402

LAYER = "_blocks.15"
MODEL = "efficientnet-lite0"
SCENES = 2000          # the toolkit's default StampScenes build (shared with the demo's cache)


class Head(torch.utils.data.Dataset):
    """The first ``n`` images of a dataset, with its own dataset id (so stores never mix)."""

    def __init__(self, base, n: int):
        if n > len(base):
            raise ValueError(f"asked for {n} images of a {len(base)}-image dataset")
        self.base, self.n = base, n
        self.records = base.records.iloc[:n].reset_index(drop=True)
        self.dataset_id = f"{base.dataset_id}:head{n}"
        self.preprocess = base.preprocess
        self.supercategories = getattr(base, "supercategories", {})
        self.concepts = getattr(base, "concepts", [])

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i):
        if not 0 <= int(i) < self.n:
            raise IndexError(i)
        return self.base[int(i)]


def setup(n: int):
    """(model, dataset of the first n StampScenes images); builds StampScenes on first use."""
    from lavise_nb import load_model, stamp_scenes

    model = load_model(MODEL)
    scenes = stamp_scenes(n_images=max(SCENES, n), seed=0, preprocess=model.preprocess, show_progress=False)
    return model, Head(scenes, n)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: torch.device) -> dict:
    info = {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def load_average() -> list:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    def __init__(self, device=None):
        self.device = device

    def __enter__(self):
        if self.device is not None:
            sync(self.device)
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        if self.device is not None:
            sync(self.device)
        self.seconds = time.perf_counter() - self.start
