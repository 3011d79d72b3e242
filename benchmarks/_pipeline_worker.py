"""Run notebook 01 + 02's default path stage by stage in this (fresh) process; write the timings as JSON.

Usage: python benchmarks/_pipeline_worker.py N OUT_JSON DEVICE FORWARD_ROUNDS EXTRAS(0/1)

Started by ``benchmarks/pipeline.py`` with ``LAVISE_NB_CACHE`` pointing at a temporary cache
(no scenes, stores or priors; the fetched Tux Paint files and word caches linked in) and
``LAVISE_NB_MALLOC=fast``. Each stage makes the calls the notebooks' cells make, with the
notebooks' default parameters; figures and widgets are left out.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, load_average, machine  # noqa: E402

import torch  # noqa: E402

from lavise_nb import (ActivationStore, CalibrationSettings, ClassPrior, ExplainerTrainer, ExplainSettings,  # noqa: E402
                       FilterExplainer, GammaCalibration, Mapper, MethodComparison, Reference, ReferenceSpec,
                       TrainingConfig, imagenet_classes, load_model, load_word_space, stamp_scenes)
from lavise_nb.datasets import collate_samples  # noqa: E402
from lavise_nb.labels import model_labels  # noqa: E402
from lavise_nb.plots import filter_summary  # noqa: E402
from lavise_nb.probe import resolve_device  # noqa: E402


CAPPED_EPOCHS = 60   # CalibrationSettings.inner_epochs of the cheaper calibration, timed beside the default


class Stages:
    """Times named stages in order, with the load average around each."""

    def __init__(self, device: torch.device):
        self.device, self.rows = device, []

    def run(self, name: str, notebook: str, step, *, in_total: bool = True):
        load = load_average()
        with Timer(self.device) as timer:
            result = step()
        self.rows.append({"stage": name, "notebook": notebook, "seconds": timer.seconds, "in_total": in_total,
                          "load_before": load, "load_after": load_average()})
        print(f"[pipeline {time.strftime('%H:%M:%S')}] {name}: {timer.seconds:.1f} s", flush=True)
        return result


def bare_forward(model, dataset, batch_size: int, workers: int, device: torch.device) -> float:
    """Seconds of one full forward pass over ``dataset`` (no hooks, nothing kept), the store's loader settings."""
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         collate_fn=collate_samples, pin_memory=device.type == "cuda")
    model.to(device)
    with Timer(device) as timer, torch.no_grad():
        for batch in loader:
            model.module(batch["images"].to(device, non_blocking=True))
    return timer.seconds


