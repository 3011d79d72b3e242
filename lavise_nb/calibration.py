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

import dataclasses
from dataclasses import dataclass, field, fields

import numpy as np
import pandas as pd
import torch

from .config import CalibrationSettings, ExplainSettings
from .mapper import EVAL_ROWS, ExplainerTrainer, Mapper, mask_features, mask_table, plain

__all__ = ["GammaCalibration", "Calibration", "harmonic_mean", "vocabulary_name", "recall_at"]


def harmonic_mean(seen, unseen):
    """H = 2 s u / (s + u), 0 where both are 0."""
    seen, unseen = np.asarray(seen, dtype=float), np.asarray(unseen, dtype=float)
    total = seen + unseen
    return np.where(total > 0, 2 * seen * unseen / np.where(total > 0, total, 1), 0.0)


@dataclass(frozen=True)
class Calibration:
    """What a calibration chose, and what it holds for; attach with :meth:`Mapper.calibrated`.

    Attributes
    ----------
    gamma : float
        Offset subtracted from seen-concept scores of each image's words (or masks).
    filter_gamma : float or None
        Offset for a filter's vote-ranked words (None: use ``gamma``).
    table : pandas.DataFrame
        The curves it was chosen from (:meth:`GammaCalibration.table`).
    level : str
    k : int
    layer : str or None
    settings : dict or None
        :meth:`ExplainSettings.scoring` of the explanations it was tuned under (None: unknown,
        a checkpoint from before this record).
    prior : dict or None
        ``ClassPrior.settings`` of the class prior it was tuned with (None: none).
    vocabulary : str or None
        The candidate words it was tuned for (``"concepts"`` or a vocabulary's name).
    """

    gamma: float
    filter_gamma: float | None
    table: pd.DataFrame = field(default_factory=pd.DataFrame, compare=False)
    level: str = "filter"
    k: int = 20
    layer: str | None = None
    settings: dict | None = None
    prior: dict | None = None
    vocabulary: str | None = None

    @property
    def gammas(self) -> tuple[float, float]:
        """(image-word gamma, filter-word gamma)."""
        return self.gamma, self.gamma if self.filter_gamma is None else self.filter_gamma

    def mismatch(self, settings: ExplainSettings, prior, vocabulary: str | None) -> list[str]:
        """How an explainer's settings differ from the ones this record was tuned under, in words."""
        problems = []
        if self.settings is not None:
            # records older than the ranking option were tuned with the default ranking; other keys a record
            # lacks were not in effect when it was tuned, and the keys that differ already say so
            tuned = {"ranking": ExplainSettings().ranking, **self.settings}
            changed = {k: (v, getattr(settings, k)) for k, v in tuned.items() if getattr(settings, k) != v}
            problems += [f"{k}={new!r} (tuned with {old!r})" for k, (old, new) in changed.items()]
        used = None if prior is None else prior.settings
        if self.level == "filter" and used != self.prior:
            problems.append(f"class prior {used or 'none'} (tuned with {self.prior or 'none'})")
        if self.vocabulary is not None and vocabulary is not None and vocabulary != self.vocabulary:
            problems.append(f"vocabulary {vocabulary!r} (tuned for {self.vocabulary!r})")
        return problems

    def to_dict(self) -> dict:
        """Plain values, as saved in a mapper checkpoint."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "table"}
        out["table"] = self.table.to_dict(orient="list")
        return plain(out)

    @classmethod
    def from_dict(cls, values: dict) -> "Calibration":
        """The inverse of :meth:`to_dict`."""
        values = dict(values)
        return cls(table=pd.DataFrame(values.pop("table", {})), **values)

    @classmethod
    def from_legacy(cls, payload: dict, layer: str) -> "Calibration | None":
        """The record of a checkpoint that stored ``gamma``, ``filter_gamma``, ``gamma_table`` and ``prior`` loose."""
        table = pd.DataFrame(payload.get("gamma_table") or {})
        if not len(table) and not payload.get("gamma"):
            return None
        return cls(float(payload.get("gamma", 0.0)), payload.get("filter_gamma"), table,
                   str(table["level"].iloc[0]) if "level" in table and len(table) else "filter",
                   int(table["k"].iloc[0]) if "k" in table and len(table) else 20, layer, None, payload.get("prior"))


def vocabulary_name(vocabulary) -> str:
    """A short name for candidate words: ``"concepts"``, ``"default"``, a vocabulary's name or ``"custom"``."""
    if vocabulary is None:
        return "default"
    if isinstance(vocabulary, str):
        return vocabulary
    return getattr(vocabulary, "name", None) or "custom"


