"""Open a store, train, calibrate and explain every filter in this (fresh) process; write timings and memory.

Usage: python benchmarks/_scale_worker.py STORE OUT_JSON EPOCHS GAMMAS(comma-separated)

Started by ``benchmarks/scale.py`` with ``LAVISE_NB_CACHE`` pointing at a scratch cache beside the
store (the pooled training pairs are written there when they exceed the memory budget) and one
thread. Memory is sampled by :class:`AnonSampler` (see ``scale.py`` for what is measured).
"""
from __future__ import annotations

import json
import resource
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, load_average  # noqa: E402

import torch  # noqa: E402

STATUS_FIELDS = ("RssAnon", "RssFile", "VmHWM", "VmRSS")


def status() -> dict:
    """This process's RssAnon, RssFile, VmHWM and VmRSS from /proc/self/status, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in STATUS_FIELDS:
                out[name] = int(value.split()[0]) * 1024
    return out


class AnonSampler(threading.Thread):
    """Samples RssAnon (and RssFile) every ``interval`` seconds; :meth:`stage` gives each stage's peaks."""

    def __init__(self, interval: float = 0.01):
        super().__init__(daemon=True)
        self.interval, self.lock, self.running = interval, threading.Lock(), True
        self.anon = self.file = 0

    def run(self) -> None:
        while self.running:
            now = status()
            with self.lock:
                self.anon, self.file = max(self.anon, now["RssAnon"]), max(self.file, now["RssFile"])
            time.sleep(self.interval)

    def reset(self) -> dict:
        """The peaks since the last reset; the new peaks start from now."""
        now = status()
        with self.lock:
            peaks = {"peak_anon": max(self.anon, now["RssAnon"]), "peak_file": max(self.file, now["RssFile"])}
            self.anon, self.file = now["RssAnon"], now["RssFile"]
        return peaks


def main() -> None:
    store_path, out_json, epochs = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
    gammas = tuple(float(g) for g in sys.argv[4].split(","))
    torch.set_num_threads(1)
    sampler = AnonSampler()
    sampler.start()
    from lavise_nb import (ActivationStore, CalibrationSettings, ExplainerTrainer, ExplainSettings, FilterExplainer,
                           GammaCalibration, TrainingConfig, load_word_space)
    from lavise_nb._utils.cache import cache_dir
    from lavise_nb.mapper import memory_budget
    stages, facts = [], {}

    def run(name: str, step):
        sampler.reset()
        before, load = status(), load_average()
        with Timer() as timer:
            result = step()
        peaks = sampler.reset()
        stages.append({"stage": name, "seconds": timer.seconds, "anon_before": before["RssAnon"], **peaks,
                       "load_before": load, "load_after": load_average()})
        print(f"[scale {time.strftime('%H:%M:%S')}] {name}: {timer.seconds:.1f} s, peak anon "
              f"{peaks['peak_anon'] / 2 ** 20:.0f} MiB, peak file-backed {peaks['peak_file'] / 2 ** 20:.0f} MiB",
              flush=True)
        return result

    space = run("word space", lambda: load_word_space("glove-6b-50d"))
    store = run("open store", lambda: ActivationStore.open(store_path))
    config = TrainingConfig(seed=0, max_epochs=epochs)
    trainer = ExplainerTrainer(store, space, config, device="cpu", show_progress=False)
    pooled = run("train: pool masks", trainer.pooled)
    files = sorted((cache_dir("pooled")).glob("*.npy"))
    facts.update(pooled_where="memory-mapped file" if files else "in memory",
                 pooled_file_bytes=sum(f.stat().st_size for f in files), pooled_budget=memory_budget(),
                 pooled_shape=list(pooled.shape))
    del pooled
    mapper = run("train: epochs", trainer.fit)
    settings = ExplainSettings(p=25)
    record = run("calibrate", lambda: GammaCalibration(
        store, mapper, space, settings, calibration=CalibrationSettings(gammas=gammas), vocabulary="concepts",
        prior=None).fit())
    mapper = mapper.calibrated(record)
    explainer = FilterExplainer(store, mapper, space, "concepts", settings, device="cpu")
    run("coherence null (64 random directions; the store keeps their maxima)", explainer.null_coherence)
    explanations = run("explain all filters", explainer.explain)
    n, c, h, w = store.shape
    facts.update(images=n, channels=c, map=[h, w], objects=len(store.objects), masks=len(trainer.masks),
                 concepts=len(store.concepts), epochs_run=int(len(mapper.history)), gamma=record.gamma,
                 filter_gamma=record.filter_gamma, explanation_rows=len(explanations),
                 filters_named=int(explanations.dropna(subset=["word"])["filter"].nunique()),
                 seen_top1=float(mapper.history["seen_top1"].max()))
    sampler.running = False
    usage = resource.getrusage(resource.RUSAGE_SELF)
    final = status()
    out_json.write_text(json.dumps({"stages": stages, "facts": facts, "ru_maxrss": usage.ru_maxrss * 1024,
                                    "vm_hwm": final["VmHWM"], "peak_anon": max(s["peak_anon"] for s in stages),
                                    "peak_file": max(s["peak_file"] for s in stages)}, indent=2))


if __name__ == "__main__":
    main()
