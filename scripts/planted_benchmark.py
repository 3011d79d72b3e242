"""Planted-detector benchmark: do held-out concepts' words come back when a filter truly detects them?

On the embedded default (EfficientNet-Lite0, StampScenes, `_blocks.15`), six logistic probes are fitted on the
layer's features and planted after it as extra channels (lavise_nb.detectors), with 4 noise channels: two
concepts ImageNet has among its 1000 classes, two it lacks, two backgrounds (not objects). Each planted channel
is then explained with the concrete-noun vocabulary (plus the concepts) under every setting:

  training    held-out (the six are the only concepts left out of the explainer's training) / seen (all concepts)
  space       glove+minilm (the notebooks' default) / glove (GloVe 6B 50d alone)
  method      attention (soft mask) / activation_masking
  prior       class prior (ClassPrior, the model's own ImageNet predictions for the region) off / on
  calibrated  calibrated stacking (GammaCalibration at the filter level, tuned for the nouns) off / on

Writes under --output-dir (default outputs/planted):
  planted_ranks.csv   one row per setting x planted channel: the rank of its planted word among the filter's
                      words (NaN: not among the first --top-words), its first 5 words, the top word's share
  planted_probes.csv  the planted channels: concept, kind, probe held-out cell AUC, held-out image AUC
  planted_summary.md  the pivot (setting x concept -> rank), the count of held-out concepts at rank <= 5
                      without the prior, the noise channels, timings
  cache/              probes, mappers, calibrations and weak labels, reused by the next run with the same data

--smoke: 300 images, top-5 images per filter (p=5) and the attention method only (about 5 minutes).
--p and --ranking set the explainer's top images and word order (ExplainSettings.p, .ranking) in every setting.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from lavise_nb import (ActivationStore, ExplainerTrainer, FilterExplainer, Reference, ReferenceSpec, Vocabulary,
                       load_word_space)
from lavise_nb.calibration import Calibration, GammaCalibration
from lavise_nb.coherence import NULL_LEVEL
from lavise_nb.config import RANKINGS, CalibrationSettings, ExplainSettings, TrainingConfig
from lavise_nb.detectors import (ProbeSettings, Probes, concept_kind, firing_auc, fit_probes, plant,
                                 planted_ranks)
from lavise_nb.labels import model_labels
from lavise_nb.mapper import Mapper
from lavise_nb.prior import ClassPrior

LAYER = "_blocks.15"
PREFERRED = {"imagenet": ("tiger", "pineapple"), "not-imagenet": ("giraffe", "kangaroo"),
             "not-object": ("forest", "ocean")}
SPACES = {"glove+minilm": "glove-6b-50d+minilm", "glove": "glove-6b-50d"}
METHODS = ("attention", "activation_masking")
GAMMAS = tuple(round(0.02 * i, 2) for i in range(16))  # 0 to 0.30: filter-level gammas are small


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--output-dir", default="outputs/planted")
    parser.add_argument("--smoke", action="store_true", help="300 images, p=5, attention only")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--top-words", type=int, default=100, help="words listed per filter (deeper ranks: NaN)")
    parser.add_argument("--max-epochs", type=int, default=TrainingConfig().max_epochs,
                        help="a ceiling; early stopping ends training (the recorded run of the note used 60)")
    parser.add_argument("--no-weak-labels", action="store_true",
                        help="train without the model's own ImageNet predictions (the notebooks use them)")
    parser.add_argument("--p", type=int, default=ExplainSettings.p, help="top images per filter (--smoke: 5)")
    parser.add_argument("--ranking", default=ExplainSettings.ranking, choices=RANKINGS,
                        help="how a filter's words are ordered (ExplainSettings.ranking)")
    parser.add_argument("--store-root", default=None)
    args = parser.parse_args()
    if args.smoke:
        args.n_images = 300
    return args


class Clock:
    """Wall-clock seconds per step, printed as they end."""

    def __init__(self):
        self.start, self.steps = time.time(), {}

    def __call__(self, name: str, started: float) -> None:
        self.steps[name] = self.steps.get(name, 0.0) + time.time() - started
        print(f"[{time.time() - self.start:7.1f} s] {name}: {time.time() - started:.1f} s", flush=True)


def choose_concepts(store, space_names, min_masks: int) -> tuple[list, list]:
    """Two concepts of each kind, the preferred ones when the store has at least ``min_masks`` of them,
    else the kind's concepts with the most masks; returns (concepts, notes)."""
    counts = store.objects.groupby("concept")["image"].nunique().sort_values(ascending=False, kind="stable")
    chosen, notes = [], []
    for kind, preferred in PREFERRED.items():
        picks = []
        for name in preferred:
            if counts.get(name, 0) >= min_masks:
                picks.append(name)
            else:
                notes.append(f"{name}: {counts.get(name, 0)} images with masks (< {min_masks}), replaced")
        for name in counts.index:
            if len(picks) == 2:
                break
            if name not in picks and counts[name] >= min_masks and concept_kind(name, store) == kind \
                    and " " not in name and all(name in names for names in space_names):
                picks.append(name)
                notes.append(f"{name}: picked for kind {kind} ({counts[name]} images with masks)")
        chosen += picks
    notes += [f"{name} ({concept_kind(name, store)}): {counts[name]} images with masks" for name in chosen]
    return chosen, notes


