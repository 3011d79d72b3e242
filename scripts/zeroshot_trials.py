"""Zero-shot naming trials on the planted benchmark (tracker issue 13): each idea alone against one baseline.

The setting is the planted benchmark's (scripts/planted_benchmark.py, whose functions this script reuses):
EfficientNet-Lite0 `_blocks.15` on StampScenes, six logistic-probe channels planted after the layer (plus 4
noise channels), the explainer trained with the six planted concepts held out, NO class prior, the concrete
nouns (plus the concepts) as candidates. Baseline: glove+minilm, attention (soft mask), p=25, softmax voting,
uncalibrated; weak labels off by default (they are the ImageNet classifier's own predictions, so not zero-shot).

Ideas, each measured alone (`--ideas` picks a subset):

  ranking time (same trained head, nothing retrained)
    baseline        cosine
    calibrated      calibrated stacking (GammaCalibration, filter level, the benchmark's gamma grid)
    no_seen         calibrated stacking's limit: gamma = 1.0, so seen concepts effectively never rank first
    csls10/csls50   CSLS, 2 cos - r_w, r_w = a word's mean cosine to its k nearest explanation vectors of all
                    330 filters' top-p pairs (ExplainSettings(hubness="csls"))
    isoftmax        inverted softmax (Smith et al. 2017): cos - logsumexp_q(beta cos(q, w)) / beta over the
                    same pair vectors, beta = 10
    center          centre the candidate vectors (minus their mean) and the pair vectors (minus theirs), renormalise
    glove_part      rank with the GloVe block of the hybrid space only (the head's first 50 outputs, renormalised)
    minilm_part     the MiniLM block only
    conse           ConSE (Norouzi et al. 2014): the pair vector is replaced by the softmax(cos / 0.05)-weighted
                    mean of its 10 nearest seen-concept vectors
  retrained head (ExplainerTrainer, the trainer's own pooled features)
    hypernyms       extra positives: WordNet hypernyms (first sense, 1-3 levels up) of each seen concept's masks,
                    passed as region weak labels (weight 0.5); the trainer drops any label sharing a token with an
                    annotated concept, so no held-out word is taught
    vocab_negatives[:n[:seed]] n (default 1000) random concrete nouns added as negative-only labels of the hinge loss (nouns sharing a
                    token with an annotated concept left out, as the trainer does for weak labels)
    fewer_seen:f    the seen-concept count's effect among the photo concepts (scripts/clipart_trial.py adds clip-art ones):
                    train on a random share f of the seen concepts; a drop says more concepts would help
    seed:s          the baseline retrained with another seed (initialisation, batch order, validation split): the
                    noise level of every other row
    mask_level:h    diagnostic, not an idea: with head h (default the baseline), the median rank of the true word
                    among the candidates for the held-out concepts' own masks (mask-pooled, as in training)
    ridge           the mapping's form: a linear ridge map from standardised pooled features to the mean positive
                    label vector (lambda chosen on the validation images' seen top-1), cosine ranking
    reverse_ridge   the mapping's direction: ridge from label vectors to standardised pooled features; words are
                    ranked by cosine in the visual space (less hubness, Shigeto et al. 2015)
    unit_like[:mode[:seed]]
                    training on the planted units' structure: a logistic probe per seen concept (as the planted
                    ones, ProbeSettings' defaults; kept where its held-out cell AUC >= 0.95) is read as a unit, its
                    top-p images pooled under its own soft map exactly as explain pools a filter's pairs, and each
                    such row is taught its concept. mode "mix" (default) adds these rows to the masks, "only"
                    trains on them alone; the held-out six get no probe, so nothing about them is taught

For each idea: the rank of each planted word (planted_ranks: among the filter's vote-ranked words, NaN past
--top-words), the rank of the word by the filter's mean explanation vector over all candidates (diagnostic,
never NaN), the number of distinct first words over the 320 real filters, the most common first word.

Writes under --output-dir (default outputs/zeroshot): trials.csv, trials.md; cache/ for probes and mappers.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
import planted_benchmark as pb  # noqa: E402

from lavise_nb import (ActivationStore, ExplainerTrainer, FilterExplainer, Reference, ReferenceSpec,  # noqa: E402
                       Vocabulary, load_word_space)
from lavise_nb.calibration import GammaCalibration  # noqa: E402
from lavise_nb.config import CalibrationSettings, ExplainSettings, TrainingConfig  # noqa: E402
from lavise_nb.detectors import (PlantedHead, Probes, ProbeSettings, concept_cells, fit_probes, plant,  # noqa: E402
                                 planted_ranks)
from lavise_nb.pooling import pool_features  # noqa: E402
from lavise_nb.words.wordnet import fetch_wordnet, parse_wordnet_nouns  # noqa: E402

RANKING = ("baseline", "calibrated", "no_seen", "csls10", "csls50", "isoftmax", "center", "glove_part", "minilm_part", "conse")
RETRAINED = ("hypernyms", "vocab_negatives", "ridge", "reverse_ridge", "fewer_seen", "mask_level", "seed",
             "unit_like")
GLOVE_DIM = 50


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-images", type=int, default=2000)
    parser.add_argument("--output-dir", default="outputs/zeroshot")
    parser.add_argument("--store-root", default=None)
    parser.add_argument("--p", type=int, default=25)
    parser.add_argument("--top-words", type=int, default=100)
    parser.add_argument("--max-epochs", type=int, default=TrainingConfig().max_epochs)
    parser.add_argument("--weak-labels", action="store_true",
                        help="train with the classifier's own ImageNet predictions (not genuine zero-shot)")
    parser.add_argument("--ideas", default=",".join(RANKING + RETRAINED))
    return parser.parse_args()


# ----------------------------------------------------------------------------- explainer with hooks


class TrialExplainer(FilterExplainer):
    """A FilterExplainer whose pair features are shared between trials and whose scoring can be changed.

    scorer : "cosine", "isoftmax", "center", "block", "conse"
    """

    def __init__(self, *args, features: dict, scorer: str = "cosine", beta: float = 10.0, block=None,
                 conse_vectors=None, conse_t: int = 10, conse_temperature: float = 0.05, reverse=None, **kwargs):
        self._shared, self.scorer, self.beta, self.block = features, scorer, beta, block
        self.conse_vectors, self.conse_t, self.conse_temperature = conse_vectors, conse_t, conse_temperature
        super().__init__(*args, **kwargs)
        if scorer == "block":
            self.vectors = F.normalize(self.vectors[:, block], dim=1)
        elif scorer == "center":
            self.vectors = F.normalize(self.vectors - self.vectors.mean(0), dim=1)
        if reverse is not None:  # candidates become visual prototypes; the mapper standardises the features
            a, b = reverse
            self.vectors = F.normalize(self.vectors @ a.T + b, dim=1)

    def pair_features(self, pairs, directions=None):
        if directions is not None:  # the coherence null's random directions
            return super().pair_features(pairs, directions)
        key = (self.settings.method, self.settings.attention, self.settings.p, len(pairs),
               int(pairs["filter"].sum()), int(pairs["image"].sum()))
        if key not in self._shared:
            self._shared[key] = super().pair_features(pairs)
        return self._shared[key]

    def pair_vectors(self, filters=None):
        key = None if filters is None else tuple(np.asarray(filters).tolist())
        if key in self._cache:
            return self._cache[key]
        pairs = self.pairs(filters)
        vectors = self.mapper.embed(self.pair_features(pairs))
        if self.scorer == "block":
            vectors = F.normalize(vectors[:, self.block], dim=1)
        elif self.scorer == "center":
            vectors = F.normalize(vectors - vectors.mean(0), dim=1)
        elif self.scorer == "conse":
            scores = vectors @ self.conse_vectors.T
            top = scores.topk(self.conse_t, dim=1)
            weights = (top.values / self.conse_temperature).softmax(dim=1)
            vectors = F.normalize(torch.einsum("pt,ptd->pd", weights, self.conse_vectors[top.indices]), dim=1)
        self._cache[key] = (pairs, vectors, self._word_hubness(vectors))
        return self._cache[key]

    def _word_hubness(self, vectors):
        if self.scorer == "isoftmax" and len(vectors):
            return torch.cat([torch.logsumexp(self.beta * (chunk @ vectors.T), dim=1) / self.beta
                              for chunk in self.vectors.split(1024)])
        return super()._word_hubness(vectors)

    def word_scores(self, vectors, local=None):
        scores = vectors @ self.vectors.T
        if local is None:
            return scores
        return scores - local if self.scorer == "isoftmax" else 2 * scores - local


def vector_ranks(explainer: TrialExplainer, channels: pd.DataFrame) -> dict:
    """Rank of each planted word among all candidates by the filter's mean explanation vector (1 = best)."""
    filters, vectors = explainer.filter_vectors()
    _, _, local = explainer.pair_vectors(None)
    scores = explainer.word_scores(vectors, local) - explainer.seen_offsets(explainer.filter_gamma)
    row = {f: i for i, f in enumerate(filters)}
    out = {}
    for channel, concept in zip(channels["channel"], channels["concept"]):
        if isinstance(concept, str) and channel in row:
            s = scores[row[channel]]
            out[concept] = int((s > s[explainer.words.index(concept)]).sum()) + 1
    return out


