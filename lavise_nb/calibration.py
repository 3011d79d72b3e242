"""Calibrated stacking for generalized zero-shot explanations.

An explainer trained on seen concepts ranks seen words first even for unseen
objects. Calibrated stacking (Chao et al., 2016) subtracts a constant gamma from
seen-concept scores. Gamma is chosen WITHOUT the real unseen concepts: the seen
concepts are split again into pseudo-seen and pseudo-unseen, an inner explainer is
trained on the pseudo-seen part, and the gamma that maximises the harmonic mean H of
pseudo-seen and pseudo-unseen recall (or accuracy) is kept. Only the seen concepts'
names and masks are read, so the real unseen concepts cannot leak into gamma.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .mapper import ExplainerTrainer, Mapper

__all__ = ["GammaCalibration", "harmonic_mean"]


def harmonic_mean(seen, unseen):
    """H = 2 s u / (s + u), 0 where both are 0."""
    seen, unseen = np.asarray(seen, dtype=float), np.asarray(unseen, dtype=float)
    total = seen + unseen
    return np.where(total > 0, 2 * seen * unseen / np.where(total > 0, total, 1), 0.0)


class GammaCalibration:
    """Choose the calibrated-stacking gamma of a trained mapper on an inner split.

    Parameters
    ----------
    store : ActivationStore
        The reference store the mapper was trained on.
    space : WordSpace
    mapper : Mapper
        The trained mapper; its ``seen`` concepts are split again.
    level : {"filter", "mask"}
        ``"filter"``: tune two offsets on filter explanations (object ground
        truth): ``gamma`` maximises H of recall@k of each top image's own words,
        ``filter_gamma`` H of recall@k of the filter's vote-ranked words (votes
        pile up on seen words, so it is usually smaller). ``"mask"``: maximise H of
        top-k accuracy of masks. Tune at the level you report: a mask-level gamma
        overshoots for filters.
    gammas : sequence of float, optional
        Candidates (default 0 to 0.5 in steps of 0.01).
    inner_fraction : float
        Share of the seen concepts kept as pseudo-seen.
    k : int
        Recall@k (filter level) or top-k accuracy (mask level) used for H.
    method, attention, p, s, voting, temperature, hubness : explanation settings for the filter level.
    vocabulary : "concepts" or Vocabulary or list of str
        Candidate words at the filter level: tune gamma with the candidates you
        will explain with (an open vocabulary needs its own gamma).
    weak_labels : pandas.DataFrame, optional
        The weak labels the mapper was trained with (``ExplainerTrainer(weak_labels=...)``),
        so the inner explainer is trained the same way; they never name an
        annotated concept, so they cannot leak the pseudo-unseen ones.
    weak_weight : float
    prior : ClassPrior, optional
        The class prior the explanations will use (filter level only); the gamma is
        tuned with it and ``mapper.prior`` records its settings.
    seed : int

    Examples
    --------
    >>> mapper = GammaCalibration(store, space, mapper).fit()    # doctest: +SKIP
    >>> mapper.gamma, mapper.gamma_table.head()                   # doctest: +SKIP
    """

    def __init__(self, store, space, mapper: Mapper, *, level: str = "filter", gammas=None,
                 inner_fraction: float = 0.7, k: int = 20, method: str = "attention", attention: str = "soft_mask",
                 p: int = 25, s: int = 5, voting: str = "softmax", temperature: float = 0.1, vocabulary="concepts",
                 hubness: str | None = None, weak_labels=None, weak_weight: float = 0.5, prior=None, seed: int = 0,
                 show_progress: bool = False):
        if level not in ("filter", "mask"):
            raise ValueError(f"level must be 'filter' or 'mask', not {level!r}")
        if prior is not None and level == "mask":
            raise ValueError("a class prior scores (filter, image) pairs, not masks: use level='filter' with prior=")
        self.store, self.space, self.mapper = store, space, mapper
        self.level, self.k, self.seed = level, k, seed
        self.gammas = np.round(np.arange(0, 0.501, 0.01), 4) if gammas is None else np.asarray(gammas, float)
        self.inner_fraction = inner_fraction
        self.method, self.attention, self.p, self.s = method, attention, p, s
        self.voting, self.temperature = voting, temperature
        self.vocabulary, self.hubness = vocabulary, hubness
        self.weak_labels, self.weak_weight = weak_labels, weak_weight
        self.prior = prior
        self.show_progress = show_progress

    def split(self) -> tuple[list, list]:
        """Pseudo-seen and pseudo-unseen concepts, drawn from the seen ones only."""
        seen = sorted(self.mapper.seen)
        rng = np.random.default_rng(self.seed + 7)
        n_inner = max(1, min(len(seen) - 1, round(self.inner_fraction * len(seen))))
        inner = sorted(rng.choice(seen, size=n_inner, replace=False).tolist())
        return inner, sorted(set(seen) - set(inner))

    def inner_mapper(self) -> Mapper:
        """Train the inner explainer on the pseudo-seen concepts (same settings as the mapper).

        Pass it to :meth:`table` or :meth:`fit` to calibrate several methods with one training.
        """
        inner, _ = self.split()
        settings = {k: v for k, v in self.mapper.config.items() if k not in ("seen", "seen_fraction")}
        trainer = ExplainerTrainer(self.store, self.space, seen=inner, restrict_to=self.mapper.seen,
                                   weak_labels=self.weak_labels, weak_weight=self.weak_weight,
                                   show_progress=self.show_progress, **settings)
        return trainer.fit()

    def table(self, inner_mapper: Mapper | None = None) -> pd.DataFrame:
        """Seen, unseen and H for every candidate gamma on the inner split.

        Parameters
        ----------
        inner_mapper : Mapper, optional
            A ready :meth:`inner_mapper` (trained here when omitted).

        Returns
        -------
        pandas.DataFrame
            Columns ``gamma, words, seen, unseen, H, level, k``; ``words`` is
            "mask" (mask level), or "image" and "filter" (filter level: one curve
            for per-image words, one for the filter's vote-ranked words).
        """
        inner, held = self.split()
        mapper = self.inner_mapper() if inner_mapper is None else inner_mapper
        if sorted(mapper.seen) != inner:
            raise ValueError("inner_mapper was trained on other concepts than this calibration's pseudo-seen split")
        if self.level == "mask":
            curves = {"mask": self._mask_level(mapper, inner, held)}
        else:
            curves = self._filter_level(mapper, inner, held)
        return pd.concat([pd.DataFrame({"gamma": self.gammas, "words": words, "seen": seen, "unseen": unseen,
                                        "H": harmonic_mean(seen, unseen), "level": self.level, "k": self.k})
                          for words, (seen, unseen) in curves.items()], ignore_index=True)

    def fit(self, inner_mapper: Mapper | None = None) -> Mapper:
        """Set ``mapper.gamma``, ``mapper.filter_gamma`` (best H of each curve) and ``mapper.gamma_table``."""
        table = self.table(inner_mapper)
        best = table.loc[table.groupby("words")["H"].idxmax()].set_index("words")["gamma"]
        self.mapper.gamma = float(best.get("image", best.get("mask")))
        self.mapper.filter_gamma = float(best["filter"]) if "filter" in best else None
        self.mapper.gamma_table = table
        self.mapper.prior = None if self.prior is None else self.prior.settings
        return self.mapper

    def _mask_level(self, mapper: Mapper, inner: list, held: list):
        from .mapper import pair_table, pooled_pairs
        pairs = pair_table(self.store)
        candidates = sorted(self.mapper.seen)
        pairs = pairs[pairs["concepts"].map(lambda c: any(x in candidates for x in c))].reset_index(drop=True)
        vectors = mapper.embed(pooled_pairs(self.store, pairs, mapper.config.get("pooling", "mass")))
        label_vectors = torch.from_numpy(np.asarray(self.space.embed(candidates).vectors, dtype=np.float32))
        scores = vectors @ label_vectors.T
        is_inner = torch.tensor([c in set(inner) for c in candidates], dtype=torch.float32)
        targets = [set(c) & set(candidates) for c in pairs["concepts"]]
        inner_rows = [i for i, t in enumerate(targets) if t & set(inner)]
        held_rows = [i for i, t in enumerate(targets) if t & set(held)]
        seen_out, unseen_out = [], []
        for gamma in self.gammas:
            top = (scores - gamma * is_inner).topk(min(self.k, len(candidates)), dim=1).indices.tolist()
            hit = [bool({candidates[j] for j in row} & targets[i]) for i, row in enumerate(top)]
            seen_out.append(np.mean([hit[i] for i in inner_rows]) if inner_rows else 0.0)
            unseen_out.append(np.mean([hit[i] for i in held_rows]) if held_rows else 0.0)
        return np.array(seen_out), np.array(unseen_out)

    def _filter_level(self, mapper: Mapper, inner: list, held: list):
        from .evaluate import RecallEvaluator
        from .explain import FilterExplainer
        candidates = sorted(self.mapper.seen)
        explainer = FilterExplainer(self.store, mapper, self.space, vocabulary=self.vocabulary, method=self.method,
                                    attention=self.attention, p=self.p, s=self.s, voting=self.voting,
                                    temperature=self.temperature, calibrated=False,
                                    hubness=self.hubness, prior=self.prior)
        pairs, vectors, local = explainer._pair_vectors(None)
        scores = explainer.word_scores(vectors, local)
        is_inner = explainer.seen_offsets(1.0)  # the inner mapper's seen concepts are the pseudo-seen ones
        truth = RecallEvaluator(self.store, inner, held, stuff=self.store.stuff).truth(pairs)
        truth = truth[~truth["concept"].isin(self.store.stuff) & truth["concept"].isin(candidates)]
        truth = truth[["filter", "image", "concept"]].drop_duplicates()
        row_of = pd.Series(np.arange(len(pairs)), index=pd.MultiIndex.from_frame(pairs[["filter", "image"]]))
        truth = truth.assign(row=row_of.reindex(pd.MultiIndex.from_frame(truth[["filter", "image"]])).to_numpy(),
                             word=truth["concept"].map({w: i for i, w in enumerate(explainer.words)}).to_numpy())
        subsets = [truth[truth["concept"].isin(inner)], truth[truth["concept"].isin(held)]]
        k = min(self.k, len(explainer.words))
        voters = min(explainer.image_k, len(explainer.words))  # the words each image votes among, as in explain
        n_filters = self.store.shape[1]
        out = {"image": ([], []), "filter": ([], [])}
        for gamma in self.gammas:
            top = (scores - gamma * is_inner).topk(max(k, voters), dim=1)
            votes = explainer.votes(pairs, top.indices[:, :voters], top.values[:, :voters])
            votes["rank"] = votes.groupby("filter").cumcount()
            votes = votes[votes["rank"] < k]
            per_filter = np.full((n_filters, k), -1, dtype=np.int64)
            per_filter[votes["filter"].to_numpy(), votes["rank"].to_numpy()] = votes["word"].to_numpy()
            per_image = top.indices[:, :k].numpy()
            for subset, part in enumerate(subsets):  # 0: pseudo-seen, 1: pseudo-unseen
                rows, targets = part["row"].to_numpy(), part["word"].to_numpy()
                out["image"][subset].append(_recall_at(per_image, rows, targets, rows))
                out["filter"][subset].append(_recall_at(per_filter, part["filter"].to_numpy(), targets, rows))
        return {name: (np.nan_to_num(np.array(seen)), np.nan_to_num(np.array(unseen)))
                for name, (seen, unseen) in out.items()}


def _recall_at(top: np.ndarray, rows: np.ndarray, words: np.ndarray, groups: np.ndarray) -> float:
    """Recall of ranked word lists, vectorised (equals :func:`lavise_nb.evaluate.recall`).

    ``top`` (R, k) word indices per list; each truth row t has its list ``rows[t]``,
    its concept ``words[t]`` and its (filter, image) pair ``groups[t]``. Returns the
    mean over pairs of the share of their concepts found in their list (nan: no truth).
    """
    if len(rows) == 0:
        return float("nan")
    hit = (top[rows] == words[:, None]).any(1)
    counts = np.bincount(groups)
    found = np.bincount(groups, weights=hit)
    return float((found[counts > 0] / counts[counts > 0]).mean())
