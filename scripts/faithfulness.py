"""Faithfulness of each method's first word per filter, side by side (a section of `make quality`).

For each method, every filter's first word is scored
- on held-out reference scenes (another seed; never used to train the explainer or choose top images):
  per-image presence (Pearson r, AUPRC, AUC) and pixel AUPRC;
- on probe scenes composed for the word against control scenes (AUC, MAD).
Medians are over the filters whose word could be tested, printed with that coverage.

Writes under --output-dir: faithfulness_pairs.csv (one row per method x filter), faithfulness.csv (medians),
faithfulness.md.
"""
from __future__ import annotations

import argparse
import functools
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from scipy.stats import mannwhitneyu, wilcoxon

from lavise_nb import (ClassPrior, ExplainerTrainer, ExplainSettings, FilterExplainer, GammaCalibration, Reference,
                       ReferenceSpec, TrainingConfig, network_dissection)
from lavise_nb.config import CalibrationSettings
from lavise_nb.datasets import collate_samples
from lavise_nb.evaluate import frequency_baseline, invert_labels
from lavise_nb.faithfulness import PresenceScore, ProbeScenes, WordVerification, coverage, first_words
from lavise_nb.labels import model_labels
from lavise_nb.probe import load_model, recalibrate_batchnorm
from lavise_nb.store import ActivationStore

DEFAULT = "lavise (notebook defaults: nouns, weak labels, prior from the stored maps, calibrated)"
CROPS = "lavise, prior from image crops (source='region')"
LIFT = "lavise, words ordered by lift, p=100 (ranking='lift')"
LIFT_SETTINGS = ExplainSettings(p=100, ranking="lift")
LIFT_TABLE = f"lavise_prior_{LIFT_SETTINGS.ranking}_p{LIFT_SETTINGS.p}_floor{LIFT_SETTINGS.lift_floor:g}.csv"
#: The other store-based pooling methods, each with the notebooks' pipeline (weak labels, prior, nouns, calibrated);
#: image masking is left out: it runs the network once per pair and GammaCalibration cannot calibrate it.
METHOD_SETTINGS = {f"lavise defaults, method {s.name}": s for s in (
    ExplainSettings(attention="paper"), ExplainSettings(attention="code"),
    ExplainSettings(method="activation_masking", attention="paper"), ExplainSettings(method="original"))}
VERIFIED = "lavise's 10 words, the best-supported on other probe scenes (WordVerification)"
VERIFIED_LABEL = "lavise's 10 words and the dissection label, the best-supported on other probe scenes"
SCORES = [("held_out", "auc"), ("held_out", "auprc"), ("held_out", "correlation"), ("held_out", "pixel_auprc"),
          ("probe", "auc"), ("probe", "mad")]


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", default="outputs/quality")
    parser.add_argument("--n-images", type=int, default=2000, help="reference scenes (the held-out set has as many)")
    parser.add_argument("--probe-images", type=int, default=60, help="probe scenes per word, and controls")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seen-fraction", type=float, default=TrainingConfig.seen_fraction,
                        help="share of the annotated concepts the LaViSE explainer is trained on (the rest are its "
                             "zero-shot concepts); 1.0 trains on all, as Network Dissection uses all")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-random-network", action="store_true")
    return parser.parse_args()


def grid(seed: int) -> CalibrationSettings:
    return CalibrationSettings(seed=seed, gammas=[round(0.02 * i, 2) for i in range(26)])


def lavise_words(ref, mapper, inner, labels, prior, vocabulary, seed: int,
                 settings: ExplainSettings | None = None) -> pd.DataFrame:
    """The notebooks' explanations: the gamma calibrated under the explainer's own settings, prior and vocabulary
    (``inner``: the calibration's inner head, the same for every setting)."""
    settings = ExplainSettings() if settings is None else settings
    record = GammaCalibration(ref.store, mapper, ref.space, settings, calibration=grid(seed), vocabulary=vocabulary,
                              weak_labels=labels, prior=prior).fit(inner)
    return FilterExplainer(ref.store, mapper.calibrated(record), ref.space, vocabulary, settings,
                           prior=prior).explain()