def mask_ranks(trainer: ExplainerTrainer, mapper, explainer: FilterExplainer, concepts) -> dict:
    """concept -> (n_masks,) rank of its word among the explainer's candidates for each of its own masks (1 = best),
    the masks mask-pooled as in training (a head's generalisation, before any filter-level voting)."""
    masks, pooled = trainer.masks, trainer.pooled()
    out = {}
    for c in concepts:
        rows = np.flatnonzero(masks["concepts"].map(lambda t, c=c: c in t).to_numpy())
        scores = explainer.word_scores(mapper.embed(pooled[rows]))
        out[c] = (scores > scores[:, explainer.words.index(c), None]).sum(1) + 1
    return out


# ----------------------------------------------------------------------------- retrained heads


def wordnet_hypernyms(concepts, levels: int = 3) -> dict:
    """concept -> hypernym lemmas (first noun sense, 1..levels up), lower case, spaces for underscores."""
    data_noun = fetch_wordnet()
    synsets = parse_wordnet_nouns(data_noun)
    first_sense = {}
    with open(data_noun.parent / "index.noun", encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if line.startswith(" "):
                continue
            fields = line.split()
            n_synsets, n_ptrs = int(fields[2]), int(fields[3])
            offsets = fields[4 + n_ptrs + 2:]
            if offsets and n_synsets:
                first_sense[fields[0]] = offsets[0]
    out = {}
    for concept in concepts:
        start = first_sense.get(concept.replace(" ", "_").lower())
        names, frontier = [], [start] if start else []
        for _ in range(levels):
            frontier = [t for off in frontier for sym, t in synsets.get(off, ([], []))[1] if sym == "@"]
            names += [lemma.replace("_", " ").lower() for off in frontier for lemma in synsets[off][0]]
        out[concept] = list(dict.fromkeys(n for n in names if n != concept.lower()))
    return out


def hypernym_labels(trainer: ExplainerTrainer, seen, levels: int = 3) -> pd.DataFrame:
    """Region weak labels (image, label, object): each seen-concept mask gets its concepts' hypernyms."""
    hypernyms = wordnet_hypernyms(seen, levels)
    rows = []
    for mask in trainer.masks.itertuples(index=False):
        labels = {h for c in mask.concepts if c in set(seen) for h in hypernyms.get(c, [])}
        rows += [dict(image=int(mask.image), label=h, object=int(mask.object)) for h in sorted(labels)]
    return pd.DataFrame(rows, columns=["image", "label", "object"])


class NegativesTrainer(ExplainerTrainer):
    """ExplainerTrainer whose hinge loss also ranks a fixed set of negative-only words below the positives."""

    def __init__(self, *args, negatives=(), **kwargs):
        self._negatives = list(negatives)
        super().__init__(*args, **kwargs)

    def _weak(self, labels, annotated):
        names, vectors, rows = super()._weak(labels, annotated)
        tokens = {t for name in annotated for t in name.replace("-", " ").split()}
        extra = [w for w in self._negatives if w not in set(names) and not tokens & set(w.replace("-", " ").split())]
        if not extra:
            return names, vectors, rows
        embedding = self.space.embed(extra, missing="skip")
        extra_vectors = torch.as_tensor(np.asarray(embedding.vectors), dtype=torch.float32)
        return names + list(embedding.names), torch.cat([vectors, extra_vectors]), rows


class LinearHead(torch.nn.Module):
    """x -> normalize(x @ weight.T + bias), shaped like ExplainerHead for Mapper.embed (``net[-1]``)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, normalise: bool = True):
        super().__init__()
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        self.net = torch.nn.Sequential(linear)
        self.normalise = normalise

    def forward(self, pooled):
        out = self.net(pooled)
        return F.normalize(out, dim=-1) if self.normalise else out


def ridge_data(trainer: ExplainerTrainer):
    """Standardised training / validation features and mean positive label vectors of the seen masks."""
    pooled = trainer.pooled()
    val = trainer._image_split()
    targets = trainer._targets(trainer.seen)
    has = np.array([len(t) > 0 for t in targets])
    index = {c: i for i, c in enumerate(trainer.concepts)}
    y = torch.stack([F.normalize(trainer.concept_vectors[[index[c] for c in t]].mean(0), dim=0) if len(t)
                     else torch.zeros(trainer.concept_vectors.shape[1]) for t in targets])
    train, valid = np.flatnonzero(has & ~val), np.flatnonzero(has & val)
    mean, std = pooled[train].mean(0), pooled[train].std(0).clamp_min(1e-6)
    z = (pooled - mean) / std
    return z, y, train, valid, targets, mean, std


def solve_ridge(x: torch.Tensor, y: torch.Tensor, lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """W (out, in), b (out,) minimising ||x W^T + b - y||^2 + lam ||W||^2 (x centred inside)."""
    xm, ym = x.mean(0), y.mean(0)
    xc, yc = (x - xm).double(), (y - ym).double()
    w = torch.linalg.solve(xc.T @ xc + lam * torch.eye(x.shape[1], dtype=torch.float64), xc.T @ yc).float()
    return w.T.contiguous(), ym - xm @ w


def fit_ridge(trainer: ExplainerTrainer, lams=(1.0, 10.0, 100.0, 1000.0, 10000.0)):
    """Forward ridge head (standardisation folded in); lambda by seen top-1 on the validation masks."""
    z, y, train, valid, targets, mean, std = ridge_data(trainer)
    seen_vectors = trainer.concept_vectors[[trainer.concepts.index(c) for c in trainer.seen]]
    best = None
    for lam in lams:
        w, b = solve_ridge(z[train], y[train], lam)
        pred = F.normalize(z[valid] @ w.T + b, dim=1)
        top = (pred @ seen_vectors.T).argmax(1).tolist()
        acc = float(np.mean([trainer.seen[j] in targets[i] for i, j in zip(valid, top)]))
        print(f"   ridge lambda {lam:g}: validation seen top-1 {acc:.3f}", flush=True)
        if best is None or acc > best[0]:
            best = (acc, lam, w, b)
    acc, lam, w, b = best
    return LinearHead(w / std, b - (w / std) @ mean), f"lambda={lam:g}, val seen top-1 {acc:.3f}"


def fit_reverse_ridge(trainer: ExplainerTrainer, lams=(0.01, 0.1, 1.0, 10.0, 100.0)):
    """Label vectors -> standardised features (A: (C, dim)); lambda by seen top-1 on the validation masks."""
    z, y, train, valid, targets, mean, std = ridge_data(trainer)
    seen_vectors = trainer.concept_vectors[[trainer.concepts.index(c) for c in trainer.seen]]
    best = None
    for lam in lams:
        a, b = solve_ridge(y[train], z[train], lam)  # z ~ y a^T + b
        prototypes = F.normalize(seen_vectors @ a.T + b, dim=1)
        top = (F.normalize(z[valid], dim=1) @ prototypes.T).argmax(1).tolist()
        acc = float(np.mean([trainer.seen[j] in targets[i] for i, j in zip(valid, top)]))
        print(f"   reverse ridge lambda {lam:g}: validation seen top-1 {acc:.3f}", flush=True)
        if best is None or acc > best[0]:
            best = (acc, lam, a, b)
    acc, lam, a, b = best
    standardise = LinearHead(torch.diag(1 / std), -mean / std)  # pooled -> unit standardised features
    return standardise, (a, b), f"lambda={lam:g}, val seen top-1 {acc:.3f}"


def unit_probes(ref_store, seen, cache: Path, min_cells: int = 50, min_auc: float = 0.95):
    """Logistic probes of the seen concepts with at least ``min_cells`` cells covered > 0.5 (fitted once, cached);
    returns (PlantedHead, concepts, table) for those whose held-out cell AUC is >= ``min_auc``."""
    covered = (concept_cells(ref_store, seen) > ProbeSettings().coverage).sum((0, 2, 3))
    usable = [c for c, n in zip(seen, covered.tolist()) if n >= min_cells]
    digest = hashlib.sha1("\n".join(usable).encode()).hexdigest()[:10]
    path = cache / f"unit_probes_{ref_store.path.name}_{len(usable)}_{digest}.pt"
    if path.is_file():
        probes = Probes.load(path)
    else:
        probes = fit_probes(ref_store, usable, ProbeSettings(n_noise=0, seed=0))
        probes.save(path)
    keep = np.flatnonzero(probes.table["auc"].to_numpy() >= min_auc)
    table = probes.table.iloc[keep].reset_index(drop=True)
    return PlantedHead(probes.weight[keep], probes.bias[keep]), list(table["concept"]), table


def unit_rows(store, head: PlantedHead, concepts, p: int, block: int = 250):
    """Each probe of ``head`` read as a unit of ``store`` (its first C channels the probes' layer): the (image,
    concepts) rows of its top-p images by max response and their pooled features, (K * p, C_store), under the
    unit's own map (the "mass" pooling of FilterExplainer's soft-mask attention)."""
    n_real, cells = head.weight.shape[1], torch.from_numpy(store.valid_cells)

    def maps(rows):  # store features (B, C_store, h, w), unit maps (B, K, h, w)
        features = store.features(rows)
        return features, head(features[:, :n_real])[:, n_real:] * cells[rows][:, None]

    maxima = torch.full((store.shape[0], len(concepts)), -float("inf"))
    for start in range(0, store.shape[0], block):
        rows = np.arange(start, min(start + block, store.shape[0]))
        maxima[rows] = maps(rows)[1].flatten(2).amax(2)
    maxima[~torch.from_numpy(np.array(store.valid))] = -float("inf")
    top = maxima.topk(p, dim=0).indices.T.numpy()  # (K, p)
    pooled = [pool_features(features, own[:, k], "mass") for k, (features, own) in enumerate(map(maps, top))]
    units = pd.DataFrame(dict(image=top.ravel(), concepts=[(c,) for c in concepts for _ in range(p)]))
    return units, torch.cat(pooled)


class UnitTrainer(ExplainerTrainer):
    """ExplainerTrainer whose training rows are the masks plus unit-like rows (``only``: the unit rows alone)."""

    def __init__(self, *args, units: pd.DataFrame, unit_pooled: torch.Tensor, only: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        pooled = self.pooled()
        extra = units.assign(mask=len(self.masks) + np.arange(len(units)), object=-1)[list(self.masks.columns)]
        base = self.masks.assign(concepts=[()] * len(self.masks)) if only else self.masks
        self.masks = pd.concat([base, extra], ignore_index=True)
        self._pooled = torch.cat([pooled, unit_pooled.to(pooled.dtype)])


# ----------------------------------------------------------------------------- main


def main() -> None:
    args = parse()
    ideas = [i for i in args.ideas.split(",") if i]
    unknown = sorted({i.split(":")[0] for i in ideas} - set(RANKING + RETRAINED))
    if unknown:
        raise SystemExit(f"unknown ideas {unknown}; choose from {RANKING + RETRAINED}")
    clock = pb.Clock()
    out = Path(args.output_dir)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    started = time.time()
    ref = Reference.load(ReferenceSpec(n_images=args.n_images, store_root=args.store_root), show_progress=False)
    space = ref.space
    glove = load_word_space(pb.SPACES["glove"])
    clock("load reference", started)
    started = time.time()
    concepts, notes = pb.choose_concepts(ref.store, [space, glove], max(3, args.n_images // 100))
    probes = pb.cached_probes(ref.store, concepts, cache)
    planted = plant(ref.model, pb.LAYER, probes)
    store = ActivationStore.build(planted.model, planted.layer, ref.dataset, root=args.store_root,
                                  show_progress=False)
    channels = planted.channels
    clock("probes, plant, planted store", started)
    print(channels.to_string(), flush=True)
    n_real = ref.store.shape[1]

    labels = pb.cached_weak_labels(ref.model, ref.dataset, store, cache, "auto") if args.weak_labels else None
    others = [c for c in store.concepts if c not in concepts]
    config = TrainingConfig(seen=tuple(others), max_epochs=args.max_epochs, seed=0)
    tag = f"glove+minilm_held-out_{store.path.name}_{args.max_epochs}{'' if args.weak_labels else '_noweak'}"
    started = time.time()
    trainer = ExplainerTrainer(store, space, config, weak_labels=labels, show_progress=False)
    mapper = pb.cached_mapper(cache / f"mapper_{tag}.pt", store, space, trainer.fit)
    clock("baseline explainer", started)
    nouns = Vocabulary.concrete_nouns(space)
    settings = ExplainSettings(p=args.p, top_words=args.top_words, calibrated=False)
    features: dict = {}
    seen_vectors = torch.from_numpy(np.asarray(space.embed(mapper.seen).vectors, dtype=np.float32))

    def measure(idea, explainer, seconds_before, command_note=""):
        started = time.time()
        table = explainer.explain()
        ranks = planted_ranks(table, channels)
        vranks = vector_ranks(explainer, channels)
        firsts = table[(table["rank"] == 1) & (table["filter"] < n_real)]["word"]
        counts = firsts.value_counts()
        seconds = seconds_before + time.time() - started
        row = dict(idea=idea, distinct_top_words=int(firsts.nunique()), n_real=int(len(firsts)),
                   hub_word=counts.index[0] if len(counts) else None, hub_count=int(counts.iloc[0]) if len(counts) else 0,
                   seconds=round(seconds, 1), note=command_note)
        for r in ranks.itertuples():
            if isinstance(r.concept, str):
                row[f"rank_{r.concept}"] = r.rank
                row[f"vrank_{r.concept}"] = vranks.get(r.concept)
                row[f"words_{r.concept}"] = r.words
        row["top5"] = int(sum((row[f"rank_{c}"] <= 5) for c in concepts))
        noise = ranks[ranks["kind"] == "noise"]
        row["noise_named_by_planted"] = int(noise["top_is_planted"].sum())
        print(f"== {idea}: top5 {row['top5']}/6, ranks " +
              ", ".join(f"{c} {row[f'rank_{c}']}/{row[f'vrank_{c}']}" for c in concepts) +
              f"; distinct top words {row['distinct_top_words']}/{row['n_real']} (hub {row['hub_word']} "
              f"x{row['hub_count']}); {seconds:.0f} s", flush=True)
        for c in concepts:
            print(f"   {c}: {row[f'words_{c}']}", flush=True)
        rows.append(row)
        pd.DataFrame(rows).to_csv(out / "trials.csv", index=False)

    def explainer_for(m, **kwargs):
        s = kwargs.pop("settings", settings)
        return TrialExplainer(store, m, space, nouns, s, features=features, **kwargs)

    rows: list = []
    mappers: dict = {}
    glove_block = slice(0, GLOVE_DIM)
    minilm_block = slice(GLOVE_DIM, space.dim)
    for idea in ideas:
        started = time.time()
        if idea == "baseline":
            measure(idea, explainer_for(mapper), 0.0)
        elif idea == "calibrated":
            calibrator = GammaCalibration(store, mapper, space, settings, vocabulary=nouns,
                                          calibration=CalibrationSettings(gammas=pb.GAMMAS), weak_labels=labels)
            inner = pb.cached_mapper(cache / f"inner_{tag}.pt", store, space, calibrator.inner_mapper)
            record = pb.cached_calibration(cache / f"calibration_{tag}_attention_{args.p}_none.json",
                                           lambda: calibrator.fit(inner))
            measure(idea, explainer_for(mapper.calibrated(record), settings=dataclasses.replace(settings, calibrated=True)),
                    time.time() - started, f"filter_gamma={record.gammas[1]}")
        elif idea.startswith("seed"):
            seed = int(idea.split(":")[1]) if ":" in idea else 1
            seed_config = dataclasses.replace(config, seed=seed)
            m = pb.cached_mapper(cache / f"mapper_{tag}_seed{seed}.pt", store, space,
                                 ExplainerTrainer(store, space, seed_config, weak_labels=labels,
                                                  show_progress=False).fit)
            mappers[idea] = m
            measure(idea, explainer_for(m), time.time() - started, f"training seed {seed}")
        elif idea.startswith("fewer_seen"):
            share = float(idea.split(":")[1]) if ":" in idea else 0.5
            rng = np.random.default_rng(1)
            fewer = sorted(rng.choice(others, size=int(round(share * len(others))), replace=False).tolist())
            fewer_config = dataclasses.replace(config, seen=tuple(fewer))
            m = pb.cached_mapper(cache / f"mapper_{tag}_fewer{share}.pt", store, space,
                                 ExplainerTrainer(store, space, fewer_config, weak_labels=labels,
                                                  show_progress=False).fit)
            measure(idea, explainer_for(m), time.time() - started, f"{len(fewer)} of {len(others)} seen concepts")
        elif idea.startswith("mask_level"):
            which = idea.split(":", 1)[1] if ":" in idea else None
            m = mappers.get(which, mapper)
            explainer = explainer_for(m)
            for c, ranks in mask_ranks(trainer, m, explainer, concepts).items():
                print(f"   mask level ({which or 'baseline'}) {c}: {len(ranks)} masks, median rank "
                      f"{float(ranks.float().median()):.0f}, best {int(ranks.min())}, share <= 5: "
                      f"{float((ranks <= 5).float().mean()):.2f}", flush=True)
            continue
        elif idea == "no_seen":
            measure(idea, explainer_for(mapper, settings=dataclasses.replace(settings, calibrated=1.0)), 0.0,
                    "gamma=1.0")
        elif idea == "ridge":
            head, note = fit_ridge(trainer)
            measure(idea, explainer_for(dataclasses.replace(mapper, head=head)), time.time() - started, note)
        elif idea == "reverse_ridge":
            head, reverse, note = fit_reverse_ridge(trainer)
            measure(idea, explainer_for(dataclasses.replace(mapper, head=head), reverse=reverse),
                    time.time() - started, note)
        elif idea in ("csls10", "csls50"):
            k = int(idea[4:])
            measure(idea, explainer_for(mapper, settings=dataclasses.replace(settings, hubness="csls", hubness_k=k)),
                    0.0)
        elif idea == "isoftmax":
            measure(idea, explainer_for(mapper, scorer="isoftmax", beta=10.0), 0.0, "beta=10")
        elif idea == "center":
            measure(idea, explainer_for(mapper, scorer="center"), 0.0)
        elif idea == "glove_part":
            measure(idea, explainer_for(mapper, scorer="block", block=glove_block), 0.0)
        elif idea == "minilm_part":
            measure(idea, explainer_for(mapper, scorer="block", block=minilm_block), 0.0)
        elif idea == "conse":
            measure(idea, explainer_for(mapper, scorer="conse", conse_vectors=seen_vectors), 0.0, "T=10, tau=0.05")
        elif idea.startswith("hypernyms"):
            levels, weight = (int(idea.split(":")[1]), float(idea.split(":")[2])) if ":" in idea else (3, 0.5)
            base = ExplainerTrainer(store, space, config, show_progress=False)
            extra = hypernym_labels(base, others, levels)
            if labels is not None:
                extra = pd.concat([labels, extra], ignore_index=True)
            hyper = ExplainerTrainer(store, space, dataclasses.replace(config, weak_weight=weight), weak_labels=extra,
                                     show_progress=False)
            note = f"{levels} levels, weight {weight}: {len(hyper.weak_names)} hypernym labels kept, {len(hyper.weak)} rows"
            print(note, flush=True)
            suffix = "" if (levels, weight) == (3, 0.5) else f"{levels}_{weight}"
            m = pb.cached_mapper(cache / f"mapper_{tag}_hypernyms{suffix}.pt", store, space, hyper.fit)
            measure(idea, explainer_for(m), time.time() - started, note)
        elif idea.startswith("vocab_negatives"):
            parts = idea.split(":")
            n_neg = int(parts[1]) if len(parts) > 1 else 1000
            train_seed = int(parts[2]) if len(parts) > 2 else 0
            rng = np.random.default_rng(0)
            negatives = sorted(rng.choice(nouns.words, size=min(n_neg, len(nouns.words)), replace=False).tolist())
            held = sorted(set(negatives) & set(concepts))
            trainer_n = NegativesTrainer(store, space, dataclasses.replace(config, seed=train_seed),
                                         weak_labels=labels, negatives=negatives, show_progress=False)
            name = f"mapper_{tag}_negatives{n_neg}{'' if train_seed == 0 else f'_seed{train_seed}'}.pt"
            m = pb.cached_mapper(cache / name, store, space, trainer_n.fit)
            mappers[idea] = m
            measure(idea, explainer_for(m), time.time() - started,
                    f"{len(trainer_n.weak_names)} random nouns as negatives (planted words drawn: {held or 'none'})")
        elif idea.startswith("unit_like"):
            parts = idea.split(":")
            mode = parts[1] if len(parts) > 1 else "mix"
            train_seed = int(parts[2]) if len(parts) > 2 else 0
            if mode not in ("mix", "only"):
                raise SystemExit(f"unit_like mode must be mix or only, not {mode!r}")
            head, unit_concepts, unit_table = unit_probes(ref.store, others, cache)
            units, unit_pooled = unit_rows(store, head, unit_concepts, args.p)
            unit_trainer = UnitTrainer(store, space, dataclasses.replace(config, seed=train_seed), weak_labels=labels,
                                       units=units, unit_pooled=unit_pooled, only=mode == "only",
                                       show_progress=False)
            m = pb.cached_mapper(cache / f"mapper_{tag}_units_{mode}_{len(unit_concepts)}_seed{train_seed}.pt", store,
                                 space, unit_trainer.fit)
            mappers[idea] = m
            note = (f"{len(unit_concepts)} of {len(others)} seen concepts as units (probe AUC median "
                    f"{unit_table['auc'].median():.3f}), {len(units)} unit rows, mode {mode}, seed {train_seed}, "
                    f"best epoch {int(m.history['val_loss'].idxmin())}")
            print(note, flush=True)
            measure(idea, explainer_for(m), time.time() - started, note)
        clock(idea, started)

    table = pd.DataFrame(rows)
    table.to_csv(out / "trials.csv", index=False)
    cols = ["idea"] + [f"rank_{c}" for c in concepts] + ["top5", "distinct_top_words", "hub_word", "hub_count",
                                                          "seconds"]
    lines = [f"# Zero-shot trials: {args.n_images} scenes, p={args.p}, prior off, weak labels "
             f"{'on' if args.weak_labels else 'off'}", "",
             "rank: planted_ranks (vote-ranked words, NaN past top_words); (v): rank by the filter's mean "
             "explanation vector among all candidates.", "",
             "| idea | " + " | ".join(concepts) + " | <=5 | distinct top words (320) | hub word | s |",
             "|" + "---|" * (len(concepts) + 5)]
    for r in table.itertuples(index=False):
        d = r._asdict()
        cells = [d["idea"]] + [f"{pb.rank_text(d[f'rank_{c}'], args.top_words)} ({d[f'vrank_{c}']})" for c in concepts]
        cells += [str(d["top5"]), str(d["distinct_top_words"]), f"{d['hub_word']} x{d['hub_count']}",
                  f"{d['seconds']:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "Concepts: " + "; ".join(notes), "", "## Timings (s)", ""]
    lines += [f"- {name}: {seconds:.0f}" for name, seconds in clock.steps.items()]
    (out / "trials.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    del cols


if __name__ == "__main__":
    main()
