"""Dataset bias analysis: which filters fire more often in one group of images than another?

LaViSE's bias use case (Section 4.4 of the paper): a *target* dataset comes with
a grouping column (e.g. a demographic attribute, a source, a split). For every
filter ``u`` of a layer, an image *qualifies* when its maximum activation exceeds
the filter's threshold ``T_u`` (the 99.5th percentile of all spatial activations,
taken from the *reference* store the filters were explained on, or from the
target store itself). Filters whose share of qualifying images differs between
groups point at concepts the groups differ in; their LaViSE explanations name
those concepts.

:class:`GroupComparison` is configured once and offers three views:

- :meth:`GroupComparison.compare`: per (filter, group) counts, shares with Wilson
  intervals, and per filter the effect size and an exact / chi-square test with
  a multiple-testing correction across filters;
- :meth:`GroupComparison.concepts`: the significant filters pooled by their top word;
- :meth:`GroupComparison.classifier`: the paper's second variant, a logistic
  regression that predicts the group from the layer's pooled (GAP) features, with
  filters ranked by their contribution to the group separation.

Its statistics settings are one :class:`~lavise_nb.config.BiasSettings`.
:mod:`lavise_nb.planted` builds StampScenes target datasets with a known (or no)
difference, for demonstrations and checks.
"""
from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

from .config import BiasSettings, check_choice

__all__ = ["GroupComparison", "BiasWarning", "wilson_interval", "pooled_features", "COMPARE_COLUMNS", "CONCEPT_COLUMNS",
           "CLASSIFIER_COLUMNS"]

COMPARE_COLUMNS = ["layer", "filter", "group", "n_images", "n_qualify", "share", "ci_low", "ci_high",
                   "threshold", "difference", "ratio", "over_in", "test", "p_value", "q_value", "significant",
                   "rank", "top_word", "word_score", "top_words", "reason"]
CONCEPT_COLUMNS = ["word", "over_in", "n_filters", "filters", "min_q", "mean_difference", "max_difference",
                   "summary"]
CLASSIFIER_COLUMNS = ["layer", "filter", "group", "coefficient", "mean_difference", "contribution", "favours",
                      "rank", "top_word", "word_score", "top_words"]


class BiasWarning(UserWarning):
    """Something about the groups that keeps the statistics valid but deserves attention."""


# ----------------------------------------------------------------------------- helpers