class GammaCalibration:
    """Choose the calibrated-stacking gamma of a trained mapper on an inner split.

    Parameters
    ----------
    store : ActivationStore
        The reference store the mapper was trained on.
    mapper : Mapper
        The trained mapper; its ``seen`` concepts are split again. It is not changed.
    space : WordSpace
    settings : ExplainSettings, optional
        The explanation settings the gamma is tuned under (filter level); pass the
        ones the explainer will use. The record carries them, and an explainer with
        other settings warns.
    calibration : CalibrationSettings, optional
        Level, candidate gammas, inner split, k and seed.
    vocabulary : "concepts" or Vocabulary or list of str
        Candidate words at the filter level: tune gamma with the candidates you
        will explain with (an open vocabulary needs its own gamma).
    weak_labels : pandas.DataFrame, optional
        The weak labels the mapper was trained with, so the inner explainer is
        trained the same way; they never name an annotated concept, so they cannot
        leak the pseudo-unseen ones.
    prior : ClassPrior, optional
        The class prior the explanations will use (filter level only).
    show_progress : bool

    Examples
    --------
    >>> record = GammaCalibration(store, mapper, space, settings).fit()   # doctest: +SKIP
    >>> mapper = mapper.calibrated(record)                                # doctest: +SKIP
    """

    def __init__(self, store, mapper: Mapper, space, settings: ExplainSettings | None = None, *,
                 calibration: CalibrationSettings | None = None, vocabulary="concepts", weak_labels=None,
                 prior=None, show_progress: bool = False):
        self.calibration = CalibrationSettings() if calibration is None else calibration
        if prior is not None and self.calibration.level == "mask":
            raise ValueError("a class prior scores (filter, image) pairs, not masks: use level='filter' with prior=")
        self.store, self.space, self.mapper = store, space, mapper
        self.settings = ExplainSettings() if settings is None else settings
        self.gammas = np.asarray(self.calibration.gammas, dtype=float)
        self.vocabulary, self.weak_labels, self.prior = vocabulary, weak_labels, prior
        self.show_progress = show_progress

    @property
    def k(self) -> int:
        return self.calibration.k

    def split(self) -> tuple[list, list]:
        """Pseudo-seen and pseudo-unseen concepts, drawn from the seen ones only."""
        seen = sorted(self.mapper.seen)
        rng = np.random.default_rng(self.calibration.seed + 7)
        n_inner = max(1, min(len(seen) - 1, round(self.calibration.inner_fraction * len(seen))))
        inner = sorted(rng.choice(seen, size=n_inner, replace=False).tolist())
        return inner, sorted(set(seen) - set(inner))

    def inner_mapper(self) -> Mapper:
        """Train the inner explainer on the pseudo-seen concepts (same settings as the mapper).

        Pass it to :meth:`table` or :meth:`fit` to calibrate several methods with one training.
        """
        inner, _ = self.split()
        config = dataclasses.replace(self.mapper.config, seen=tuple(inner),
                                     max_epochs=self.calibration.inner_epochs or self.mapper.config.max_epochs)
        trainer = ExplainerTrainer(self.store, self.space, config, restrict_to=self.mapper.seen,
                                   weak_labels=self.weak_labels, metrics=False, show_progress=self.show_progress)
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
        if self.calibration.level == "mask":
            curves = {"mask": self._mask_level(mapper, inner, held)}
        else:
            curves = self._filter_level(mapper, inner, held)
        return pd.concat([pd.DataFrame({"gamma": self.gammas, "words": words, "seen": seen, "unseen": unseen,
                                        "H": harmonic_mean(seen, unseen), "level": self.calibration.level,
                                        "k": self.k})
                          for words, (seen, unseen) in curves.items()], ignore_index=True)

    def fit(self, inner_mapper: Mapper | None = None) -> Calibration:
        """The best gamma of each curve (by H), as a :class:`Calibration` record; the mapper is not changed."""
        table = self.table(inner_mapper)
        best = table.loc[table.groupby("words")["H"].idxmax()].set_index("words")["gamma"]
        filter_level = self.calibration.level == "filter"
        return Calibration(
            gamma=float(best.get("image", best.get("mask"))),
            filter_gamma=float(best["filter"]) if "filter" in best else None, table=table,
            level=self.calibration.level, k=self.k, layer=self.store.layer,
            settings=self.settings.scoring() if filter_level else None,
            prior=None if self.prior is None else self.prior.settings,
            vocabulary=vocabulary_name(self.vocabulary) if filter_level else None)

    def _mask_level(self, mapper: Mapper, inner: list, held: list):
        table = mask_table(self.store)
        candidates = sorted(self.mapper.seen)
        kept = np.flatnonzero(table["concepts"].map(lambda c: any(x in candidates for x in c)).to_numpy())
        pairs = table.iloc[kept].reset_index(drop=True)
        pooled = mask_features(self.store, table, mapper.config.pooling)
        vectors = torch.cat([torch.zeros(0, mapper.head.net[-1].out_features)] + [
            mapper.embed(pooled[torch.from_numpy(kept[start:start + EVAL_ROWS])])
            for start in range(0, len(kept), EVAL_ROWS)])
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
        settings = dataclasses.replace(self.settings, calibrated=False)
        explainer = FilterExplainer(self.store, mapper, self.space, self.vocabulary, settings, prior=self.prior)
        pairs, vectors, local = explainer.pair_vectors(None)
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
        voters = min(self.settings.image_k, len(explainer.words))  # the words each image votes among, as in explain
        n_filters = self.store.shape[1]
        out = {"image": ([], []), "filter": ([], [])}
        stacked = _StackedTop(scores, is_inner, max(k, voters))
        for gamma in self.gammas:
            top = stacked.at(gamma)
            votes = explainer.votes(pairs, top.indices[:, :voters], top.values[:, :voters])
            votes["rank"] = votes.groupby("filter").cumcount()
            votes = votes[votes["rank"] < k]
            per_filter = np.full((n_filters, k), -1, dtype=np.int64)
            per_filter[votes["filter"].to_numpy(), votes["rank"].to_numpy()] = votes["word"].to_numpy()
            per_image = top.indices[:, :k].numpy()
            for subset, part in enumerate(subsets):  # 0: pseudo-seen, 1: pseudo-unseen
                rows, targets = part["row"].to_numpy(), part["word"].to_numpy()
                out["image"][subset].append(recall_at(per_image, rows, targets, rows))
                out["filter"][subset].append(recall_at(per_filter, part["filter"].to_numpy(), targets, rows))
        return {name: (np.nan_to_num(np.array(seen)), np.nan_to_num(np.array(unseen)))
                for name, (seen, unseen) in out.items()}