def cached_probes(store, concepts, cache: Path) -> Probes:
    """Fit once per (store, concepts): the planted model's weights, hence its store key, stay the same."""
    path = cache / f"probes_{store.path.name}_{'-'.join(concepts)}.pt"
    if path.is_file():
        return Probes.load(path)
    probes = fit_probes(store, concepts, ProbeSettings(n_noise=4, seed=0))
    probes.save(path)
    return probes


def cached_weak_labels(model, dataset, store, cache: Path, device) -> pd.DataFrame:
    path = cache / f"weak_labels_{store.path.name}.parquet"
    if path.is_file():
        return pd.read_parquet(path)
    labels = model_labels(model, dataset, top=3, min_probability=0.05, store=store, device=device, show_progress=False)
    labels.to_parquet(path, index=False)
    return labels


def cached_mapper(path: Path, store, space, fit) -> Mapper:
    if path.is_file():
        return Mapper.load(path, store, space)
    mapper = fit()
    mapper.save(path)
    return mapper


def cached_calibration(path: Path, fit) -> Calibration:
    if path.is_file():
        return Calibration.from_dict(json.loads(path.read_text()))
    record = fit()
    path.write_text(json.dumps(record.to_dict()))
    return record


def run_space(space_label, space, context, clock) -> list:
    """Every setting of one word space; returns the planted_ranks rows with the setting columns."""
    store, channels, args = context["store"], context["channels"], context["args"]
    nouns = Vocabulary.concrete_nouns(space)
    rows = []
    for training in ("held-out", "seen"):
        seen = context["others"] if training == "held-out" else context["others"] + context["concepts"]
        config = TrainingConfig(seen=tuple(seen), max_epochs=args.max_epochs, seed=0)
        tag = (f"{space_label}_{training}_{store.path.name}_{args.max_epochs}"
               f"{'_noweak' if context['labels'] is None else ''}")
        started = time.time()
        trainer = ExplainerTrainer(store, space, config, weak_labels=context["labels"], show_progress=False)
        mapper = cached_mapper(context["cache"] / f"mapper_{tag}.pt", store, space, trainer.fit)
        clock(f"train explainer ({space_label}, {training})", started)
        base_settings = ExplainSettings(p=context["p"], top_words=args.top_words, ranking=args.ranking)
        calibrator = GammaCalibration(store, mapper, space, base_settings, vocabulary=nouns,
                                      calibration=CalibrationSettings(gammas=GAMMAS), weak_labels=context["labels"])
        started = time.time()
        inner = cached_mapper(context["cache"] / f"inner_{tag}.pt", store, space, calibrator.inner_mapper)
        clock(f"train inner explainer ({space_label}, {training})", started)
        for method in context["methods"]:
            settings = dataclasses.replace(base_settings, method=method)
            for use_prior in (False, True):
                prior = context["priors"][space_label] if use_prior else None
                started = time.time()
                calibrator = GammaCalibration(store, mapper, space, settings, vocabulary=nouns, prior=prior,
                                              calibration=CalibrationSettings(gammas=GAMMAS),
                                              weak_labels=context["labels"])
                lift = "_lift" if args.ranking == "lift" else ""
                name = f"calibration_{tag}_{method}_{context['p']}{lift}_{'prior' if use_prior else 'none'}.json"
                record = cached_calibration(context["cache"] / name, lambda: calibrator.fit(inner))
                clock(f"calibrate ({space_label}, {training}, {method}, prior {use_prior})", started)
                for calibrated in (False, True):
                    explainer = FilterExplainer(store, mapper.calibrated(record), space, nouns,
                                                dataclasses.replace(settings, calibrated=calibrated), prior=prior)
                    ranks = planted_ranks(explainer, channels)
                    ranks.insert(0, "space", space_label)
                    ranks.insert(1, "training", training)
                    ranks.insert(2, "method", method)
                    ranks.insert(3, "prior", use_prior)
                    ranks.insert(4, "calibrated", calibrated)
                    ranks.insert(5, "filter_gamma", record.gammas[1] if calibrated else 0.0)
                    rows.append(ranks)
    return rows