def wilson_interval(k: np.ndarray, n: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Wilson score intervals of k successes in n, (m,) each; every interval holds its share k / n."""
    from statsmodels.stats.proportion import proportion_confint
    low, high = proportion_confint(k, n, alpha=alpha, method="wilson")
    share = np.asarray(k, dtype=float) / np.maximum(np.asarray(n, dtype=float), 1)
    # rounding can put a bound a hair past the share itself (k = 0 or k = n): the interval must hold it
    return np.minimum(np.asarray(low, dtype=float), share), np.maximum(np.asarray(high, dtype=float), share)


def pooled_features(store, block: int = 256, images=None, filters=None) -> np.ndarray:
    """Global-average-pooled activations of a store's images, (len(images), len(filters)) float32.

    ``images`` and ``filters`` (default: all) are read a block of images at a time, so memory
    holds only the rows and columns asked for.
    """
    n, c = store.shape[:2]
    images = np.arange(n) if images is None else np.asarray(images, dtype=np.int64).reshape(-1)
    filters = np.arange(c) if filters is None else np.asarray(filters, dtype=np.int64).reshape(-1)
    out = np.zeros((len(images), len(filters)), dtype=np.float32)
    for start in range(0, len(images), block):
        rows = images[start:start + block]
        order = np.argsort(rows, kind="stable")
        part = np.asarray(store.activations[rows[order]], dtype=np.float32)[:, filters]
        out[start + order] = part.reshape(part.shape[0], len(filters), -1).mean(axis=2)
    return out


def _words_by_filter(explanations: pd.DataFrame | None, n_words: int) -> tuple[dict, dict, dict]:
    """Per filter: its best-supported word, its first ``n_words`` words joined, and that word's score.

    The best-supported word is the filter's ``verified_word`` where the table has one
    (:class:`~lavise_nb.faithfulness.WordVerification`, scored by ``verified_faithfulness``, NaN
    where the evaluation scenes could not score it),
    else the one with the highest ``faithfulness`` (:func:`~lavise_nb.faithfulness.attach_faithfulness`),
    else the first-ranked word; its score is that faithfulness, else its ``support`` (NaN
    without either).
    """
    if explanations is None or len(explanations) == 0:
        return {}, {}, {}
    needed = {"filter", "word", "rank"}
    if not needed <= set(explanations.columns):
        raise ValueError(f"explanations must be FilterExplainer.explain()'s table with columns {sorted(needed)}; "
                         f"got {list(explanations.columns)}")
    table = explanations[explanations["word"].notna()].sort_values(["filter", "rank"])
    top, joined, score = {}, {}, {}
    for f, part in table.groupby("filter"):
        words = part["word"].astype(str).tolist()
        verified = part["verified_word"].dropna() if "verified_word" in part else []
        if len(verified):
            word = verified.iloc[0]
            value = part["verified_faithfulness"].iloc[0] if "verified_faithfulness" in part else np.nan
        elif "faithfulness" in part and part["faithfulness"].notna().any():
            word, value = part.loc[part["faithfulness"].idxmax(), ["word", "faithfulness"]]
        else:
            word, value = words[0], part["support"].iloc[0] if "support" in part else np.nan
        top[int(f)], score[int(f)] = str(word), float(value)
        joined[int(f)] = ", ".join(words[:n_words])
    return top, joined, score


# ----------------------------------------------------------------------------- the method


class GroupComparison:
    """Compare how often each filter fires in groups of a target dataset.

    Parameters
    ----------
    target_store : ActivationStore
        Activations of the target dataset; its ``index`` holds the grouping column.
    group_column : str or array-like
        Column of ``target_store.index`` that names each image's group, or an
        array / Series of one label per store row (e.g. for a quick split).
    reference_store : ActivationStore, optional
        The store the filters were explained on (same model and layer). Needed
        for ``threshold_source="reference"``.
    threshold_source : {"auto", "reference", "target"}
        Where the thresholds ``T_u`` come from. ``"reference"``: the reference
        store's (as LaViSE explanations use, so "qualifies" means the same thing
        as in the explanation); ``"target"``: the target store's own 99.5th
        percentiles (use when the target data look very different). ``"auto"``
        (default): the reference store's when one is given, else the target's.
    explanations : pandas.DataFrame, optional
        :meth:`FilterExplainer.explain` output; names the filters (``top_words``).
    groups : list, optional
        Which groups to compare, in this order (default: all, sorted). With two
        groups ``difference = share[groups[0]] - share[groups[1]]``.
    filters : array-like, optional
        Restrict to these filters (default: all filters of the layer).
    settings : BiasSettings, optional
        ``min_group_size``, ``alpha``, ``correction``, ``n_words`` and
        ``imbalance_warning`` (default ``BiasSettings()``).

    Attributes
    ----------
    settings : BiasSettings
    threshold_source : {"reference", "target"}
        Where the thresholds came from (``"auto"`` resolved).
    groups : list
        The compared groups, in order.
    labels : numpy.ndarray
        (n,) group label of each used image.
    images : numpy.ndarray
        (n,) store rows of the used images.
    dropped : pandas.DataFrame
        Store rows left out and why (``image, image_id, reason``).
    thresholds : numpy.ndarray
        (C,) the thresholds used.
    result : pandas.DataFrame or None
        The last :meth:`compare` table.
    """

    def __init__(self, target_store, group_column, *, reference_store=None, threshold_source: str = "auto",
                 explanations: pd.DataFrame | None = None, groups=None, filters=None,
                 settings: BiasSettings | None = None):
        check_choice("threshold_source", threshold_source, ("auto", "reference", "target"))
        self.settings = BiasSettings() if settings is None else settings
        self.store, self.reference = target_store, reference_store
        if reference_store is not None:
            self._check_reference(reference_store)
        if threshold_source == "auto":
            threshold_source = "reference" if reference_store is not None else "target"
        if threshold_source == "reference" and reference_store is None:
            raise ValueError("threshold_source='reference' needs the reference store the filters were explained on: "
                             "pass reference_store=..., or use threshold_source='target' to compute thresholds on "
                             "the target images")
        self.threshold_source = threshold_source
        source = reference_store if threshold_source == "reference" else target_store
        self.thresholds = np.asarray(source.thresholds, dtype=np.float32)
        n_filters = target_store.shape[1]
        self.filters = np.arange(n_filters) if filters is None else np.asarray(filters, dtype=np.int64)
        if self.filters.size == 0 or self.filters.min() < 0 or self.filters.max() >= n_filters:
            raise ValueError(f"filters must be indices in [0, {n_filters}); got {filters!r}")
        self.explanations = explanations
        self.first_word, self.filter_words, self.word_score = _words_by_filter(explanations, self.settings.n_words)
        self.group_column = group_column if isinstance(group_column, str) else "group"
        self._resolve_groups(group_column, groups)
        self.result: pd.DataFrame | None = None
        self._pooled: np.ndarray | None = None

    def regroup(self, group_column, groups=None) -> "GroupComparison":
        """The same comparison grouped by another column.

        Keeps the target and reference stores, the thresholds' source, the
        explanations, the filters and the settings.

        Parameters
        ----------
        group_column : str or array-like
            As for :class:`GroupComparison`.
        groups : list, optional
            Which groups of the new column to compare (default: all, sorted).

        Returns
        -------
        GroupComparison
        """
        return GroupComparison(self.store, group_column, reference_store=self.reference,
                               threshold_source=self.threshold_source, explanations=self.explanations,
                               groups=groups, filters=self.filters, settings=self.settings)

    def rename(self, explanations: pd.DataFrame) -> "GroupComparison":
        """Name the filters by other explanations (e.g. :class:`~lavise_nb.faithfulness.WordVerification`'s),
        keeping what was computed; returns this comparison."""
        self.explanations = explanations
        self.first_word, self.filter_words, self.word_score = _words_by_filter(explanations, self.settings.n_words)
        if self.result is not None:
            self.result = self.result.assign(**self._names(self.result["filter"]))
        return self

    def _names(self, filters) -> dict:
        """``top_word``, ``word_score`` and ``top_words`` of each of ``filters``, as columns."""
        return {"top_word": [self.first_word.get(int(f), "") for f in filters],
                "word_score": [self.word_score.get(int(f), np.nan) for f in filters],
                "top_words": [self.filter_words.get(int(f), "") for f in filters]}

    # ------------------------------------------------------------------ setup
    def _check_reference(self, reference) -> None:
        tk, rk = self.store.manifest["key"], reference.manifest["key"]
        problems = [f"{field}: target {tk[field]!r} vs reference {rk[field]!r}" for field in ("model", "layer")
                    if tk.get(field) != rk.get(field)]
        if self.store.shape[1] != reference.shape[1]:
            problems.append(f"filters: target {self.store.shape[1]} vs reference {reference.shape[1]}")
        if problems:
            raise ValueError("the reference store does not describe the same filters as the target store ("
                             + "; ".join(problems) + "); build both stores with the same model and layer")

    def _resolve_groups(self, group_column, groups) -> None:
        index = self.store.index
        n = len(index)
        if isinstance(group_column, str):
            if group_column not in index.columns:
                extra = [c for c in index.columns if c not in ("image", "image_id", "path", "width", "height",
                                                               "valid", "error")]
                raise ValueError(f"the target store has no column {group_column!r}; its metadata columns are "
                                 f"{extra}. Pass metadata_csv=... with that column to the dataset (and rebuild "
                                 "the store), or pass the labels as an array: GroupComparison(store, labels)")
            labels = index[group_column]
        else:
            labels = pd.Series(np.asarray(group_column, dtype=object))
            if len(labels) != n:
                raise ValueError(f"group labels have length {len(labels)} but the store has {n} images; "
                                 "pass one label per store row (store.index order)")
        labels = labels.reset_index(drop=True)
        missing = labels.isna().to_numpy()
        invalid = ~self.store.valid
        dropped = []
        for mask, reason in ((invalid & ~missing, "unreadable image"), (missing, "missing group value")):
            for row in np.flatnonzero(mask):
                dropped.append((int(row), index["image_id"].iloc[row], reason))
        self.dropped = pd.DataFrame(dropped, columns=["image", "image_id", "reason"])
        if missing.any():
            warnings.warn(f"{int(missing.sum())} of {n} images have no value in {self.group_column!r} and are "
                          "left out (see .dropped); fill them in the metadata to include them", BiasWarning,
                          stacklevel=3)
        if (invalid & ~missing).any():
            warnings.warn(f"{int((invalid & ~missing).sum())} unreadable images are left out (see .dropped)",
                          BiasWarning, stacklevel=3)
        keep = ~missing & ~invalid
        as_text = labels.where(~labels.isna(), None)
        present = sorted(pd.unique(as_text[keep]).tolist(), key=str)
        if groups is None:
            groups = present
        else:
            groups = list(groups)
            unknown = [g for g in groups if g not in present]
            if unknown:
                raise ValueError(f"groups {unknown} do not occur in {self.group_column!r}; present: {present}")
            if len(set(groups)) != len(groups):
                raise ValueError(f"groups must be distinct; got {groups}")
            keep &= as_text.isin(groups).to_numpy()
        if len(groups) < 2:
            raise ValueError(f"{self.group_column!r} has only {len(groups)} group ({groups}) among the usable "
                             "images; a comparison needs at least two groups. Check the grouping column or "
                             "add images of another group")
        self.images = np.flatnonzero(keep)
        self.labels = as_text.to_numpy()[keep]
        sizes = {g: int((self.labels == g).sum()) for g in groups}
        min_size = self.settings.min_group_size
        small = {g: s for g, s in sizes.items() if s < min_size}
        if small:
            raise ValueError(f"groups {small} have fewer than min_group_size={min_size} images; shares "
                             "of so few images are not informative. Add images, merge small groups, leave them "
                             "out with groups=[...], or lower BiasSettings.min_group_size")
        self.groups, self.sizes = groups, sizes
        largest, smallest = max(sizes.values()), min(sizes.values())
        if largest >= self.settings.imbalance_warning * smallest:
            warnings.warn(f"group sizes are very different ({sizes}); shares and tests stay valid, but the "
                          "smallest group limits the power and its intervals are wide", BiasWarning, stacklevel=3)

    # ------------------------------------------------------------------ verbs
    def qualifies(self) -> np.ndarray:
        """(n_used_images, n_filters) bool: image max activation > T_u, for the compared filters."""
        maxima = np.asarray(self.store.maxima[self.images], dtype=np.float32)[:, self.filters]
        return maxima > self.thresholds[self.filters][None, :]

    def counts(self) -> tuple[np.ndarray, np.ndarray]:
        """Qualifying images per (filter, group) ``(F, G)`` and group sizes ``(G,)``."""
        q = self.qualifies()
        k = np.stack([q[self.labels == g].sum(axis=0) for g in self.groups], axis=1).astype(np.int64)
        n = np.array([self.sizes[g] for g in self.groups], dtype=np.int64)
        return k, n

    def compare(self) -> pd.DataFrame:
        """Per filter and group: how many images qualify, and is the difference significant?

        Returns
        -------
        pandas.DataFrame
            One row per (filter, group), filters by ``rank``. Columns:

            - ``layer, filter, group``
            - ``n_images``: used images of the group; ``n_qualify``: those whose max
              activation of the filter exceeds ``threshold`` (``T_u``)
            - ``share`` = n_qualify / n_images, ``ci_low, ci_high``: Wilson interval
              at confidence 1 - alpha
            - per filter (repeated on its group rows): ``difference`` (two groups:
              share of the first minus the second; more: max minus min share),
              ``ratio`` (first / second, or max / min; ``inf`` when the denominator
              share is 0), ``over_in`` (group with the highest share), ``test``
              ("fisher" exact two-sided for two groups, "chi2" test of
              independence on the 2 x G table otherwise), ``p_value``,
              ``q_value`` (corrected across the tested filters), ``significant``
              (q < alpha), ``rank`` (1 = smallest q, then largest |difference|)
            - ``top_word``: the filter's best-supported word (highest faithfulness where the
              explanations carry it, else the first word), ``word_score``: that faithfulness,
              else the word's support; ``top_words``: the first words (empty without explanations)
            - ``reason``: why a statistic is NaN (e.g. no image qualifies in any
              group, so the filter is not tested), else empty
        """
        from scipy.stats import chi2_contingency, fisher_exact
        from statsmodels.stats.multitest import multipletests

        alpha, correction = self.settings.alpha, self.settings.correction
        k, n = self.counts()
        n_f, n_g = k.shape
        share = k / n[None, :]
        low, high = wilson_interval(k.reshape(-1), np.tile(n, n_f), alpha)
        low, high = low.reshape(n_f, n_g), high.reshape(n_f, n_g)
        p = np.full(n_f, np.nan)
        reason = np.full(n_f, "", dtype=object)
        test = "fisher" if n_g == 2 else "chi2"
        for i in range(n_f):
            total = k[i].sum()
            if total == 0:
                reason[i] = "no image qualifies in any group; not tested"
                continue
            if total == n.sum():
                reason[i] = "every image qualifies in every group; not tested"
                continue
            table = np.stack([k[i], n - k[i]])
            if n_g == 2:
                p[i] = fisher_exact(table, alternative="two-sided")[1]
            else:
                stat, p[i], _, expected = chi2_contingency(table, correction=False)
                if (expected < 5).any():
                    reason[i] = "chi-square approximation: some expected counts < 5"
        tested = ~np.isnan(p)
        q = np.full(n_f, np.nan)
        if tested.any():
            q[tested] = p[tested] if correction is None else multipletests(
                p[tested], alpha=alpha, method=correction)[1]
        if n_g == 2:
            difference = share[:, 0] - share[:, 1]
            num, den = share[:, 0], share[:, 1]
        else:
            difference = share.max(axis=1) - share.min(axis=1)
            num, den = share.max(axis=1), share.min(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(den > 0, num / np.where(den > 0, den, 1), np.where(num > 0, np.inf, np.nan))
        both_zero = (num == 0) & (den == 0)
        reason = np.where(both_zero & (reason == ""), "no image qualifies in the compared groups; ratio undefined",
                          reason)
        over_in = np.array(self.groups, dtype=object)[share.argmax(axis=1)]
        over_in = np.where(np.isclose(share.max(axis=1), share.min(axis=1)), None, over_in)
        order = np.lexsort((-np.abs(difference), np.where(np.isnan(q), np.inf, q)))
        rank = np.empty(n_f, dtype=np.int64)
        rank[order] = np.arange(1, n_f + 1)
        filters = self.filters
        table = pd.DataFrame({
            "layer": self.store.layer,
            "filter": np.repeat(filters, n_g),
            "group": np.tile(np.array(self.groups, dtype=object), n_f),
            "n_images": np.tile(n, n_f),
            "n_qualify": k.reshape(-1),
            "share": share.reshape(-1),
            "ci_low": low.reshape(-1),
            "ci_high": high.reshape(-1),
            "threshold": np.repeat(self.thresholds[filters], n_g).astype(float),
            "difference": np.repeat(difference, n_g),
            "ratio": np.repeat(ratio, n_g),
            "over_in": np.repeat(over_in, n_g),
            "test": test,
            "p_value": np.repeat(p, n_g),
            "q_value": np.repeat(q, n_g),
            "significant": np.repeat(np.nan_to_num(q, nan=1.0) < alpha, n_g),
            "rank": np.repeat(rank, n_g),
            **self._names(np.repeat(filters, n_g)),
            "reason": np.repeat(reason, n_g),
        })
        table = table.sort_values(["rank", "group"], key=lambda c: c if c.name == "rank" else
                                  c.map({g: i for i, g in enumerate(self.groups)})).reset_index(drop=True)
        table.attrs.update(threshold_source=self.threshold_source, alpha=alpha, correction=correction,
                           groups=list(self.groups), sizes=dict(self.sizes), n_dropped=len(self.dropped))
        self.result = table
        return table

    def filters_table(self) -> pd.DataFrame:
        """One row per filter (the per-filter columns of :meth:`compare`), by rank, with a share per group."""
        table = self.result if self.result is not None else self.compare()
        wide = table.pivot(index="filter", columns="group", values="share")
        wide = wide[self.groups].add_prefix("share_")
        per_filter = table.drop_duplicates("filter").set_index("filter")[
            ["difference", "ratio", "over_in", "p_value", "q_value", "significant", "rank", "top_word",
             "word_score", "top_words", "reason"]]
        return per_filter.join(wide).sort_values("rank").reset_index()

    def concepts(self, significant_only: bool = True, max_filters: int | None = None) -> pd.DataFrame:
        """Concept-level view: filters pooled by their top word and the group they are over-represented in.

        Parameters
        ----------
        significant_only : bool
            Only significant filters (default); False pools every named filter.
        max_filters : int, optional
            Only the ``max_filters`` best-ranked filters.

        Returns
        -------
        pandas.DataFrame
            One row per (word, over_in), most filters first. Columns ``word`` (the
            filters' top word; ``"(unnamed)"`` without explanations), ``over_in``,
            ``n_filters``, ``filters`` (comma-separated ids), ``min_q``,
            ``mean_difference``, ``max_difference`` (largest |difference|, signed)
            and ``summary``, a sentence such as "'dog' over-represented in group A
            (3 filters, min q=2e-05)".
        """
        per_filter = self.filters_table()
        if significant_only:
            per_filter = per_filter[per_filter["significant"]]
        if max_filters is not None:
            per_filter = per_filter.head(max_filters)
        per_filter = per_filter[per_filter["over_in"].notna()].copy()
        per_filter["word"] = per_filter["top_word"].replace("", "(unnamed)")
        rows = []
        for (word, group), part in per_filter.groupby(["word", "over_in"], sort=False):
            diff = part["difference"].to_numpy()
            min_q = float(part["q_value"].min())
            rows.append(dict(
                word=word, over_in=group, n_filters=len(part),
                filters=", ".join(str(f) for f in part["filter"]), min_q=min_q,
                mean_difference=float(diff.mean()), max_difference=float(diff[np.argmax(np.abs(diff))]),
                summary=(f"'{word}' over-represented in group {group} ({len(part)} filter"
                         f"{'s' if len(part) != 1 else ''}, min q={min_q:.2g})")))
        out = pd.DataFrame(rows, columns=CONCEPT_COLUMNS)
        if len(out):
            out = out.sort_values(["n_filters", "min_q"], ascending=[False, True]).reset_index(drop=True)
        return out

    def classifier(self, test_size: float = 0.3, seed: int = 0, C: float = 1.0, top: int | None = None
                   ) -> pd.DataFrame:
        """The paper's second variant: predict the group from the layer's pooled features.

        A standardised, L2-regularised logistic regression (scikit-learn) is fit
        on the global-average-pooled target features of a stratified training
        split; its accuracy on the held-out split says how separable the groups
        are at this layer. Filters are ranked by their *contribution*
        ``coefficient x mean_difference`` (both on standardised features), where
        ``mean_difference`` is the mean pooled activation of the group minus that
        of the other group(s). For two groups the contributions sum to the gap in
        mean logit between the groups, so they decompose the separation.

        Returns
        -------
        pandas.DataFrame
            Two groups: one row per filter (``group`` = the first group, whose
            logit the coefficients raise); more groups: one row per (filter,
            group), one-vs-rest. Columns ``layer, filter, group, coefficient,
            mean_difference, contribution, favours`` (the group a positive
            coefficient/feature pushes towards), ``rank`` (1 = largest
            contribution), ``top_word, top_words``. ``attrs`` hold
            ``accuracy``, ``balanced_accuracy``, ``chance`` (majority-class
            rate of the test split), ``n_train``, ``n_test``; also in ``.classifier_summary``.
        """
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import accuracy_score, balanced_accuracy_score
        from sklearn.model_selection import train_test_split
        from sklearn.preprocessing import StandardScaler

        if self._pooled is None:
            self._pooled = pooled_features(self.store, images=self.images, filters=self.filters)
        x = self._pooled
        y = np.array([self.groups.index(g) for g in self.labels])
        n_min = min(self.sizes.values())
        if n_min * test_size < 1 or n_min * (1 - test_size) < 2:
            raise ValueError(f"the smallest group has {n_min} images, too few for a held-out split with "
                             f"test_size={test_size}; add images or change test_size")
        train, test = train_test_split(np.arange(len(y)), test_size=test_size, random_state=seed, stratify=y)
        scaler = StandardScaler().fit(x[train])
        z = scaler.transform(x)
        z = np.nan_to_num(z)
        model = LogisticRegression(C=C, max_iter=2000).fit(z[train], y[train])
        predicted = model.predict(z[test])
        summary = {
            "accuracy": float(accuracy_score(y[test], predicted)),
            "balanced_accuracy": float(balanced_accuracy_score(y[test], predicted)),
            "chance": float(np.bincount(y[test]).max() / len(test)),
            "n_train": int(len(train)), "n_test": int(len(test)), "C": C, "features": "GAP, standardised",
        }
        rows = []
        if len(self.groups) == 2:
            # sklearn models P(y = 1) = P(second group); flip so coefficients favour the first group
            coef = -model.coef_[0]
            diff = z[y == 0].mean(axis=0) - z[y == 1].mean(axis=0)
            contribution = coef * diff
            for j, f in enumerate(self.filters):
                rows.append((int(f), self.groups[0], coef[j], diff[j], contribution[j],
                             self.groups[0] if coef[j] > 0 else self.groups[1]))
        else:
            for gi, g in enumerate(self.groups):
                coef = model.coef_[gi]
                diff = z[y == gi].mean(axis=0) - z[y != gi].mean(axis=0)
                for j, f in enumerate(self.filters):
                    rows.append((int(f), g, coef[j], diff[j], coef[j] * diff[j],
                                 g if coef[j] > 0 else f"not {g}"))
        table = pd.DataFrame(rows, columns=["filter", "group", "coefficient", "mean_difference", "contribution",
                                            "favours"])
        table.insert(0, "layer", self.store.layer)
        table = table.sort_values("contribution", ascending=False, kind="stable").reset_index(drop=True)
        table["rank"] = table.groupby("group").cumcount() + 1
        table = table.assign(**self._names(table["filter"]))
        if top is not None:
            table = table[table["rank"] <= top].reset_index(drop=True)
        table.attrs.update(summary)
        self.classifier_summary = summary
        return table[CLASSIFIER_COLUMNS]

    def example_images(self, filter: int, group, k: int = 6) -> pd.DataFrame:
        """Up to ``k`` qualifying images of ``group`` for ``filter``, strongest first.

        Returns
        -------
        pandas.DataFrame
            Columns ``image`` (store row), ``image_id``, ``path``, ``activation``, ``qualifies``.
            Falls back to the strongest non-qualifying images when fewer than ``k`` qualify.
        """
        if group not in self.groups:
            raise ValueError(f"unknown group {group!r}; groups are {self.groups}")
        rows = self.images[self.labels == group]
        act = np.asarray(self.store.maxima[rows, int(filter)], dtype=np.float32)
        order = np.argsort(-act, kind="stable")[:k]
        index = self.store.index
        return pd.DataFrame({
            "image": rows[order],
            "image_id": index["image_id"].to_numpy()[rows[order]],
            "path": index["path"].to_numpy()[rows[order]] if "path" in index else "",
            "activation": act[order],
            "qualifies": act[order] > self.thresholds[int(filter)],
        })