def cached(path: Path, make) -> pd.DataFrame:
    """``make()``'s table, written to ``path`` once and read back on later runs (the slow steps resume)."""
    if path.is_file():
        return pd.read_csv(path)
    table = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return table


def random_words(store, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    concepts = np.asarray(store.concepts, dtype=object)
    return pd.DataFrame({"filter": np.arange(store.shape[1]), "rank": 1,
                         "word": concepts[rng.integers(0, len(concepts), store.shape[1])]})


def score_all(methods: dict, presence: dict, probes: dict) -> pd.DataFrame:
    """methods: name -> (network, explanation table); presence/probes: network -> scorer."""
    tables = []
    for name, (network, explanations) in methods.items():
        pairs = first_words(explanations, 1)
        held = presence[network].score(pairs)
        probe = probes[network].score(pairs)
        table = pairs.assign(method=name, network=network)
        for source, scored in (("held_out", held), ("probe", probe)):
            cols = [c for c in scored.columns if c not in ("filter", "word", "rank")]
            table = table.join(scored[cols].add_prefix(f"{source}_"))
        tables.append(table)
    return pd.concat(tables, ignore_index=True)


def summarise(pairs: pd.DataFrame, n_filters: int) -> pd.DataFrame:
    rows = []
    for (method, network), part in pairs.groupby(["method", "network"], sort=False):
        row = dict(method=method, network=network)
        for source, score in SCORES:
            testable = part[part[f"{source}_testable"].astype(bool)]
            row[f"{source}_{score}"] = testable[f"{source}_{score}"].median()
            row[f"{source}_coverage"] = coverage(part.rename(columns={f"{source}_testable": "testable"}), n_filters)
        probe = part[part["probe_testable"].astype(bool)]
        row["probe_share_auc_0.85"] = float((probe["probe_auc"] >= 0.85).mean()) if len(probe) else np.nan
        rows.append(row)
    return pd.DataFrame(rows)


def head_to_head(pairs: pd.DataFrame, a: str, b: str, score: str = "probe_auc") -> str:
    """On the filters both methods' words can be tested on: medians and how often each wins."""
    testable = ("held_out" if score.startswith("held_out") else "probe") + "_testable"
    one = pairs[(pairs["method"] == a) & pairs[testable].astype(bool)].set_index("filter")
    two = pairs[(pairs["method"] == b) & pairs[testable].astype(bool)].set_index("filter")
    both = one.index.intersection(two.index)
    if not len(both):
        return f"{a} vs {b}: no filter both can be tested on"
    x, y = one.loc[both, score], two.loc[both, score]
    p = wilcoxon(x, y, zero_method="wilcox").pvalue if (x != y).any() else np.nan
    return (f"{a} vs {b} on the {len(both)} filters both can be tested on ({score}): median {x.median():.3f} vs "
            f"{y.median():.3f}; {a} better on {(x > y).sum()}, {b} on {(y > x).sum()}, tied {(x == y).sum()} "
            f"(Wilcoxon p = {p:.2g})")


def verified_words(explanations: pd.DataFrame, verification: WordVerification, dissection=None) -> pd.DataFrame:
    """Each filter's best-supported word as a one-word explanation table (``source``: where it came from)."""
    table = verification.verify(explanations, dissection).drop_duplicates("filter")
    return pd.DataFrame({"filter": table["filter"], "rank": 1, "word": table["verified_word"],
                         "source": table["verified_from"]})


def by_split(pairs: pd.DataFrame, a: str, b: str, seen: set, score: str = "probe_auc") -> list[str]:
    """:func:`head_to_head` on the filters whose ``b`` word is a concept the LaViSE explainer was trained on,
    then on those whose ``b`` word it was not (its zero-shot concepts)."""
    words = pairs[pairs["method"] == b].set_index("filter")["word"]
    lines = []
    for name, keep in (("seen", words.isin(seen)), ("held out of LaViSE's training", ~words.isin(seen))):
        filters = set(words.index[keep])
        if not filters:
            continue
        part = pairs[pairs["filter"].isin(filters)]
        lines.append(f"- {b}'s word {name} ({len(filters)} filters): " + head_to_head(part, a, b, score))
    return lines


def agreement(pairs: pd.DataFrame, a: str, b: str = "netdissect") -> list[str]:
    """Is ``a``'s first word worth more where it is ``b``'s label? (The check notebook 02 shows as ``agrees``.)"""
    one = pairs[pairs["method"] == a].set_index("filter")
    two = pairs[pairs["method"] == b].set_index("filter").reindex(one.index)
    same, tested = one["word"] == two["word"], one["probe_testable"].astype(bool)
    agreeing, differ, untested = one.loc[same & tested, "probe_auc"], ~same & tested, ~same & ~tested
    lines = [f"- {a} = {b}'s label for {same.sum()} of {len(one)} filters: probe AUC median "
             f"{agreeing.median():.3f} ({(agreeing >= 0.85).mean():.0%} >= 0.85)"]
    if differ.any():
        x, y = one.loc[differ, "probe_auc"], two.loc[differ, "probe_auc"]
        p = mannwhitneyu(agreeing.dropna(), x.dropna()).pvalue if len(agreeing.dropna()) else np.nan
        lines.append(f"- where they differ and the word can be tested ({differ.sum()} filters): the word "
                     f"{x.median():.3f} (Mann-Whitney p = {p:.1g} against the agreeing ones), the label "
                     f"{y.median():.3f}; the label better on {(y > x).sum()}, worse on {(y < x).sum()}")
    if untested.any():
        lines.append(f"- where the word cannot be tested ({untested.sum()} filters): the label "
                     f"{two.loc[untested, 'probe_auc'].median():.3f}")
    return lines


def sources(verified: pd.DataFrame, name: str) -> str:
    counts = verified["source"].value_counts()
    return (f"- {VERIFIED_LABEL}: from {name}'s words only {counts.get('explainer', 0)}, the label only "
            f"{counts.get('dissection', 0)}, both {counts.get('both', 0)}, "
            f"none testable {verified['word'].isna().sum()}")


def main() -> None:
    args = parse()
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    spec = ReferenceSpec(n_images=args.n_images, seed=args.seed, device=args.device)
    ref = Reference.load(spec, show_progress=False)
    held_out = ref.held_out(show_progress=False)
    nouns = ref.vocabulary("nouns")
    store = ref.store
    labels = model_labels(ref.model, ref.dataset, top=3, min_probability=0.05, store=store, show_progress=False)
    prior = ClassPrior(ref.model, ref.dataset, ref.space, show_progress=False)
    crop_prior = ClassPrior(ref.model, ref.dataset, ref.space, source="region", show_progress=False)
    default_split = args.seen_fraction == TrainingConfig.seen_fraction
    defaults = ExplainSettings()  # cached tables hold for these settings only: the folder names them
    words = out / (f"first_words_n{args.n_images}_seed{args.seed}_p{defaults.p}_{defaults.ranking}"
                   + ("" if default_split else f"_seen{args.seen_fraction:g}"))
    config = TrainingConfig(seed=args.seed, seen_fraction=args.seen_fraction)
    trainer = ExplainerTrainer(store, ref.space, config, weak_labels=labels, device=spec.device, show_progress=False)
    seen = set(trainer.seen)
    trained = functools.cache(trainer.fit)  # the notebooks' mapper, trained only when a table is not cached
    inner = functools.cache(lambda: GammaCalibration(store, trained(), ref.space, calibration=grid(args.seed),
                                                     weak_labels=labels).inner_mapper())

    def lavise(prior_, vocabulary, settings=None):
        return lambda: lavise_words(ref, trained(), inner(), labels, prior_, vocabulary, args.seed, settings)

    methods = {
        DEFAULT: ("trained", cached(words / "lavise_prior.csv", lavise(prior, nouns))),
        CROPS: ("trained", cached(words / "lavise_crop_prior.csv", lavise(crop_prior, nouns))),
        LIFT: ("trained", cached(words / LIFT_TABLE, lavise(prior, nouns, LIFT_SETTINGS))),
        "lavise without the class prior": ("trained", cached(words / "lavise.csv", lavise(None, nouns))),
        "lavise, annotated concepts only, no prior": ("trained", cached(
            words / "lavise_concepts.csv", lavise(None, "concepts"))),
        **{name: ("trained", cached(words / f"lavise_prior_{settings.name.replace('/', '_')}.csv",
                                    lavise(prior, nouns, settings))) for name, settings in METHOD_SETTINGS.items()},
        "netdissect": ("trained", network_dissection(store, top_words=1)),
        "invert (in-sample AUC)": ("trained", invert_labels(store, top_words=1)),
        "frequency": ("trained", frequency_baseline(store, pd.DataFrame({"filter": range(store.shape[1])}), 1)),
        "random concept": ("trained", random_words(store, args.seed)),
    }
    presence = {"trained": PresenceScore(held_out.store)}
    probes = {"trained": ProbeScenes(ref.model, spec.layer, n_images=args.probe_images, device=args.device)}
    verification = WordVerification(probes["trained"], top=10)  # chosen on probes["trained"].disjoint()
    methods[VERIFIED] = ("trained", verified_words(methods[DEFAULT][1], verification))
    methods[VERIFIED_LABEL] = ("trained", verified_words(methods[DEFAULT][1], verification, methods["netdissect"][1]))
    if not args.no_random_network:
        random_model = load_model(spec.model, random_init=True, seed=args.seed, device=args.device)
        loader = torch.utils.data.DataLoader(ref.dataset, batch_size=64, collate_fn=collate_samples)
        recalibrate_batchnorm(random_model, loader)
        random_store = ActivationStore.build(random_model, spec.layer, ref.dataset, show_progress=False)
        random_held = ActivationStore.build(random_model, spec.layer, held_out.dataset, show_progress=False)
        methods["random network, netdissect"] = ("random", network_dissection(random_store, top_words=1))
        presence["random"] = PresenceScore(random_held)
        probes["random"] = ProbeScenes(random_model, spec.layer, n_images=args.probe_images, device=args.device)
    pairs = score_all(methods, presence, probes)
    pairs.to_csv(out / "faithfulness_pairs.csv", index=False)
    summary = summarise(pairs, store.shape[1])
    summary.to_csv(out / "faithfulness.csv", index=False)
    lines = [f"# Faithfulness of each method's first word ({args.n_images} reference scenes, {spec.layer}, LaViSE "
             f"trained on {len(seen)} of {len(store.concepts)} annotated concepts)", "",
             "Medians over the filters whose word could be tested; coverage beside each score.", "",
             summary.round(3).to_markdown(index=False), "",
             head_to_head(pairs, DEFAULT, "netdissect"),
             *by_split(pairs, DEFAULT, "netdissect", seen),
             *agreement(pairs, DEFAULT),
             head_to_head(pairs, VERIFIED, "netdissect"), head_to_head(pairs, VERIFIED, "netdissect", "held_out_auc"),
             head_to_head(pairs, VERIFIED_LABEL, "netdissect"),
             head_to_head(pairs, VERIFIED_LABEL, "netdissect", "held_out_auc"),
             head_to_head(pairs, VERIFIED, DEFAULT), sources(methods[VERIFIED_LABEL][1], DEFAULT),
             head_to_head(pairs, DEFAULT, CROPS),
             head_to_head(pairs, DEFAULT, LIFT), head_to_head(pairs, DEFAULT, LIFT, "held_out_auc"),
             head_to_head(pairs, LIFT, "netdissect"), *by_split(pairs, LIFT, "netdissect", seen),
             head_to_head(pairs, "lavise without the class prior", "netdissect"),
             head_to_head(pairs, "lavise, annotated concepts only, no prior", "netdissect"),
             *by_split(pairs, "lavise, annotated concepts only, no prior", "netdissect", seen),
             head_to_head(pairs, "lavise without the class prior", "netdissect", "held_out_auc"),
             *[head_to_head(pairs, name, "netdissect") for name in METHOD_SETTINGS],
             *[head_to_head(pairs, name, DEFAULT) for name in METHOD_SETTINGS], "",
             f"{time.time() - started:.0f} s"]
    (out / "faithfulness.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