def setting_label(row) -> str:
    return (f"{row['space']} / {row['training']} / {row['method']} / prior {'on' if row['prior'] else 'off'} / "
            f"{'calibrated' if row['calibrated'] else 'raw'}")


def rank_text(rank: float, top_words: int) -> str:
    return f">{top_words}" if np.isnan(rank) else str(int(rank))


def summary(ranks: pd.DataFrame, probes: pd.DataFrame, notes: list, clock: Clock, args, p: int) -> str:
    settings = ["space", "training", "method", "prior", "calibrated"]
    concepts = ranks[ranks["kind"] != "noise"]
    noise = ranks[ranks["kind"] == "noise"]
    order = list(dict.fromkeys(concepts["concept"]))
    pivot = concepts.set_index(settings + ["concept"])["rank"].unstack("concept").reindex(columns=order)
    n_noise = int(noise.groupby(settings).size().max()) if len(noise) else 0
    def view(channels, name):  # median top-word share, channels flagged by coherence, median coherence
        return channels.assign(flagged=channels["null_share"] > NULL_LEVEL).groupby(settings).agg(
            **{f"{name}_share": ("top_share", "median"), f"{name}_flagged": ("flagged", "sum"),
               f"{name}_coherence": ("coherence", "median")})

    named = noise.groupby(settings)["top_is_planted"].sum().rename("named_by_planted")
    n_planted = int(concepts.groupby(settings).size().max()) if len(concepts) else 0
    table = pivot.join(named).join(view(noise, "noise")).join(view(concepts, "planted")).reset_index()
    lines = [f"# Planted detectors: EfficientNet-Lite0 `{LAYER}`, StampScenes, {args.n_images} images", "",
             f"Candidates: WordNet concrete nouns plus the store's concepts; p={p} top images per filter, words "
             f"ordered by {args.ranking}, {args.top_words} words listed per filter (`>{args.top_words}`: not among "
             "them); weak labels "
             f"{'off' if args.no_weak_labels else 'on'}; explainer max_epochs={args.max_epochs}. Held out: the six "
             "planted concepts are the only concepts left out of training; seen: every concept is trained.", "",
             "## The planted channels", "",
             "| channel | concept | kind | probe held-out cell AUC | held-out image AUC (per-image max) |",
             "|---|---|---|---|---|"]
    lines += [f"| {r.channel} | {r.concept if isinstance(r.concept, str) else 'noise'} | {r.kind} | {r.auc:.3f} | "
              f"{r.image_auc:.3f} |" for r in probes.itertuples()]
    lines += ["", "Concept choice: " + "; ".join(notes) + ".", "",
              "## Rank of each planted word, per setting", "",
              "noise: noise channels whose first word is a planted concept; shares: median top-word "
              "share (votes / the votes of the listed words) of noise and planted channels; flagged: channels "
              f"whose null_share > {NULL_LEVEL} (their images agree no more than a random direction's), with "
              "the median coherence in brackets.", "",
              "| space | training | method | prior | calibrated | " + " | ".join(order) +
              " | noise named by planted | noise share | planted share | noise flagged | planted flagged |",
              "|" + "---|" * (len(order) + 10)]
    for _, r in table.iterrows():
        cells = [r["space"], r["training"], r["method"], "on" if r["prior"] else "off",
                 "yes" if r["calibrated"] else "no"]
        cells += [rank_text(r[c], args.top_words) for c in order]
        cells += [f"{int(r['named_by_planted'])}/{n_noise}", f"{r['noise_share']:.2f}", f"{r['planted_share']:.2f}",
                  f"{int(r['noise_flagged'])}/{n_noise} ({r['noise_coherence']:.2f})",
                  f"{int(r['planted_flagged'])}/{n_planted} ({r['planted_coherence']:.2f})"]
        lines.append("| " + " | ".join(cells) + " |")
    held = concepts[concepts["training"] == "held-out"]
    counts = held.assign(top5=held["rank"] <= 5).groupby(["prior", "space", "method", "calibrated"])["top5"].sum()
    lines += ["", "## Held-out concepts at rank <= 5 (of 6)", "", "| prior | space | method | calibrated | count |",
              "|---|---|---|---|---|"]
    lines += [f"| {'on' if k[0] else 'off'} | {k[1]} | {k[2]} | {'yes' if k[3] else 'no'} | {int(v)} |"
              for k, v in counts.items()]
    seen = concepts[concepts["training"] == "seen"]
    lines += ["", f"Seen concepts at rank 1: {int((seen['rank'] == 1).sum())} of {len(seen)} (setting x concept).",
              f"Noise channels named first by a planted concept: {int(noise['top_is_planted'].sum())} of "
              f"{len(noise)}; their most frequent first words: "
              + ", ".join(f"{w} ({n})" for w, n in noise["top_word"].value_counts().head(8).items()) + ".",
              "", "## Timings (s)", ""]
    lines += [f"- {name}: {seconds:.0f}" for name, seconds in clock.steps.items()]
    lines.append(f"- total: {time.time() - clock.start:.0f}")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse()
    clock = Clock()
    out = Path(args.output_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    p = 5 if args.smoke else args.p
    methods = METHODS[:1] if args.smoke else METHODS

    started = time.time()
    ref = Reference.load(ReferenceSpec(n_images=args.n_images, device=args.device, store_root=args.store_root),
                         show_progress=False)
    spaces = {"glove+minilm": ref.space, "glove": load_word_space(SPACES["glove"])}
    clock("load reference (model, scenes, store, word spaces)", started)

    started = time.time()
    concepts, notes = choose_concepts(ref.store, [spaces[s] for s in spaces], max(3, args.n_images // 100))
    probes = cached_probes(ref.store, concepts, cache)
    planted = plant(ref.model, LAYER, probes)
    clock("fit probes and plant", started)
    images = torch.stack([ref.dataset[i]["image"] for i in range(8)]).to(ref.model.device)
    with torch.no_grad():
        change = float((planted.model.module(images) - ref.model.module(images)).abs().max())
    assert change == 0.0, f"planting changed the logits by {change}"

    started = time.time()
    store = ActivationStore.build(planted.model, planted.layer, ref.dataset, root=args.store_root,
                                  device=args.device, show_progress=False)
    clock("build the planted store", started)
    firing = firing_auc(store, planted.channels, probes.test_images)
    probe_table = planted.channels.merge(firing[["channel", "image_auc"]], on="channel", how="left")
    probe_table.to_csv(out / "planted_probes.csv", index=False)
    print(probe_table.to_string(), flush=True)

    started = time.time()
    labels = None if args.no_weak_labels else cached_weak_labels(planted.model, ref.dataset, store, cache, args.device)
    clock("weak labels", started)
    others = [c for c in store.concepts if c not in concepts]
    priors = {label: ClassPrior(planted.model, ref.dataset, space, device=args.device, show_progress=False)
              for label, space in spaces.items()}
    context = dict(store=store, channels=planted.channels, args=args, concepts=concepts, others=others,
                   labels=labels, cache=cache, p=p, methods=methods, priors=priors)
    rows = []
    for label, space in spaces.items():
        rows += run_space(label, space, context, clock)
    ranks = pd.concat(rows, ignore_index=True)
    ranks.to_csv(out / "planted_ranks.csv", index=False)
    text = summary(ranks, probe_table, notes, clock, args, p)
    (out / "planted_summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