def main() -> None:
    n, out_json, device_name = int(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]
    rounds, extras = int(sys.argv[4]), sys.argv[5] == "1"
    device = resolve_device(device_name)
    spec = ReferenceSpec(n_images=n, device=device_name)
    settings = spec.build_settings
    workers = settings.workers
    stages, forward = Stages(device), []
    facts = {"images": n, "batch_size": settings.batch_size, "workers": workers, "device": str(device),
             "malloc": os.environ.get("LAVISE_NB_MALLOC", ""), "cache": os.environ.get("LAVISE_NB_CACHE", "")}
    train_dir = out_json.parent / "train"      # in the caller's temporary folder
    train_dir.mkdir(exist_ok=True)

    # notebook 01, cell 4: Reference.load, split into its steps
    model = stages.run("model load", "01", lambda: load_model(spec.model, device=spec.device))
    dataset = stages.run("scenes build", "01", lambda: stamp_scenes(
        n_images=spec.n_images, seed=spec.seed, preprocess=model.preprocess, show_progress=False,
        **spec.scene_options))
    forward.append(bare_forward(model, dataset, settings.batch_size, workers, device))
    print(f"[pipeline] bare forward: {forward[-1]:.1f} s", flush=True)
    store = stages.run("store build", "01", lambda: ActivationStore.build(
        model, spec.layer, dataset, spec.store_root, settings, device=spec.device, show_progress=False))
    space = stages.run("word space (MiniLM)", "01", lambda: load_word_space(
        spec.word_space, words=[*store.concepts, *imagenet_classes()]))
    ref = Reference(spec, model, dataset, store, space)

    # cell 12: weak labels and training
    labels = stages.run("weak labels (model_labels from the store's logits)", "01", lambda: model_labels(
        model, dataset, top=3, min_probability=0.05, store=store, device=spec.device, show_progress=False))
    config = TrainingConfig(seen_fraction=0.7, seed=spec.seed, max_epochs=300)
    mapper = stages.run("training", "01", lambda: ExplainerTrainer(
        store, space, config, weak_labels=labels, device=spec.device, show_progress=False).fit())

    # cell 16: the class prior (computed here for the pairs calibration and explaining use), calibration
    explain_settings = ExplainSettings(p=25)
    prior = ClassPrior(model, dataset, space, device=spec.device, show_progress=False)
    pairs = FilterExplainer(store, mapper, space, "concepts", explain_settings).pairs()
    stages.run(f"class prior (source={prior.source})", "01", lambda: prior.predictions(store, pairs))

    def calibrate(inner_epochs=None, save=True):
        grid = CalibrationSettings(seed=spec.seed, gammas=[round(0.02 * i, 2) for i in range(26)],
                                   inner_epochs=inner_epochs)
        record = GammaCalibration(store, mapper, space, explain_settings, calibration=grid,
                                  vocabulary=ref.vocabulary("nouns"), weak_labels=labels, prior=prior,
                                  show_progress=False).fit()
        calibrated = mapper.calibrated(record)
        if save:
            calibrated.save(train_dir / "mapper.pt")
        return record

    record = stages.run("calibration", "01", calibrate)
    capped = stages.run(f"calibration, inner head capped (inner_epochs={CAPPED_EPOCHS}; instead of the above)", "01",
                        lambda: calibrate(CAPPED_EPOCHS, save=False), in_total=False)
    facts.update(gammas=[record.gamma, record.filter_gamma], capped_gammas=[capped.gamma, capped.filter_gamma])

    # notebook 02, cells 4 and 6
    def reopen():
        again = Reference.load(spec, show_progress=False)
        head = Mapper.load(train_dir / "mapper.pt", again.store, again.space)
        return again, head, ClassPrior(again.model, again.dataset, again.space, device=spec.device,
                                       show_progress=False)

    ref2, mapper2, prior2 = stages.run("reopen (Reference.load, Mapper.load)", "02", reopen)
    settings02 = ExplainSettings(method="attention", attention="soft_mask", p=25, s=5, voting="softmax",
                                 top_words=10, calibrated=True, hubness=None)

    def explain():
        candidates = ref2.vocabulary("nouns")
        explainer = FilterExplainer(ref2.store, mapper2, ref2.space, candidates, settings02, prior=prior2,
                                    device=spec.device)
        explanations = explainer.explain()
        image_words = explainer.image_words()
        filter_summary(explanations, image_words)
        return candidates, explanations

    candidates, explanations = stages.run("explaining", "02", explain)
    facts.update(filters=int(ref2.store.shape[1]), candidate_words=len(candidates), pairs=len(pairs),
                 epochs_run=int(len(mapper.history)), explanation_rows=len(explanations),
                 space_words=len(space.words), concepts=len(store.concepts))

    if extras:   # the rest of notebook 02's default path: cells 8 and 15 (without their figures)
        import dataclasses
        stages.run("uncalibrated explain (cell 8)", "02", lambda: FilterExplainer(
            ref2.store, mapper2, ref2.space, candidates, dataclasses.replace(settings02, calibrated=False),
            prior=prior2, device=spec.device).explain(), in_total=False)
        stages.run("recall comparison (cell 15)", "02", lambda: MethodComparison(
            ref2.store, mapper2, ref2.space, settings02, vocabulary="concepts", prior=prior2,
            show_progress=False).compare(), in_total=False)

    for _ in range(rounds - 1):
        forward.append(bare_forward(model, dataset, settings.batch_size, workers, device))
        print(f"[pipeline] bare forward: {forward[-1]:.1f} s", flush=True)
    out_json.write_text(json.dumps({"facts": facts, "stages": stages.rows, "forward_seconds": forward,
                                    "machine": machine(device)}, indent=2))


if __name__ == "__main__":
    main()
