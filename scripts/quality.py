"""`make quality`: the LaViSE evaluation protocol on the embedded default, with every baseline.

Writes under --output-dir (default outputs/quality):
  recall.csv        model, layer, method, words_from, ground, subset, k, recall, pairs, + the run's settings
  explanations.csv  layer, filter, rank, word, votes, score, kind (default layer, default method)
  gamma.csv         calibration tables (gamma, seen, unseen, H) per layer
  summary.md        the headline tables
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd
import torch

from lavise_nb import (ActivationStore, ExplainerTrainer, Vocabulary, load_model, load_word_space,
                       recalibrate_batchnorm, stamp_scenes)
from lavise_nb.calibration import GammaCalibration, harmonic_mean
from lavise_nb.datasets import collate_samples
from lavise_nb.evaluate import (MethodComparison, RecallEvaluator, frequency_baseline, network_dissection,
                               oracle_words)
from lavise_nb.explain import FilterExplainer
from lavise_nb.labels import imagenet_classes, model_labels, region_labels
from lavise_nb.prior import ClassPrior
from lavise_nb.config import CalibrationSettings, ExplainSettings, TrainingConfig

METHODS = (("attention", "soft_mask"), ("attention", "paper"), ("attention", "code"),
           ("activation_masking", "paper"), ("original", "paper"))
DEFAULT_METHODS = (("attention", "soft_mask"), ("activation_masking", "paper"))
GAMMAS = [round(0.02 * i, 2) for i in range(26)]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quality")
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--layers", nargs="+", default=["_blocks.15", "_blocks.10", "_blocks.5"])
    parser.add_argument("--seen-fractions", nargs="+", type=float, default=[0.1, 0.3, 0.5, 0.7])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--split-seeds", nargs="*", type=int, default=[1, 2],
                        help="more seen/unseen splits for the default and best zero-shot setups")
    parser.add_argument("--skip", nargs="*", default=[], choices=["seen_fraction", "open_vocabulary", "random"],
                        help="leave experiments out")
    parser.add_argument("--image-masking", action="store_true", help="also run image masking (slow on CPU)")
    parser.add_argument("--device", default="auto")
    return parser.parse_args()


def baseline_rows(store, mapper, space, vocabulary, model_name: str) -> pd.DataFrame:
    """Recall of the most-frequent-concepts baseline, the oracle ceiling and Network Dissection on the pairs."""
    pairs = FilterExplainer(store, mapper, space, vocabulary).pairs()
    evaluator = RecallEvaluator(store, mapper.seen, mapper.unseen, stuff=store.stuff)
    truth = evaluator.truth(pairs)
    ceiling = oracle_words(truth[~truth["concept"].isin(store.stuff)], 20)
    return pd.concat([evaluator.evaluate(frequency_baseline(store, pairs, 20), None, pairs, "frequency", model_name),
                      evaluator.evaluate(ceiling, None, pairs, "oracle (object ceiling)", model_name),
                      evaluator.evaluate(network_dissection(store, top_words=20), None, pairs, "netdissect",
                                         model_name)], ignore_index=True)


def glove_minilm(space, nouns, concepts, template="{}"):
    """GloVe concatenated with MiniLM over the words the experiments need (the notebooks' recipe)."""
    from lavise_nb.words import hybrid_space

    return hybrid_space([*nouns.words, *concepts, *imagenet_classes()], space, template=template)


def headline(recall: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    view = recall[(recall["ground"] == "objects") & (recall["k"] == k)]
    index = [c for c in ("experiment", "layer", "seen_fraction", "candidates", "method", "calibrated") if c in view]
    view = view.assign(candidates=view["candidates"].fillna("concepts")) if "candidates" in view else view
    return view.pivot_table(index=index, columns=["words_from", "subset"], values="recall").round(3)


def zero_shot(recall: pd.DataFrame) -> pd.DataFrame:
    """Seen / unseen / H at recall@5, 10 and 20, per run, for filter and image words (object ground truth)."""
    view = recall[(recall["ground"] == "objects") & recall["subset"].isin(["seen", "unseen"])
                  & ~recall["method"].isin(["frequency", "netdissect"])]
    index = ["experiment", "layer", "seen_fraction", "candidates", "method", "calibrated"]
    wide = view.pivot_table(index=index + ["words_from", "k"], columns="subset", values="recall")
    wide["H"] = harmonic_mean(wide["seen"], wide["unseen"])
    cells = wide.apply(lambda r: f"{r['seen']:.3f} / {r['unseen']:.3f} / {r['H']:.3f}", axis=1)
    table = cells.unstack(["words_from", "k"])
    table.columns = [f"{source} words @{k}" for source, k in table.columns]
    return table[sorted(table.columns, key=lambda c: (c.split()[0] != "filter", int(c.split("@")[1])))]


def across_seeds(recall: pd.DataFrame, k: int = 20) -> pd.DataFrame:
    """Seen / unseen / H@k of the setups run on several seen/unseen splits: each split, then mean and sd."""
    view = recall[(recall["ground"] == "objects") & (recall["k"] == k) & recall["calibrated"].astype(bool)
                  & recall["subset"].isin(["seen", "unseen"])]
    view = view.assign(setup=view["experiment"].str.replace(r"_seed\d+$", "", regex=True))
    view = view[view["setup"].isin(view.loc[view["setup"] != view["experiment"], "setup"])]
    if view.empty:
        return pd.DataFrame()
    wide = view.pivot_table(index=["setup", "candidates", "method", "words_from", "split_seed"], columns="subset",
                            values="recall")
    wide["H"] = harmonic_mean(wide["seen"], wide["unseen"])
    stats = wide.groupby(level=[0, 1, 2, 3]).agg(["mean", "std", "count"])
    stats = stats[stats[("seen", "count")] > 1]
    cells = {col: stats[(col, "mean")].map("{:.3f}".format) + " ± " + stats[(col, "std")].map("{:.3f}".format)
             for col in ("seen", "unseen", "H")}
    table = pd.DataFrame(cells)
    table["splits"] = stats[("seen", "count")].astype(int)
    per_split = wide["unseen"].unstack("split_seed").round(3)
    per_split.columns = [f"unseen, split {c}" for c in per_split.columns]
    return table.join(per_split)


def main() -> None:
    args = parse()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    model = load_model("efficientnet-lite0", device=args.device)
    dataset = stamp_scenes(args.n_images, args.seed, model.preprocess)
    space = load_word_space()
    results, gammas = [], []

    def run(store, name, layer_model, seen_fraction=0.7, methods=METHODS, vocabulary="concepts",
            calibrations=(False, True), baselines=True, weak_labels=None, weak_weight=0.5, word_space=None,
            seed=None, votes_per_image=5, voting="softmax", prior=None):
        words = space if word_space is None else word_space
        seed = args.seed if seed is None else seed
        config = TrainingConfig(seen_fraction=seen_fraction, seed=seed, weak_weight=weak_weight)
        mapper = ExplainerTrainer(store, words, config, weak_labels=weak_labels).fit()
        tags = dict(experiment=name, seen_fraction=seen_fraction, word_space=words.name, split_seed=seed,
                    s=votes_per_image, voting=voting, class_prior=prior is not None,
                    candidates="concepts" if isinstance(vocabulary, str) else vocabulary.name)
        explained, inner = [], None
        for calibrated in calibrations:
            for method, attention in methods:
                settings = ExplainSettings(method=method, attention=attention, s=votes_per_image, voting=voting,
                                           calibrated=calibrated)
                tuned = mapper
                if calibrated:  # gamma is tuned for each method, on the inner split of the seen concepts
                    calibration = GammaCalibration(store, mapper, words, settings, vocabulary=vocabulary, prior=prior,
                                                   calibration=CalibrationSettings(seed=seed, gammas=GAMMAS),
                                                   weak_labels=weak_labels)
                    inner = inner or calibration.inner_mapper()
                    tuned = mapper.calibrated(calibration.fit(inner))
                    gammas.append(tuned.calibration.table.assign(method=settings.name, layer=store.layer, **tags))
                comparison = MethodComparison(store, tuned, words, settings, vocabulary=vocabulary, prior=prior,
                                              model=layer_model, dataset=dataset)
                recall, words_table = comparison.compare([(method, attention)], baselines=())
                gamma, filter_gamma = tuned.calibration.gammas if calibrated else (0.0, 0.0)
                results.append(recall.assign(calibrated=calibrated, gamma=gamma, filter_gamma=filter_gamma, **tags))
                explained.append(words_table.assign(calibrated=calibrated))
            if baselines and not calibrated:
                results.append(baseline_rows(store, mapper, words, vocabulary, layer_model.name)
                               .assign(calibrated=False, gamma=0.0, filter_gamma=0.0, **tags))
            pd.concat(results, ignore_index=True).to_csv(out / "recall.partial.csv", index=False)
            latest = pd.concat(results, ignore_index=True)
            latest = latest[(latest["experiment"] == name) & (latest["layer"] == store.layer)
                            & (latest["calibrated"] == calibrated) & (latest["seen_fraction"] == seen_fraction)]
            print(name, store.layer, seen_fraction, calibrated, "\n", headline(latest).to_string(), flush=True)
        return mapper, pd.concat(explained, ignore_index=True)

    methods = METHODS + ((("image_masking", "paper"),) if args.image_masking else ())
    default_words = None
    for layer in args.layers:
        store = ActivationStore.build(model, layer, dataset)
        first = layer == args.layers[0]
        _, words = run(store, "layers", model, methods=methods if first else DEFAULT_METHODS)
        if first:
            default_words = words
    default_store = ActivationStore.build(model, args.layers[0], dataset)

    if "random" not in args.skip:
        random_model = load_model("efficientnet-lite0", random_init=True, seed=args.seed, device=args.device)
        loader = torch.utils.data.DataLoader(dataset, batch_size=64, collate_fn=collate_samples)
        recalibrate_batchnorm(random_model, loader, max_batches=8)
        random_store = ActivationStore.build(random_model, args.layers[0], dataset)
        run(random_store, "random_network", random_model, methods=DEFAULT_METHODS)

    for fraction in ([] if "seen_fraction" in args.skip else args.seen_fractions):
        run(default_store, "seen_fraction", model, seen_fraction=fraction, methods=DEFAULT_METHODS,
            calibrations=(True,), baselines=False)

    # GloVe with weak labels: the model's own ImageNet predictions (notebook 01 trains with them by default)
    labels = model_labels(model, dataset, top=3, min_probability=0.05, store=default_store)
    run(default_store, "weak_labels", model, methods=DEFAULT_METHODS, baselines=False, weak_labels=labels)
    for s in (5, 2):  # the paper's voting: each image votes for its s best words
        run(default_store, f"weak_labels_top_s{s}", model, methods=DEFAULT_METHODS, calibrations=(True,),
            baselines=False, weak_labels=labels, votes_per_image=s, voting="top_s")
    for seed in args.split_seeds:
        run(default_store, f"weak_labels_seed{seed}", model, methods=DEFAULT_METHODS, calibrations=(True,),
            baselines=False, weak_labels=labels, seed=seed)

    nouns = Vocabulary.concrete_nouns(space)
    if "open_vocabulary" not in args.skip:
        run(default_store, "open_vocabulary", model, methods=DEFAULT_METHODS, vocabulary=nouns, baselines=False)
        run(default_store, "open_vocabulary_prior", model, methods=DEFAULT_METHODS, vocabulary=nouns, baselines=False,
            calibrations=(True,), prior=ClassPrior(model, dataset, space, device=args.device))
        run(default_store, "open_vocabulary_weak_labels", model, methods=DEFAULT_METHODS, vocabulary=nouns,
            baselines=False, weak_labels=labels)
        regions = region_labels(model, default_store, dataset, top=3, min_probability=0.3)
        run(default_store, "open_vocabulary_region_labels", model, methods=DEFAULT_METHODS, vocabulary=nouns,
            baselines=False, weak_labels=regions, weak_weight=0.25)
        combined = glove_minilm(space, nouns, default_store.concepts)
        combined_nouns = Vocabulary.from_words(combined, list(nouns.words), missing="skip", name=nouns.name)
        for name, weak in (("glove_minilm", None), ("glove_minilm_weak_labels", labels)):
            for candidates in ("concepts", combined_nouns):
                run(default_store, name, model, methods=DEFAULT_METHODS, vocabulary=candidates, baselines=False,
                    weak_labels=weak, word_space=combined)
        prompted = glove_minilm(space, nouns, default_store.concepts, template="a photo of a {}.")
        prompted_nouns = Vocabulary.from_words(prompted, list(nouns.words), missing="skip", name=nouns.name)
        run(default_store, "glove_minilm_prompt_weak_labels", model, methods=DEFAULT_METHODS,
            vocabulary=prompted_nouns, baselines=False, weak_labels=labels, word_space=prompted)
        combined_prior = ClassPrior(model, dataset, combined, device=args.device)
        run(default_store, "glove_minilm_weak_labels_top_s5", model, methods=DEFAULT_METHODS,
            calibrations=(True,), baselines=False, weak_labels=labels, word_space=combined, voting="top_s")
        for seed in [args.seed, *args.split_seeds]:  # the notebooks' default: + the model's own class prior
            for candidates in ("concepts", combined_nouns):
                name = "glove_minilm_weak_labels_prior" + (f"_seed{seed}" if seed != args.seed else "")
                run(default_store, name, model, methods=DEFAULT_METHODS, vocabulary=candidates,
                    calibrations=(True,), baselines=False, weak_labels=labels, word_space=combined, seed=seed,
                    prior=combined_prior)
        for seed in args.split_seeds:  # the space without the prior, and the prompt idea, on other splits
            for candidates in ("concepts", combined_nouns):
                run(default_store, f"glove_minilm_weak_labels_seed{seed}", model, methods=DEFAULT_METHODS,
                    vocabulary=candidates, calibrations=(True,), baselines=False, weak_labels=labels,
                    word_space=combined, seed=seed)
            run(default_store, f"glove_minilm_prompt_weak_labels_seed{seed}", model,
                methods=(("activation_masking", "paper"),), vocabulary=prompted_nouns, calibrations=(True,),
                baselines=False, weak_labels=labels, word_space=prompted, seed=seed)

    finish(out, args, started, results, gammas, default_words)


def finish(out, args, started, results, gammas, default_words) -> None:
    recall = pd.concat(results, ignore_index=True)
    recall.to_csv(out / "recall.csv", index=False)
    (out / "recall.partial.csv").unlink(missing_ok=True)
    pd.concat(gammas, ignore_index=True).to_csv(out / "gamma.csv", index=False)
    default_words.to_csv(out / "explanations.csv", index=False)
    summary = [f"# Quality on StampScenes ({args.n_images} scenes), EfficientNet-Lite0", "",
               f"Took {time.time() - started:.0f} s. Recall@20, object ground truth; rows = method, columns = "
               "(words from filter / image, concept subset).", "", headline(recall).to_markdown(), "",
               "## Seen / unseen / H at recall@5, 10, 20", "",
               "Object ground truth. Filter words: the filter's vote-ranked words; image words: each top image's "
               "own words. Calibrated runs use gamma chosen on an inner split of the seen concepts, per method.",
               "", zero_shot(recall).to_markdown(), "",
               f"## Across seen/unseen splits (seeds {args.seed}, {', '.join(map(str, args.split_seeds))})", "",
               "Calibrated, recall@20, object ground truth: mean ± sd over the splits.", "",
               across_seeds(recall).to_markdown(), ""]
    (out / "summary.md").write_text("\n".join(summary))
    print("\n".join(summary))
    print(json.dumps({"outputs": str(out)}))


if __name__ == "__main__":
    main()
