"""The paper's objective metric made precise, with its baselines.

Ground truth for filter u and top image i: the concepts whose mask has IoU above a
threshold (0.04) with u's upsampled, thresholded activation region in i. Recall@k:
|G_ui ∩ W[:k]| / |G_ui|, averaged over (filter, image) pairs with a non-empty G.
``words_from="filter"`` uses the filter's aggregated words W_u; ``words_from="image"``
uses that image's own ranked words W_ui.
"""
from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import torch

from ._utils.progress import progress
from .config import ExplainSettings
from .explain import FilterExplainer
from .regions import filter_regions, masks_at

__all__ = ["ground_truth", "recall", "RecallEvaluator", "frequency_baseline", "oracle_words", "network_dissection",
           "invert_labels", "MethodComparison", "DEFAULT_METHODS", "BASELINES", "RECALL_COLUMNS"]

RECALL_COLUMNS = ["model", "layer", "method", "words_from", "ground", "subset", "k", "recall", "pairs"]


def ground_truth(store, pairs: pd.DataFrame, iou_threshold: float = 0.04, chunk: int = 256,
                 show_progress: bool = False) -> pd.DataFrame:
    """IoU of every (filter, image) pair's region with every mask of that image.

    Parameters
    ----------
    store : ActivationStore
    pairs : pandas.DataFrame
        Columns ``filter`` and ``image``.
    iou_threshold : float
        Concepts with IoU above it are ground truth.

    Returns
    -------
    pandas.DataFrame
        Columns ``filter, image, concept, iou`` for IoU > ``iou_threshold``.
    """
    objects = store.objects
    by_image = objects.groupby("image")["object"].apply(np.asarray).to_dict()
    size = store.image_size
    out = []
    for start in progress(range(0, len(pairs), chunk), enabled=show_progress, desc="ground truth"):
        part = pairs.iloc[start:start + chunk]
        images, filters = part["image"].to_numpy(), part["filter"].to_numpy()
        regions = filter_regions(store, images, filters, size).flatten(1)
        pair_rows, object_rows = [], []
        for row, image in enumerate(images):
            for obj in by_image.get(int(image), ()):
                pair_rows.append(row)
                object_rows.append(obj)
        if not object_rows:
            continue
        unique, inverse = np.unique(object_rows, return_inverse=True)
        pair_rows = np.asarray(pair_rows)
        packed_regions = np.packbits(regions.numpy(), axis=1)
        packed_masks = np.packbits(store.object_masks(unique).flatten(1).numpy(), axis=1)
        inter = np.concatenate([_bit_count(packed_regions[pair_rows[s:s + 2048]] & packed_masks[inverse[s:s + 2048]])
                                for s in range(0, len(pair_rows), 2048)])
        union = _bit_count(packed_regions)[pair_rows] + _bit_count(packed_masks)[inverse] - inter
        iou = inter.astype(np.float32) / np.maximum(union, 1).astype(np.float32)
        keep = iou > iou_threshold
        out.append(pd.DataFrame({
            "filter": filters[pair_rows[keep]], "image": images[pair_rows[keep]],
            "concept": objects["concept"].to_numpy()[unique[inverse[keep]]], "iou": iou[keep],
        }))
    if not out:
        return pd.DataFrame(columns=["filter", "image", "concept", "iou"])
    table = pd.concat(out, ignore_index=True)
    return table.groupby(["filter", "image", "concept"], as_index=False)["iou"].max()


_BITS = np.array([bin(i).count("1") for i in range(256)], dtype=np.int64)


def _bit_count(packed: np.ndarray) -> np.ndarray:
    """Set bits of each row of ``np.packbits`` output, (n, bytes) uint8 -> (n,) int64."""
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(packed).sum(1, dtype=np.int64)
    return _BITS[packed].sum(1)


def recall(truth: pd.DataFrame, words: pd.DataFrame, ks=(5, 10, 20), by=("filter",)) -> pd.DataFrame:
    """Recall@k of ranked words against ground truth.

    Parameters
    ----------
    truth : pandas.DataFrame
        ``filter, image, concept`` rows (the ground truth G).
    words : pandas.DataFrame
        Ranked words with columns ``by + ("rank", "word")``; ``by=("filter",)`` for
        the filter's words, ``("filter", "image")`` for per-image words.
    ks : tuple of int

    Returns
    -------
    pandas.DataFrame
        Columns ``k, recall, pairs`` (pairs = (filter, image) pairs with non-empty G).
    """
    by = list(by)
    ranked = words.dropna(subset=["word"]).sort_values(by + ["rank"], kind="stable")
    ranked = ranked.assign(position=ranked.groupby(by).cumcount())
    first = ranked.groupby(by + ["word"], as_index=False, observed=True)["position"].min()
    given = truth[["filter", "image", "concept"]].drop_duplicates()
    given = given.astype({"concept": object}).merge(
        first.astype({"word": object}).rename(columns={"word": "concept"}), on=by + ["concept"], how="left")
    pair = given.groupby(["filter", "image"]).ngroup().to_numpy()
    sizes = np.bincount(pair).astype(float)
    position = given["position"].to_numpy(dtype=float, na_value=np.inf)
    rows = []
    for k in ks:
        hits = np.bincount(pair, weights=position < k, minlength=len(sizes))
        rows.append(dict(k=k, recall=float(np.mean(hits / sizes)) if len(sizes) else np.nan, pairs=len(sizes)))
    return pd.DataFrame(rows)


