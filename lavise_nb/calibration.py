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
        ``"filter"``: maximise H of per-image recall@k of filter explanations
        (object ground truth); ``"mask"``: maximise H of top-k accuracy of masks.
        Tune at the level you report: a mask-level gamma overshoots for filters.
    gammas : sequence of float, optional
        Candidates (default 0 to 0.5 in steps of 0.01).
    inner_fraction : float
        Share of the seen concepts kept as pseudo-seen.
    k : int
        Recall@k (filter level) or top-k accuracy (mask level) used for H.
    method, attention, p, s, hubness : explanation settings for the filter level.
    vocabulary : "concepts" or Vocabulary or list of str
        Candidate words at the filter level: tune gamma with the candidates you
        will explain with (an open vocabulary needs its own gamma).
    seed : int

    Examples
    --------
    >>> mapper = GammaCalibration(store, space, mapper).fit()    # doctest: +SKIP
    >>> mapper.gamma, mapper.gamma_table.head()                   # doctest: +SKIP
    """

    def __init__(self, store, space, mapper: Mapper, *, level: str = "filter", gammas=None,
                 inner_fraction: float = 0.7, k: int = 20, method: str = "attention", attention: str = "soft_mask",
                 p: int = 25, s: int = 5, vocabulary="concepts", hubness: str | None = None, seed: int = 0,
                 show_progress: bool = False):
        if level not in ("filter", "mask"):
            raise ValueError(f"level must be 'filter' or 'mask', not {level!r}")
        self.store, self.space, self.mapper = store, space, mapper
        self.level, self.k, self.seed = level, k, seed
        self.gammas = np.round(np.arange(0, 0.501, 0.01), 4) if gammas is None else np.asarray(gammas, float)
        self.inner_fraction = inner_fraction
        self.method, self.attention, self.p, self.s = method, attention, p, s
        self.vocabulary, self.hubness = vocabulary, hubness
        self.show_progress = show_progress

    def split(self) -> tuple[list, list]:
        """Pseudo-seen and pseudo-unseen concepts, drawn from the seen ones only."""
        seen = sorted(self.mapper.seen)
        rng = np.random.default_rng(self.seed + 7)
        n_inner = max(1, min(len(seen) - 1, round(self.inner_fraction * len(seen))))
        inner = sorted(rng.choice(seen, size=n_inner, replace=False).tolist())
        return inner, sorted(set(seen) - set(inner))

    def _inner_mapper(self, inner: list) -> Mapper:
        settings = {k: v for k, v in self.mapper.config.items() if k not in ("seen", "seen_fraction")}
        trainer = ExplainerTrainer(self.store, self.space, seen=inner, restrict_to=self.mapper.seen,
                                   show_progress=self.show_progress, **settings)
        return trainer.fit()

    def table(self) -> pd.DataFrame:
        """Seen, unseen and H for every candidate gamma on the inner split.

        Returns
        -------
        pandas.DataFrame
            Columns ``gamma, seen, unseen, H, level, k``.
        """
        inner, held = self.split()
        mapper = self._inner_mapper(inner)
        if self.level == "mask":
            seen_scores, unseen_scores = self._mask_level(mapper, inner, held)
        else:
            seen_scores, unseen_scores = self._filter_level(mapper, inner, held)
        return pd.DataFrame({"gamma": self.gammas, "seen": seen_scores, "unseen": unseen_scores,
                             "H": harmonic_mean(seen_scores, unseen_scores), "level": self.level, "k": self.k})

    def fit(self) -> Mapper:
        """Set and return ``mapper.gamma`` (the best H) and ``mapper.gamma_table``."""
        table = self.table()
        best = table.loc[table["H"].idxmax()]
        self.mapper.gamma = float(best["gamma"])
        self.mapper.gamma_table = table
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
        from .evaluate import RecallEvaluator, recall
        from .explain import FilterExplainer
        candidates = sorted(self.mapper.seen)
        explainer = FilterExplainer(self.store, mapper, self.space, vocabulary=self.vocabulary, method=self.method,
                                    attention=self.attention, p=self.p, s=self.s, calibrated=False,
                                    hubness=self.hubness)
        pairs = explainer.pairs()
        vectors = mapper.embed(explainer.pair_features(pairs))
        scores = explainer.word_scores(vectors, explainer._word_hubness(vectors))
        words = np.asarray(explainer.words, dtype=object)
        is_inner = torch.tensor([w in set(inner) for w in explainer.words], dtype=torch.float32)
        truth = RecallEvaluator(self.store, inner, held, stuff=self.store.stuff).truth(pairs)
        truth = truth[~truth["concept"].isin(self.store.stuff) & truth["concept"].isin(candidates)]
        truth_inner = truth[truth["concept"].isin(inner)]
        truth_held = truth[truth["concept"].isin(held)]
        k = min(self.k, len(words))
        seen_out, unseen_out = [], []
        for gamma in self.gammas:
            top = (scores - gamma * is_inner).topk(k, dim=1).indices.numpy()
            table = pd.DataFrame({
                "filter": np.repeat(pairs["filter"].to_numpy(), k), "image": np.repeat(pairs["image"].to_numpy(), k),
                "rank": np.tile(np.arange(1, k + 1), len(pairs)), "word": words[top.reshape(-1)],
            })
            seen_out.append(recall(truth_inner, table, (self.k,), ("filter", "image"))["recall"].iloc[0])
            unseen_out.append(recall(truth_held, table, (self.k,), ("filter", "image"))["recall"].iloc[0])
        return np.nan_to_num(np.array(seen_out)), np.nan_to_num(np.array(unseen_out))
