"""lavise-nb performance benchmark (issue 6): `make bench`.

Every figure is a ratio of two timings taken in the same run, on the same images and the
same model (EfficientNet-Lite0, layer ``_blocks.15``, StampScenes), so the machine cancels
out as far as possible. Writes ``perf.json`` and ``perf.md`` to ``--output-dir``.

What is measured (N = ``--n`` images, default 200):

* store_vs_forward: images/s building the store / images/s of a bare forward pass over the
  same images with the same DataLoader settings (no hooks, no storage). Also against a bare
  forward truncated after the layer (the store stops the network there).
* explain_layer_speedup: the reference way to explain every filter (per filter: run the
  network with batch size 1 on its top-p images, then the explainer head, votes) / the
  toolkit's ``FilterExplainer.explain()`` from the store. The reference runs on a seeded
  sample of filters and is scaled per filter.
* end_to_end: (store build + explaining the whole layer) / one bare forward pass over N.
* train_epoch_speedup: one explainer epoch the reference way (network forward on each batch,
  pooling under masks, head step; timed on a sample of batches and scaled to N images) / one
  epoch of ``ExplainerTrainer`` from the store's pooled features.
* memory_growth: peak resident memory of a fresh process building the store of 4N images /
  of N images.
* threshold_error: the store's thresholds against np.quantile on the float32 activations.
* scaling: store build and whole-layer explanation time at N, 2N and 4N images.
* allocator_speedup: store build time of N images in a fresh process with glibc's default
  allocator thresholds (``LAVISE_NB_MALLOC=system``) / with the opt-in raised thresholds
  (``LAVISE_NB_MALLOC=fast``, :mod:`lavise_nb._utils.allocator`); allocator_memory: the same processes'
  build peak RSS, raised / default. Every other figure runs with the allocator as the
  environment leaves it (``make bench`` leaves glibc's defaults).

Then ``pipeline.md`` / ``pipeline.json`` (:mod:`pipeline`): notebook 01 + 02's default path
end to end from an empty cache, each stage as a multiple of one bare forward pass over the
same ``--pipeline-images`` images (default 2000; e.g. 300 for a quick check). ``--only
pipeline`` runs only that part, ``--only perf`` only the figures above.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import LAYER, MODEL, Timer, load_average, machine, setup  # noqa: E402
from pipeline import add_arguments as add_pipeline_arguments, run_pipeline  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from lavise_nb import ActivationStore, ExplainerTrainer, FilterExplainer, load_word_space  # noqa: E402
from lavise_nb.datasets import collate_samples  # noqa: E402
from lavise_nb.mapper import ExplainerHead, pool_features, ranking_loss  # noqa: E402
from lavise_nb.probe import LayerProbe, resolve_device  # noqa: E402
from lavise_nb.config import ExplainSettings  # noqa: E402
from lavise_nb.store import BuildSettings  # noqa: E402
from lavise_nb.store.thresholds import TailHistogram, histogram_quantiles, load_histogram  # noqa: E402

TARGETS = {
    "store_vs_forward": (">=", 0.9),
    "explain_layer_speedup": (">=", 100.0),
    "end_to_end_vs_forward": ("<=", 1.3),
    "train_epoch_speedup": (">=", 10.0),
    "memory_growth": ("<=", 1.2),
}


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def loader(data, batch_size: int, workers: int, device: torch.device):
    return torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=False, num_workers=workers,
                                       collate_fn=collate_samples, pin_memory=device.type == "cuda")


# ---------------------------------------------------------------------------- forward passes
def bare_forward(model, data, batch_size, workers, device, truncated: bool, keep: bool = False):
    """Seconds for one forward pass over ``data``; with ``keep`` also the float32 layer output."""
    kept = []
    model.to(device)
    with Timer(device) as timer:
        if truncated:
            with LayerProbe(model, LAYER) as probe:
                for batch in loader(data, batch_size, workers, device):
                    out = probe(batch["images"].to(device, non_blocking=True))
                    if keep:
                        kept.append(out.float().cpu().numpy())
        else:
            with torch.no_grad():
                for batch in loader(data, batch_size, workers, device):
                    model.module(batch["images"].to(device, non_blocking=True))
    return timer.seconds, (np.concatenate(kept) if keep else None)


def build_store(model, data, root, batch_size, workers, device):
    with Timer(device) as timer:
        settings = BuildSettings(batch_size=batch_size, num_workers=workers)
        store = ActivationStore.build(model, LAYER, data, root, settings, device=device, show_progress=False)
    return timer.seconds, store


# ---------------------------------------------------------------------------- reference explainer
def reference_explain(model, data, store, explainer: FilterExplainer, filters, device) -> float:
    """The reference way, per filter: batch-size-1 forward on each top-p image, attention, head, votes.

    Returns the seconds spent. The network is stopped after the layer (generous to the reference).
    """
    mapper, p, s = explainer.mapper, explainer.settings.p, explainer.settings.s
    vectors = explainer.vectors.to(device)
    bias = explainer.seen_offsets(explainer.filter_gamma).to(device)
    head = mapper.head.to(device).eval()
    maxima = np.asarray(store.maxima)
    model.to(device)
    with Timer(device) as timer:
        for f in filters:
            top = store.top_indices(p, [f])[0]
            votes: dict[int, float] = {}
            with LayerProbe(model, LAYER) as probe:
                for image in top:
                    activation = float(maxima[image, f])
                    if activation <= 0:
                        continue
                    x = data[int(image)]["image"][None].to(device)
                    flat = probe(x).float().flatten(2)[0]                      # (C, hw)
                    own = flat[f]
                    weights = F.normalize(flat, dim=1) @ F.normalize(own, dim=0)
                    pooled = (weights * flat.mean(1))[None]
                    with torch.no_grad():
                        scores = (head(pooled) @ vectors.T - bias)[0]
                    for word in scores.topk(s).indices.tolist():
                        votes[word] = votes.get(word, 0.0) + activation
            sorted(votes.items(), key=lambda kv: -kv[1])[:explainer.settings.top_words]
    head.cpu()
    return timer.seconds


def toolkit_explain(store, mapper, space, device) -> tuple[float, FilterExplainer]:
    with Timer(device) as timer:
        settings = ExplainSettings(method="attention", p=25, s=5)
        explainer = FilterExplainer(store, mapper, space, "concepts", settings, device=device)
        table = explainer.explain()
    assert table["filter"].nunique() == store.shape[1]
    return timer.seconds, explainer


# ---------------------------------------------------------------------------- reference training epoch
def reference_epoch(model, data, trainer: ExplainerTrainer, batch_size, workers, device, max_batches: int):
    """Seconds per image of the reference epoch: forward each batch, pool under masks, head step."""
    cfg = trainer.config
    seen_index = {c: i for i, c in enumerate(trainer.seen)}
    seen_vectors = trainer.concept_vectors[[trainer.concepts.index(c) for c in trainer.seen]].to(device)
    head = ExplainerHead(trainer.store.shape[1], trainer.concept_vectors.shape[1], cfg.dropout).to(device)
    optimiser = torch.optim.Adam(head.parameters(), lr=cfg.lr)
    model.to(device)
    images = 0
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(data), generator=generator).tolist()     # a shuffled epoch, as training does
    subset = torch.utils.data.Subset(data, order)
    with Timer(device) as timer, LayerProbe(model, LAYER) as probe:
        for b, batch in enumerate(loader(subset, batch_size, workers, device)):
            if b >= max_batches:
                break
            features = probe(batch["images"].to(device, non_blocking=True)).float()
            rows, masks, positives = [], [], []
            for k, (m, names) in enumerate(zip(batch["masks"], batch["concepts"])):
                if len(names) == 0:
                    continue
                small = F.adaptive_avg_pool2d(m.float()[None], features.shape[2:])[0]
                for mask, name in zip(small, names):
                    rows.append(k)
                    masks.append(mask)
                    target = torch.zeros(len(trainer.seen))
                    if name in seen_index:
                        target[seen_index[name]] = 1
                    positives.append(target)
            images += len(batch["images"])
            if not rows:
                continue
            pooled = pool_features(features[torch.tensor(rows, device=device)], torch.stack(masks).to(device),
                                   cfg.pooling)
            positives = torch.stack(positives).to(device)
            keep = positives.sum(1) > 0
            head.train()
            for chunk in torch.arange(int(keep.sum()), device=device).split(cfg.batch_size):
                if len(chunk) < 2:
                    continue
                loss = ranking_loss(head(pooled[keep][chunk]), positives[keep][chunk], seen_vectors, cfg.margin)
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    return timer.seconds / max(1, images), images


def toolkit_epoch(trainer: ExplainerTrainer, epochs: int = 3) -> float:
    """Seconds per epoch of ExplainerTrainer.fit from the store (pooled features already computed)."""
    trainer.config = dataclasses.replace(trainer.config, max_epochs=epochs, patience=epochs + 1)
    start = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - start) / epochs


# ---------------------------------------------------------------------------- subprocess builds
def fresh_build(n: int, root: Path, args, env: dict | None = None) -> dict:
    worker = Path(__file__).resolve().parent / "_build_worker.py"
    command = [sys.executable, str(worker), str(n), str(root), str(args.batch_size),
               "auto" if args.workers is None else str(args.workers), args.device]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if result.returncode != 0:
        raise RuntimeError(f"build worker failed for n={n}:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- report
def verdict(name: str, value: float) -> str:
    op, target = TARGETS[name]
    ok = value >= target if op == ">=" else value <= target
    return "met" if ok else "NOT met"


def fmt(value, digits=2) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "n/a"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def write_report(out: Path, perf: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "perf.json").write_text(json.dumps(perf, indent=2))
    r = perf["ratios"]
    lines = [
        "# lavise-nb performance (issue 6)",
        "",
        f"EfficientNet-Lite0 `{LAYER}` on StampScenes, N = {perf['n']} images, batch {perf['batch_size']}, "
        f"{perf['workers']} DataLoader workers. Every ratio is measured in this run on the same images.",
        "",
        "| figure | value | target | status | how |",
        "|---|---|---|---|---|",
    ]
    rows = [
        ("store_vs_forward", r["store_vs_forward"], "store build img/s / bare full forward img/s"),
        ("store_vs_truncated_forward", r["store_vs_truncated_forward"],
         "store build img/s / bare forward stopped after the layer (no target)"),
        ("explain_layer_speedup", r["explain_layer_speedup"],
         f"reference (bs-1 forward per top image, {perf['explain']['reference_filters']} sampled filters, "
         "scaled per filter) / toolkit from the store, all filters"),
        ("end_to_end_vs_forward", r["end_to_end_vs_forward"], "(store build + explain all filters) / bare forward"),
        ("train_epoch_speedup", r["train_epoch_speedup"],
         f"reference epoch (forward + pool + head; {perf['train']['reference_images']} images timed, scaled to N) "
         "/ ExplainerTrainer epoch from the store"),
        ("memory_growth", r["memory_growth"],
         "peak RSS of the build phase, 4N / N (fresh processes; VmHWM reset after loading model and data)"),
        ("memory_growth_of_build_increment", r["memory_growth_of_build_increment"],
         "(build peak - RSS before build), 4N / N: the memory the build itself adds (no target)"),
        ("allocator_speedup", r["allocator_speedup"],
         "store build s of N images, glibc default thresholds / raised thresholds (fresh processes)"),
        ("allocator_memory", r["allocator_memory"], "build peak RSS, raised thresholds / glibc default"),
    ]
    for name, value, how in rows:
        if name in TARGETS:
            op, target = TARGETS[name]
            lines.append(f"| {name} | {fmt(value)} | {op} {target:g} | {verdict(name, value)} | {how} |")
        else:
            lines.append(f"| {name} | {fmt(value)} | - | - | {how} |")
    t = perf["thresholds"]
    lines.append(f"| threshold_error | max abs {t['max_abs_error']:.2e}, max rel {t['max_rel_error']:.2e} | - | - | "
                 f"store (float16, streaming histogram) vs np.quantile on float32 activations of {perf['n']} images |")
    lines += [
        "",
        f"Thresholds: exact np.quantile on the float32 activations took {t['numpy_exact_seconds']:.3f} s; the store's "
        f"streaming histogram added {t['store_histogram_seconds']:.3f} s over the build and "
        f"{t['store_quantile_seconds']:.3f} s to read the quantiles out.",
        "",
        "## Timings (seconds)",
        "",
        "| step | seconds |",
        "|---|---|",
    ]
    for name, value in perf["seconds"].items():
        lines.append(f"| {name} | {fmt(value, 3)} |")
    lines += ["", "## Scaling (fresh processes)", "",
              "| images | store build s | img/s | RSS before build MB | build peak RSS MB | explain layer s |",
              "|---|---|---|---|---|---|"]
    for row in perf["scaling"]:
        lines.append(f"| {row['n']} | {row['build_seconds']:.1f} | {row['n'] / row['build_seconds']:.1f} | "
                     f"{row['rss_before_build_mb']:.0f} | {row['build_peak_rss_mb']:.0f} | "
                     f"{row['explain_seconds']:.2f} |")
    m = perf["machine"]
    lines += ["", "## Machine", ""]
    lines += [f"- {k}: {v}" for k, v in m.items()]
    lines += [f"- load average at start / end: {perf['load_start']} / {perf['load_end']}",
              f"- total benchmark time: {perf['total_seconds']:.0f} s", ""]
    if perf.get("notes"):
        lines += ["## Notes", ""] + [f"- {note}" for note in perf["notes"]] + [""]
    (out / "perf.md").write_text("\n".join(lines))


# ---------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/bench")
    parser.add_argument("--n", type=int, default=200, help="N: images of the main measurements (scaling: N, 2N, 4N)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: the store's)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds of forward/store timings")
    parser.add_argument("--reference-filters", type=int, default=4, help="filters sampled for the reference explain")
    parser.add_argument("--reference-batches", type=int, default=2, help="batches timed for the reference epoch")
    parser.add_argument("--work-dir", default=None, help="where bench stores go (default: a temp folder, removed)")
    parser.add_argument("--only", choices=("all", "perf", "pipeline"), default="all",
                        help="perf: the figures above (perf.md); pipeline: the end-to-end stage table (pipeline.md)")
    add_pipeline_arguments(parser, prefix="pipeline-")
    args = parser.parse_args()
    if args.only != "pipeline":
        run_perf(args)
    if args.only != "perf":
        out = Path(args.output_dir)
        run_pipeline(args.pipeline_images, out, args.device, args.pipeline_forward_rounds, args.pipeline_extras,
                     args.pipeline_encode_words)
        print((out / "pipeline.md").read_text())


def run_perf(args) -> None:
    """The figures of perf.md."""
    started = time.perf_counter()
    load_start = load_average()
    device = resolve_device(args.device)
    workers = BuildSettings(num_workers=args.workers).workers
    n = args.n
    out = Path(args.output_dir)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="lavise-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    try:
        log(f"setup: {MODEL}, StampScenes (built on first use), N={n}, device={device}")
        model, data = setup(n)
        model.fingerprint
        space = load_word_space()
        torch.manual_seed(0)

        # 1. store build vs bare forward, alternating to share out background load
        seconds = {"forward_full": [], "forward_truncated": [], "store_build": []}
        store, exact_acts = None, None
        for r in range(args.rounds):
            order = ["forward_full", "forward_truncated", "store_build"]
            for step in (order if r % 2 == 0 else order[::-1]):
                if step == "forward_full":
                    t, _ = bare_forward(model, data, args.batch_size, workers, device, truncated=False)
                elif step == "forward_truncated":
                    t, kept = bare_forward(model, data, args.batch_size, workers, device, truncated=True,
                                           keep=exact_acts is None)
                    exact_acts = kept if exact_acts is None else exact_acts
                else:
                    t, store = build_store(model, data, work / f"main{r}", args.batch_size, workers, device)
                seconds[step].append(t)
                log(f"round {r}: {step} {t:.1f} s ({n / t:.1f} img/s)")
        mean = {k: float(np.mean(v)) for k, v in seconds.items()}
        store_vs_forward = mean["forward_full"] / mean["store_build"]
        store_vs_truncated = mean["forward_truncated"] / mean["store_build"]

        # 2. thresholds against the exact computation on float32 activations
        with Timer() as exact_timer:
            flat = exact_acts.transpose(1, 0, 2, 3).reshape(exact_acts.shape[1], -1)
            exact = np.quantile(flat, store.manifest["quantile"], axis=1).astype(np.float32)
        error = np.abs(store.thresholds - exact)
        histogram = load_histogram(store.path)
        with Timer() as quantile_timer:
            histogram_quantiles(histogram["floors"], histogram["below"], histogram["counts"],
                                store.manifest["quantile"])
        hist = TailHistogram(store.shape[1], device)
        halves = torch.from_numpy(np.array(store.activations))
        with Timer(device) as hist_timer:
            for lo in range(0, n, args.batch_size):
                hist.add(halves[lo:lo + args.batch_size].to(device), store.manifest["quantile"])
        thresholds = {
            "max_abs_error": float(error.max()),
            "max_rel_error": float((error / np.maximum(np.abs(exact), 1e-6)).max()),
            "mean_abs_error": float(error.mean()),
            "numpy_exact_seconds": exact_timer.seconds,
            "store_histogram_seconds": hist_timer.seconds,
            "store_quantile_seconds": quantile_timer.seconds,
            "images": n,
        }
        log(f"thresholds: max abs error {thresholds['max_abs_error']:.2e}")
        del exact_acts, flat, halves

        # 3. explainer training: mapper for the explanations, epoch timings
        log("training the explainer (toolkit)")
        with Timer() as fit_timer:
            mapper = ExplainerTrainer(store, space, show_progress=False, device=device).fit()
        trainer = ExplainerTrainer(store, space, show_progress=False, device=device)
        with Timer() as pool_timer:
            trainer.pooled()
        epoch_store = toolkit_epoch(trainer)
        per_image, ref_images = reference_epoch(model, data, trainer, args.batch_size, workers, device,
                                                args.reference_batches)
        epoch_reference = per_image * n
        log(f"epoch: reference {epoch_reference:.1f} s (scaled), store {epoch_store:.3f} s")

        # 4. explaining the whole layer
        t_explain, explainer = toolkit_explain(store, mapper, space, device)
        channels = store.shape[1]
        rng = np.random.default_rng(0)
        sample = np.sort(rng.choice(channels, size=min(args.reference_filters, channels), replace=False))
        t_reference = reference_explain(model, data, store, explainer, sample, device)
        reference_layer = t_reference / len(sample) * channels
        log(f"explain: toolkit {t_explain:.2f} s, reference {reference_layer:.0f} s (scaled from {len(sample)} filters)")

        # 5. scaling and memory: fresh processes at N, 2N, 4N
        scaling = []
        for k in (1, 2, 4):
            row = fresh_build(k * n, work / f"scale{k}", args)
            scaled_store = ActivationStore.open(row["path"])
            row["build_seconds"] = row.pop("seconds")
            row["explain_seconds"], _ = toolkit_explain(scaled_store, mapper, space, device)
            scaling.append(row)
            log(f"scaling: {k * n} images, build {row['build_seconds']:.1f} s, peak RSS {row['peak_rss_mb']:.0f} MB")
        memory_growth = scaling[-1]["build_peak_rss_mb"] / scaling[0]["build_peak_rss_mb"]
        if math.isnan(memory_growth):
            memory_growth = scaling[-1]["peak_rss_mb"] / scaling[0]["peak_rss_mb"]
        system = fresh_build(n, work / "allocator_system", args, env={"LAVISE_NB_MALLOC": "system"})
        tuned = fresh_build(n, work / "allocator_tuned", args, env={"LAVISE_NB_MALLOC": "fast"})
        allocator_speedup = system["seconds"] / tuned["seconds"]
        allocator_memory = tuned["build_peak_rss_mb"] / system["build_peak_rss_mb"]
        log(f"allocator: default thresholds {system['seconds']:.1f} s, raised {tuned['seconds']:.1f} s")
        growth_increment = ((scaling[-1]["build_peak_rss_mb"] - scaling[-1]["rss_before_build_mb"])
                            / max(1.0, scaling[0]["build_peak_rss_mb"] - scaling[0]["rss_before_build_mb"]))

        end_to_end = (mean["store_build"] + t_explain) / mean["forward_full"]
        load_end = load_average()
        cores = os.cpu_count() or 1
        if max(load_start + load_end or [0]) > cores:
            notes.append(f"the load average ({load_start} at start, {load_end} at end) exceeded the {cores} cores: "
                         "other processes shared the CPU, so absolute timings are slower than the machine's and "
                         "ratios carry extra noise (store and forward timings were alternated to share it out)")
        notes.append("reference explain and reference epoch stop the network after the layer and get the top-p "
                     "images from the store's maxima (both generous to the reference)")
        notes.append("end_to_end excludes training the explainer (a one-off per layer: "
                     f"{fit_timer.seconds:.1f} s here, pooling the masks {pool_timer.seconds:.1f} s of it)")
        perf = {
            "n": n, "batch_size": args.batch_size, "workers": workers, "model": MODEL, "layer": LAYER,
            "machine": machine(device), "load_start": load_start, "load_end": load_end,
            "ratios": {
                "store_vs_forward": store_vs_forward,
                "store_vs_truncated_forward": store_vs_truncated,
                "explain_layer_speedup": reference_layer / t_explain,
                "end_to_end_vs_forward": end_to_end,
                "train_epoch_speedup": epoch_reference / epoch_store,
                "memory_growth": memory_growth,
                "memory_growth_of_build_increment": growth_increment,
                "allocator_speedup": allocator_speedup,
                "allocator_memory": allocator_memory,
            },
            "targets": {k: f"{op} {v:g}" for k, (op, v) in TARGETS.items()},
            "seconds": {
                "forward_full": mean["forward_full"], "forward_truncated": mean["forward_truncated"],
                "store_build": mean["store_build"],
                "explain_layer_toolkit": t_explain, "explain_layer_reference_scaled": reference_layer,
                "explain_reference_sampled": t_reference,
                "train_epoch_store": epoch_store, "train_epoch_reference_scaled": epoch_reference,
                "train_pool_masks_once": pool_timer.seconds, "train_fit_toolkit": fit_timer.seconds,
                "store_build_default_allocator": system["seconds"], "store_build_raised_thresholds": tuned["seconds"],
            },
            "rounds": {k: v for k, v in seconds.items()},
            "explain": {"reference_filters": len(sample), "sampled": sample.tolist(), "channels": channels},
            "train": {"reference_images": ref_images},
            "thresholds": thresholds,
            "scaling": scaling,
            "notes": notes,
        }
        perf["status"] = {k: verdict(k, perf["ratios"][k]) for k in TARGETS}
        perf["total_seconds"] = time.perf_counter() - started
        write_report(out, perf)
        log(f"wrote {out / 'perf.json'} and {out / 'perf.md'} in {perf['total_seconds']:.0f} s")
        print((out / "perf.md").read_text())
    finally:
        if not args.work_dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