class RecallEvaluator:
    """Recall@k of explanations, split by seen/unseen concepts and object/stuff ground truth.

    Parameters
    ----------
    store : ActivationStore
    seen, unseen : list of str
        The mapper's concept split.
    stuff : iterable of str
        Background ("stuff") concepts, reported apart from objects.
    iou_threshold : float
    ks : tuple of int
    """

    def __init__(self, store, seen, unseen, stuff=(), iou_threshold: float = 0.04, ks=(5, 10, 20),
                 show_progress: bool = False):
        self.store, self.seen, self.unseen = store, set(seen), set(unseen)
        self.stuff = set(stuff)
        self.iou_threshold, self.ks, self.show_progress = iou_threshold, tuple(ks), show_progress
        self._truth: dict = {}

    def truth(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Ground truth for these pairs (cached by the pairs' content)."""
        key = hash(pairs[["filter", "image"]].to_numpy().tobytes())
        if key not in self._truth:
            self._truth[key] = ground_truth(self.store, pairs[["filter", "image"]], self.iou_threshold,
                                            show_progress=self.show_progress)
        return self._truth[key]

    def evaluate(self, explanations: pd.DataFrame, image_words: pd.DataFrame | None, pairs: pd.DataFrame,
                 method: str, model: str = "") -> pd.DataFrame:
        """Tidy recall table (columns :data:`RECALL_COLUMNS`) for one method's words."""
        truth = self.truth(pairs)
        grounds = {"objects": ~truth["concept"].isin(self.stuff), "stuff": truth["concept"].isin(self.stuff),
                   "all": pd.Series(True, index=truth.index)}
        subsets = {"all": None, "seen": self.seen, "unseen": self.unseen}
        sources = {"filter": (explanations, ("filter",))}
        if image_words is not None:
            sources["image"] = (image_words, ("filter", "image"))
        rows = []
        for ground, ground_mask in grounds.items():
            for subset, names in subsets.items():
                part = truth[ground_mask] if names is None else truth[ground_mask & truth["concept"].isin(names)]
                for source, (words, by) in sources.items():
                    table = recall(part, words, self.ks, by)
                    table = table.assign(model=model, layer=self.store.layer, method=method, words_from=source,
                                         ground=ground, subset=subset)
                    rows.append(table)
        return pd.concat(rows, ignore_index=True)[RECALL_COLUMNS]


def frequency_baseline(store, pairs: pd.DataFrame, top_words: int = 20) -> pd.DataFrame:
    """A constant explanation: the reference set's most frequent concepts, for every filter.

    Frequency = number of images with a mask of the concept. Returns an explanation
    table (``filter, rank, word``) with the same words for every filter in ``pairs``.
    """
    counts = store.objects.groupby("concept")["image"].nunique().sort_values(ascending=False, kind="stable")
    words = counts.index[:top_words].tolist()
    filters = np.unique(pairs["filter"].to_numpy())
    return pd.DataFrame({
        "filter": np.repeat(filters, len(words)), "rank": np.tile(np.arange(1, len(words) + 1), len(filters)),
        "word": np.tile(words, len(filters)),
    })


def oracle_words(truth: pd.DataFrame, top_words: int = 20) -> pd.DataFrame:
    """The filter word lists with the highest possible filter recall: a ceiling, not an explanation.

    Filter recall@k sums, over a filter's pairs, 1/|G_{u,i}| for each listed concept
    in G_{u,i}; so each filter's best list ranks concepts by that total weight.

    Parameters
    ----------
    truth : pandas.DataFrame
        ``filter, image, concept`` rows (e.g. :meth:`RecallEvaluator.truth`, already
        restricted to the ground that will be scored).
    top_words : int

    Returns
    -------
    pandas.DataFrame
        ``filter, rank, word, weight``.
    """
    if truth.empty:
        return pd.DataFrame(columns=["filter", "rank", "word", "weight"])
    size = truth.groupby(["filter", "image"])["concept"].transform("size")
    weights = (truth.assign(weight=1.0 / size).groupby(["filter", "concept"], as_index=False)["weight"].sum()
               .sort_values(["filter", "weight", "concept"], ascending=[True, False, True], kind="stable"))
    weights["rank"] = weights.groupby("filter").cumcount() + 1
    best = weights[weights["rank"] <= top_words].rename(columns={"concept": "word"})
    return best[["filter", "rank", "word", "weight"]].reset_index(drop=True)


def network_dissection(store, size: int = 56, top_words: int = 20, batch_images: int = 64,
                       show_progress: bool = False) -> pd.DataFrame:
    """Network Dissection labels: per filter, concepts ranked by dataset-wide IoU.

    IoU_{u,c} = sum_i |R_ui ∩ M_ic| / sum_i |R_ui ∪ M_ic| over every image of the
    store, with R the thresholded activation region and M the concept mask, both
    at ``size x size`` (regions upsampled bilinearly, masks area-averaged then
    thresholded at 0.5).

    Returns
    -------
    pandas.DataFrame
        ``filter, rank, word, iou`` (``top_words`` concepts per filter, best first).
    """
    n, c, h, w = store.shape
    concepts = store.concepts
    concept_index = {name: i for i, name in enumerate(concepts)}
    objects = store.objects
    inter = torch.zeros(c, len(concepts))
    region_sum = torch.zeros(c)
    mask_sum = torch.zeros(len(concepts))
    by_image = objects.groupby("image")
    object_groups = {int(k): v for k, v in by_image}
    valid = np.flatnonzero(store.valid)
    for start in progress(range(0, len(valid), batch_images), enabled=show_progress, desc="dissection"):
        images = valid[start:start + batch_images]
        regions = filter_regions(store, images, None, size).flatten(2).float()
        region_sum += regions.sum(dim=(0, 2))
        for local, image in enumerate(images):
            rows = object_groups.get(int(image))
            if rows is None:
                continue
            masks = masks_at(store, rows["object"].to_numpy(), size).flatten(1).float()
            idx = torch.as_tensor([concept_index[x] for x in rows["concept"]])
            inter.index_add_(1, idx, regions[local] @ masks.T)
            mask_sum.index_add_(0, idx, masks.sum(1))
    iou = inter / (region_sum[:, None] + mask_sum[None, :] - inter).clamp_min(1)
    k = min(top_words, len(concepts))
    top = iou.topk(k, dim=1)
    return pd.DataFrame({
        "filter": np.repeat(np.arange(c), k), "rank": np.tile(np.arange(1, k + 1), c),
        "word": np.asarray(concepts, dtype=object)[top.indices.reshape(-1).numpy()],
        "iou": top.values.reshape(-1).numpy(),
    })


def invert_labels(store, top_words: int = 20) -> pd.DataFrame:
    """INVERT-style labels: per filter, the annotated concepts whose presence its activations separate best.

    For every filter u and concept c, the AUC with which u's per-image max
    activation separates the store's images that contain c from those that do not
    (rank-based, ties averaged). A closed-vocabulary baseline that is strong
    in-sample by construction: judge it on held-out images and probe scenes.

    Returns
    -------
    pandas.DataFrame
        ``filter, rank, word, auc`` (``top_words`` concepts per filter, best first).
    """
    from scipy.stats import rankdata

    valid = np.flatnonzero(np.asarray(store.valid))
    ranks = rankdata(np.asarray(store.maxima, dtype=np.float32)[valid], axis=0)  # (N, C)
    row_of = {int(image): k for k, image in enumerate(valid)}
    concepts = store.concepts
    auc = np.zeros((store.shape[1], len(concepts)))
    for j, concept in enumerate(concepts):
        images = store.objects.loc[store.objects["concept"] == concept, "image"].unique()
        rows = [row_of[int(i)] for i in images if int(i) in row_of]
        n_pos, n_neg = len(rows), len(valid) - len(rows)
        if n_pos and n_neg:
            auc[:, j] = (ranks[rows].sum(0) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    k = min(top_words, len(concepts))
    order = np.argsort(-auc, axis=1, kind="stable")[:, :k]
    return pd.DataFrame({
        "filter": np.repeat(np.arange(store.shape[1]), k), "rank": np.tile(np.arange(1, k + 1), store.shape[1]),
        "word": np.asarray(concepts, dtype=object)[order.reshape(-1)],
        "auc": np.take_along_axis(auc, order, axis=1).reshape(-1),
    })


DEFAULT_METHODS = (("attention", "soft_mask"), ("attention", "paper"), ("attention", "code"),
                   ("activation_masking", "paper"), ("original", "paper"))
BASELINES = ("frequency", "netdissect")


class MethodComparison:
    """Recall of several explanation methods and the baselines on one store, in one tidy table.

    Parameters
    ----------
    store : ActivationStore
    mapper : Mapper
    space : WordSpace
    settings : ExplainSettings, optional
        Shared by every method; each method replaces ``method`` and ``attention``.
    vocabulary : "concepts" or Vocabulary or list of str
        Candidate words (recall only counts annotated concepts).
    prior : ClassPrior, optional
        The target model's class prior, added for every method.
    model, dataset : optional
        Needed for ``("image_masking", ...)``.
    show_progress : bool

    Examples
    --------
    >>> recall, words = MethodComparison(store, mapper, space).compare()   # doctest: +SKIP
    """

    def __init__(self, store, mapper, space, settings: ExplainSettings | None = None, *, vocabulary="concepts",
                 prior=None, model=None, dataset=None, show_progress: bool = False):
        self.store, self.mapper, self.space = store, mapper, space
        self.settings = ExplainSettings() if settings is None else settings
        self.vocabulary, self.prior, self.model, self.dataset = vocabulary, prior, model, dataset
        self.show_progress = show_progress

    def compare(self, methods=DEFAULT_METHODS, baselines=BASELINES, ks=(5, 10, 20), iou_threshold: float = 0.04,
                dissection: pd.DataFrame | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Score every method and baseline.

        Parameters
        ----------
        methods : iterable of (method, attention)
        baselines : iterable of {"frequency", "netdissect"}
            The most-frequent-concepts baseline and Network Dissection labels.
        ks : tuple of int
            Recall@k; every method lists ``max(ks)`` words per filter.
        iou_threshold : float
            IoU a concept's mask needs with a filter's region to be ground truth.
        dissection : pandas.DataFrame, optional
            :func:`network_dissection` of this store with at least ``max(ks)`` words per filter (or all
            its concepts), already computed (for example for :func:`~lavise_nb.faithfulness.attach_dissection`).

        Returns
        -------
        (recall, explanations) : pandas.DataFrame, pandas.DataFrame
            ``recall`` has :data:`RECALL_COLUMNS`, ``method`` named like
            ``"attention/paper"``; ``explanations`` stacks every method's filter words.
        """
        methods = list(methods)
        unknown = sorted(set(baselines) - set(BASELINES))
        if not methods:
            raise ValueError("methods is empty: give at least one (method, attention) pair")
        if unknown:
            raise ValueError(f"unknown baselines {unknown}: choose from {BASELINES}")
        if dissection is not None and dissection["rank"].max() < min(max(ks), len(self.store.concepts)):
            raise ValueError(f"dissection has {dissection['rank'].max()} words per filter, recall@{max(ks)} needs "
                             f"{max(ks)}: make it with network_dissection(store, top_words={max(ks)})")
        store, model_name = self.store, self.store.manifest["model_name"]
        evaluator = RecallEvaluator(store, self.mapper.seen, self.mapper.unseen, stuff=store.stuff,
                                    iou_threshold=iou_threshold, ks=ks, show_progress=self.show_progress)
        tables, explained, pairs, mismatched = [], [], None, []
        for method, attention in methods:
            settings = dataclasses.replace(self.settings, method=method, attention=attention, top_words=max(ks))
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                explainer = FilterExplainer(store, self.mapper, self.space, self.vocabulary, settings,
                                            prior=self.prior, model=self.model, dataset=self.dataset,
                                            show_progress=self.show_progress)
            mismatched += [settings.name] if caught else []
            words = explainer.explain().assign(method=settings.name)
            pairs = explainer.pairs()
            tables.append(evaluator.evaluate(words, explainer.image_words(), pairs, settings.name, model_name))
            explained.append(words)
        if mismatched:
            warnings.warn(f"{len(mismatched)} of {len(methods)} methods ({', '.join(mismatched)}) use the mapper's "
                          "gamma although it was tuned under other settings, vocabulary or prior; their calibrated "
                          "recall is not tuned for them (tune one gamma per method for a fair comparison, as make "
                          "quality does)", stacklevel=2)
        if "frequency" in baselines:
            tables.append(evaluator.evaluate(frequency_baseline(store, pairs, max(ks)), None, pairs, "frequency",
                                             model_name))
        if "netdissect" in baselines:
            labels = dissection if dissection is not None else network_dissection(
                store, top_words=max(ks), show_progress=self.show_progress)
            tables.append(evaluator.evaluate(labels, None, pairs, "netdissect", model_name))
        return pd.concat(tables, ignore_index=True), pd.concat(explained, ignore_index=True)