class _StackedTop:
    """Top ``width`` words of ``scores - gamma * offsets`` for many gammas, exactly, at the cost of two top-k.

    Subtracting a constant from the offset columns keeps the order within each group of columns,
    so every gamma's top ``width`` lies among each group's own top ``width``, found once.

    Parameters
    ----------
    scores : torch.Tensor
        (n, V) uncalibrated word scores.
    offsets : torch.Tensor
        (V,) 1 for the columns gamma is subtracted from, 0 for the others.
    width : int
    """

    def __init__(self, scores: torch.Tensor, offsets: torch.Tensor, width: int):
        self.width = min(width, scores.shape[1])
        groups = [torch.nonzero(offsets > 0).flatten(), torch.nonzero(offsets <= 0).flatten()]
        self.index = torch.cat([cols[scores[:, cols].topk(min(self.width, len(cols)), dim=1).indices]
                                for cols in groups if len(cols)], dim=1)
        self.scores = scores.gather(1, self.index)
        self.offsets = offsets[self.index]

    def at(self, gamma: float):
        """``(scores - gamma * offsets).topk(width, dim=1)``: values and column indices, (n, width) each."""
        top = (self.scores - gamma * self.offsets).topk(self.width, dim=1)
        return torch.return_types.topk((top.values, self.index.gather(1, top.indices)))


def recall_at(top: np.ndarray, rows: np.ndarray, words: np.ndarray, groups: np.ndarray) -> float:
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
