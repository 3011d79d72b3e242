"""Is a name true to its filter? Scores that test a (filter, word) pair against the filter itself.

Recall@k rewards naming whatever lies in a filter's region; these scores ask whether
the filter's activation follows the named concept:

- :class:`PresenceScore`: on reference images held out from training and from
  choosing top images (a second store of fresh scenes), how well the filter's
  per-image max activation predicts the concept's presence (Pearson r, AUPRC, AUC
  with a Mann-Whitney p) and how well its upsampled map predicts the concept's
  mask, pixel by pixel (AUPRC).
- :class:`ProbeScenes` (CoSy's idea, with the project's scene generator instead of
  an image generator): fresh scenes composed to contain the concept and control
  scenes that do not; the AUC of the filter's activations and their mean
  difference in units of the controls' standard deviation (MAD).
- :class:`WordVerification`: each filter's best-supported word among its candidates,
  chosen on probe scenes of one seed and scored on probe scenes of another.
- :func:`sanity_checks`: NeuronEval's two checks on any score: dropping half the
  positive labels, and adding random positives, must both lower it.

Every table says which pairs could be tested (``testable``): a word that names
no annotated concept cannot be scored. :func:`coverage` says how many.
"""
from __future__ import annotations

import zlib

import numpy as np
import pandas as pd
import torch
from scipy.stats import mannwhitneyu
from sklearn.metrics import average_precision_score, roc_auc_score

from ._utils.progress import progress
from .config import check_int
from .regions import filter_maps, masks_at

__all__ = ["PresenceScore", "ProbeScenes", "PRESENCE_COLUMNS", "PROBE_COLUMNS", "presence_scores",
           "sanity_checks", "coverage", "attach_faithfulness", "attach_dissection", "first_words",
           "against_random_directions", "WordVerification", "VERIFIED_COLUMNS", "SEED_SPAN"]

PRESENCE_COLUMNS = ["filter", "word", "testable", "n_images", "n_positive", "correlation", "auprc", "auprc_chance",
                    "auc", "auc_p", "pixel_auprc", "pixel_chance"]
PROBE_COLUMNS = ["filter", "word", "testable", "n_probe", "n_control", "auc", "mad"]
#: A ProbeScenes' scenes use seeds ``seed`` to ``seed + SEED_SPAN - 1`` (controls, then one per word).
SEED_SPAN = 100_001
VERIFIED_COLUMNS = ["verified_word", "verified_from", "verified_selection", "verified_faithfulness"]


def presence_scores(activation: np.ndarray, presence: np.ndarray) -> dict:
    """Scores of one filter's per-image activations against one concept's presence.

    Parameters
    ----------
    activation : numpy.ndarray
        (n,) the filter's per-image activation (max over space).
    presence : numpy.ndarray
        (n,) bool, the concept is in the image.

    Returns
    -------
    dict
        ``correlation`` (Pearson r with the 0/1 presence), ``auprc`` (average
        precision), ``auprc_chance`` (the share of positives: AUPRC of a random
        ranking), ``auc`` and ``auc_p`` (one-sided Mann-Whitney U); NaN where a
        score is undefined (no positive or no negative image, constant activation).
    """
    activation = np.asarray(activation, dtype=np.float64)
    presence = np.asarray(presence, dtype=bool)
    n_pos = int(presence.sum())
    out = dict(correlation=np.nan, auprc=np.nan, auprc_chance=n_pos / max(len(presence), 1), auc=np.nan,
               auc_p=np.nan)
    if n_pos == 0 or n_pos == len(presence):
        return out
    if activation.std() > 0:
        out["correlation"] = float(np.corrcoef(activation, presence.astype(np.float64))[0, 1])
    out["auprc"] = float(average_precision_score(presence, activation))
    out["auc"] = float(roc_auc_score(presence, activation))
    out["auc_p"] = float(mannwhitneyu(activation[presence], activation[~presence], alternative="greater").pvalue)
    return out


def first_words(explanations: pd.DataFrame, top: int = 1) -> pd.DataFrame:
    """The ``top`` first words of each filter, as (filter, word, rank) pairs to score."""
    named = explanations.dropna(subset=["word"])
    named = named[(named["rank"] >= 1) & (named["rank"] <= top)]
    return named[["filter", "word", "rank"]].reset_index(drop=True)


class PresenceScore:
    """Score (filter, word) pairs by the concept's presence in a held-out store.

    Parameters
    ----------
    store : ActivationStore
        Reference images with masks that were NOT used to train the explainer or to
        choose the top images, e.g. a StampScenes build with another seed
        (:meth:`Reference.held_out`). Same model and layer as the explanations.
        Passing the explanation store itself gives an in-sample score (optimistic).
    pixel_size : int
        Side at which maps and masks are compared for ``pixel_auprc`` (masks are
        area-averaged and kept where they cover more than half a cell).
    pixel_negatives : int
        Images without the concept added to the images with it for ``pixel_auprc``
        (seeded; the pixel score is over their pixels).
    seed : int
    show_progress : bool

    Examples
    --------
    >>> scores = PresenceScore(held_out_store).score(first_words(explanations))   # doctest: +SKIP
    """

    def __init__(self, store, *, pixel_size: int = 56, pixel_negatives: int = 100, seed: int = 0,
                 show_progress: bool = False):
        self.store = store
        self.pixel_size = check_int("pixel_size", pixel_size)
        self.pixel_negatives = check_int("pixel_negatives", pixel_negatives, 0)
        self.seed, self.show_progress = seed, show_progress
        self.valid = np.flatnonzero(np.asarray(store.valid))
        objects = store.objects
        self.images_of = objects.groupby("concept")["image"].apply(lambda s: np.unique(s.to_numpy())).to_dict()

    def presence(self, word: str) -> np.ndarray | None:
        """(n_valid,) bool presence of ``word`` in the store's valid images; None when it is no concept there."""
        if word not in self.images_of:
            return None
        return np.isin(self.valid, self.images_of[word])

    def score(self, pairs: pd.DataFrame) -> pd.DataFrame:
        """Scores of each (filter, word) pair.

        Parameters
        ----------
        pairs : pandas.DataFrame
            Columns ``filter`` and ``word`` (e.g. :func:`first_words`); other columns are kept.

        Returns
        -------
        pandas.DataFrame
            The pairs with :data:`PRESENCE_COLUMNS` (``testable`` False and NaN scores
            for words that are no annotated concept of the store).
        """
        maxima = np.asarray(self.store.maxima, dtype=np.float32)[self.valid]
        rows = []
        for f, word in progress(list(zip(pairs["filter"], pairs["word"])), enabled=self.show_progress,
                                desc="held-out presence"):
            presence = self.presence(word)
            row = dict(filter=int(f), word=word, testable=presence is not None and 0 < presence.sum() < len(presence),
                       n_images=len(self.valid), n_positive=0 if presence is None else int(presence.sum()))
            if row["testable"]:
                row.update(presence_scores(maxima[:, int(f)], presence))
                row["pixel_auprc"], row["pixel_chance"] = self.pixel_auprc(int(f), word)
            rows.append(row)
        table = pd.DataFrame(rows).reindex(columns=PRESENCE_COLUMNS)
        extra = pairs.drop(columns=[c for c in ("filter", "word") if c in pairs]).reset_index(drop=True)
        return pd.concat([table, extra], axis=1)

    def pixel_auprc(self, filter: int, word: str) -> tuple[float, float]:
        """Pixel-level AUPRC of the filter's upsampled map against the concept's masks, and its chance level."""
        objects = self.store.objects
        positives = self.images_of[word]
        rng = np.random.default_rng(self.seed + zlib.crc32(word.encode()))
        others = np.setdiff1d(self.valid, positives)
        negatives = rng.choice(others, size=min(self.pixel_negatives, len(others)), replace=False)
        images = np.concatenate([positives, np.sort(negatives)])
        size = self.pixel_size
        maps = filter_maps(self.store, images, np.full(len(images), filter), size)
        rows = objects[(objects["concept"] == word) & objects["image"].isin(positives)]
        where = {int(image): k for k, image in enumerate(images)}
        owner = torch.tensor([where[int(image)] for image in rows["image"]], dtype=torch.long)
        small = masks_at(self.store, rows["object"].to_numpy(), size).float()
        truth = torch.zeros(len(images), size, size).index_add_(0, owner, small) > 0  # any mask of the concept
        labels = truth.flatten().numpy()
        if not labels.any():
            return np.nan, 0.0
        return float(average_precision_score(labels, maps.flatten().numpy())), float(labels.mean())


class ProbeScenes:
    """Score (filter, word) pairs on fresh scenes made for the word (CoSy-style probes).

    For each concept, ``n_images`` StampScenes are composed with the concept's
    sampling weight raised (an object concept) or its background forced (a
    background concept); the images that really contain it are the probes. A
    shared set of control scenes is composed once; for each concept, the controls
    that contain it are dropped. Seeds are fresh (``seed`` plus a hash of the word),
    so no probe is a reference image. Scenes and activations are cached (stores
    under the cache's ``probes/``), so an interrupted run resumes.

    Parameters
    ----------
    model : TargetModel
    layer : str
    n_images : int
        Scenes composed per concept (and for the controls).
    seed : int
        Base seed of the probe scenes (keep it away from the reference build's).
    weight : float
        Sampling-weight multiplier of the concept in its probe scenes.
    root : path, optional
        Where the probe stores live (default: the cache's ``probes/``).
    device : str
    show_progress : bool

    Examples
    --------
    >>> ProbeScenes(model, "_blocks.15").score(first_words(explanations))   # doctest: +SKIP
    """

    def __init__(self, model, layer: str, *, n_images: int = 60, seed: int = 10_000, weight: float = 1000.0,
                 root=None, device="auto", show_progress: bool = False):
        from .scenes import background_table, stamp_table, usable_rows

        self.model, self.layer = model, layer
        self.n_images = check_int("n_images", n_images)
        self.seed, self.weight, self.device, self.show_progress = int(seed), float(weight), device, show_progress
        self.root = root
        self.objects = set(usable_rows(stamp_table(), photos_only=True)["concept"])
        self.backgrounds = set(usable_rows(background_table(), photos_only=False)["concept"].dropna())
        self._stores: dict = {}
        self._contents: dict = {}
        self._maxima: dict = {}

    def disjoint(self) -> "ProbeScenes":
        """The same probes on other scenes: a base seed :data:`SEED_SPAN` higher, so no seed is shared."""
        return ProbeScenes(self.model, self.layer, n_images=self.n_images, seed=self.seed + SEED_SPAN,
                           weight=self.weight, root=self.root, device=self.device, show_progress=self.show_progress)

    def testable(self, word: str) -> bool:
        """Whether scenes can be composed for ``word`` (a stamp or background concept)."""
        return word in self.objects or word in self.backgrounds

    def _store(self, options: dict, seed: int):
        from ._utils.cache import cache_dir
        from .scenes import stamp_scenes
        from .store import ActivationStore, BuildSettings

        data = stamp_scenes(n_images=self.n_images, seed=seed, preprocess=self.model.preprocess,
                            show_progress=False, **options)
        root = cache_dir("probes") if self.root is None else self.root
        return ActivationStore.build(self.model, self.layer, data, root, BuildSettings(num_workers=0),
                                     device=self.device, show_progress=False)

    def store(self, word: str | None):
        """The activation store of the scenes composed for ``word`` (None: the controls), built once."""
        if word not in self._stores:
            if word is None:
                self._stores[word] = self._store({}, self.seed)
            else:
                key = {"object_weights": {word: self.weight}} if word in self.objects else \
                    {"background_weights": {word: self.weight}}
                self._stores[word] = self._store(key, self.seed + 1 + zlib.crc32(word.encode()) % (SEED_SPAN - 1))
        return self._stores[word]

    def activations(self, word: str | None, directions=None) -> tuple[np.ndarray, np.ndarray]:
        """(n, C) per-image max activations of the scenes composed for ``word`` (None: the controls),
        and (n,) whether each contains ``word``.

        With ``directions`` (:class:`~lavise_nb.coherence.RandomDirections` of the layer), (n, n_directions)
        max responses of those directions instead of the filters.
        """
        key = (word, None if directions is None else directions.fingerprint)
        if word not in self._contents:
            store = self.store(word)
            per_image = store.objects.groupby("image")["concept"].apply(set)
            self._contents[word] = per_image.reindex(np.flatnonzero(np.asarray(store.valid))).apply(
                lambda c: c if isinstance(c, set) else set()).to_numpy()
        if key not in self._maxima:
            store = self.store(word)
            maxima = store.maxima if directions is None else directions.on(store).maxima()
            self._maxima[key] = np.asarray(maxima, dtype=np.float32)[np.asarray(store.valid)]
        maxima, contents = self._maxima[key], self._contents[word]
        if word is None:
            return maxima, contents
        return maxima, np.array([word in c for c in contents])

    def score(self, pairs: pd.DataFrame, directions=None) -> pd.DataFrame:
        """AUC and MAD of each (filter, word) pair on its probe and control scenes.

        Parameters
        ----------
        pairs : pandas.DataFrame
            ``filter, word`` rows (other columns are kept).
        directions : RandomDirections, optional
            Score random directions of the layer instead: ``filter`` indexes them
            (:meth:`FilterExplainer.explain_directions` names them).

        Returns
        -------
        pandas.DataFrame
            The pairs with :data:`PROBE_COLUMNS`.
        """
        control_maxima, control_contents = self.activations(None, directions)
        rows = []
        for f, word in progress(list(zip(pairs["filter"], pairs["word"])), enabled=self.show_progress,
                                desc="probe scenes"):
            row = dict(filter=int(f), word=word, testable=self.testable(word))
            if row["testable"]:
                maxima, contains = self.activations(word, directions)
                controls = control_maxima[np.array([word not in c for c in control_contents]), int(f)]
                probes = maxima[contains, int(f)]
                row.update(n_probe=len(probes), n_control=len(controls))
                if len(probes) and len(controls):
                    labels = np.r_[np.ones(len(probes)), np.zeros(len(controls))]
                    row["auc"] = float(roc_auc_score(labels, np.r_[probes, controls]))
                    spread = controls.std()
                    row["mad"] = float((probes.mean() - controls.mean()) / spread) if spread > 0 else np.nan
            rows.append(row)
        table = pd.DataFrame(rows).reindex(columns=PROBE_COLUMNS)
        extra = pairs.drop(columns=[c for c in ("filter", "word") if c in pairs]).reset_index(drop=True)
        return pd.concat([table, extra], axis=1)


def sanity_checks(activation: np.ndarray, presence: np.ndarray, scores=None, seed: int = 0) -> pd.DataFrame:
    """NeuronEval's two checks of a score on a unit whose concept is known.

    *Missing labels*: half of the positive labels are dropped; *extra labels*:
    random negatives are labelled positive until the positives double. A reliable
    score drops in both.

    Parameters
    ----------
    activation : numpy.ndarray
        (n,) the unit's activations.
    presence : numpy.ndarray
        (n,) bool, the true concept's presence.
    scores : dict of name -> callable(activation, presence) -> float, optional
        Default: correlation, AUPRC and AUC of :func:`presence_scores`.
    seed : int

    Returns
    -------
    pandas.DataFrame
        One row per score: ``score, true, missing_labels, extra_labels, passes``.
    """
    if scores is None:
        scores = {name: (lambda a, p, name=name: presence_scores(a, p)[name]) for name in ("correlation", "auprc",
                                                                                              "auc")}
    presence = np.asarray(presence, dtype=bool)
    rng = np.random.default_rng(seed)
    positives, negatives = np.flatnonzero(presence), np.flatnonzero(~presence)
    missing = presence.copy()
    missing[rng.choice(positives, size=len(positives) // 2, replace=False)] = False
    extra = presence.copy()
    extra[rng.choice(negatives, size=min(len(positives), len(negatives)), replace=False)] = True
    rows = []
    for name, fn in scores.items():
        true, dropped, added = fn(activation, presence), fn(activation, missing), fn(activation, extra)
        rows.append(dict(score=name, true=true, missing_labels=dropped, extra_labels=added,
                         passes=bool(dropped < true and added < true)))
    return pd.DataFrame(rows)


def against_random_directions(explainer, probes: "ProbeScenes", n: int = 64, seed: int = 0) -> pd.DataFrame:
    """Probe-scene scores of the filters' first words beside those of random directions named alike.

    A name that is as true of a random mix of the layer's channels as of a filter says that the
    word is in the layer, not that the filter is special. Both sides are named without the class
    prior (a random direction has no regions to crop), so ``explainer.prior`` must be None.

    Parameters
    ----------
    explainer : FilterExplainer
        Without a prior; its settings name both the filters and the directions.
    probes : ProbeScenes
        Of the explainer's model and layer.
    n, seed : int
        The :class:`~lavise_nb.coherence.RandomDirections` drawn.

    Returns
    -------
    pandas.DataFrame
        :data:`PROBE_COLUMNS` plus ``rank, unit`` (``"filter"`` or ``"random direction"``, whose
        ``filter`` is the direction's index).
    """
    from .coherence import RandomDirections

    if explainer.prior is not None:
        raise ValueError("against_random_directions names both sides without the class prior: pass an explainer "
                         "with prior=None (FilterExplainer(..., prior=None))")
    directions = RandomDirections(explainer.store, n, seed=seed)
    filters = probes.score(first_words(explainer.explain(), 1)).assign(unit="filter")
    random = probes.score(first_words(explainer.explain_directions(directions), 1), directions=directions)
    return pd.concat([filters, random.assign(unit="random direction")], ignore_index=True)


def coverage(scores: pd.DataFrame, n_filters: int | None = None, units: str = "filters") -> str:
    """``"248 of 320 filters testable (78 %)"``: how many filters (or other ``units``) a score table could test."""
    tested = scores.loc[scores["testable"].astype(bool), "filter"].nunique()
    total = scores["filter"].nunique() if n_filters is None else n_filters
    return f"{tested} of {total} {units} testable ({tested / max(total, 1):.0%})"


def attach_faithfulness(explanations: pd.DataFrame, scores: pd.DataFrame, column: str = "auc") -> pd.DataFrame:
    """The explanation table with a ``faithfulness`` column (``scores[column]`` where testable, else NaN).

    Parameters
    ----------
    explanations : pandas.DataFrame
        :meth:`FilterExplainer.explain` rows.
    scores : pandas.DataFrame
        A :class:`PresenceScore` or :class:`ProbeScenes` table (``filter``, ``word``, ``column``).
    column : str
        The score shown (default the AUC).
    """
    kept = scores.loc[scores["testable"].astype(bool), ["filter", "word", column]].drop_duplicates(["filter", "word"])
    merged = explanations.drop(columns=["faithfulness"], errors="ignore").merge(
        kept.rename(columns={column: "faithfulness"}), on=["filter", "word"], how="left")
    return merged


def attach_dissection(explanations: pd.DataFrame, dissection: pd.DataFrame, scores: pd.DataFrame | None = None,
                      column: str = "auc") -> pd.DataFrame:
    """The explanation table with each filter's closed-vocabulary check beside its own words.

    The check is Network Dissection's label: the annotated concept whose masks best overlap
    the filter's regions over every reference image (:func:`~lavise_nb.evaluate.network_dissection`).
    It can name only annotated concepts, but it rests on all the reference images rather
    than the filter's top ``p``. So where it and the first word differ, the filter deserves a
    second look.

    Parameters
    ----------
    explanations : pandas.DataFrame
        :meth:`FilterExplainer.explain` rows.
    dissection : pandas.DataFrame
        :func:`~lavise_nb.evaluate.network_dissection`'s ``filter, rank, word, iou`` (its rank-1 word is used).
    scores : pandas.DataFrame, optional
        A :class:`ProbeScenes` or :class:`PresenceScore` table holding the dissection words' pairs.
    column : str
        The score of ``scores`` shown.

    Returns
    -------
    pandas.DataFrame
        ``explanations`` with per-filter columns ``dissection_word``, ``dissection_iou``,
        ``dissection_faithfulness`` (NaN where untested) and ``agrees`` (the filter's first
        word is the dissection word).
    """
    best = dissection[dissection["rank"] == 1].drop_duplicates("filter").set_index("filter")
    added = ["dissection_word", "dissection_iou", "dissection_faithfulness", "agrees"]
    table = explanations.drop(columns=added, errors="ignore").copy()
    table["dissection_word"] = best["word"].reindex(table["filter"]).to_numpy()
    table["dissection_iou"] = best["iou"].reindex(table["filter"]).to_numpy(dtype=float)
    table["dissection_faithfulness"] = np.nan
    if scores is not None:
        kept = scores[scores["testable"].astype(bool)].drop_duplicates(["filter", "word"])
        rows = pd.MultiIndex.from_arrays([table["filter"], table["dissection_word"]])
        table["dissection_faithfulness"] = kept.set_index(["filter", "word"])[column].reindex(rows).to_numpy(float)
    first = table[table["rank"] == 1].drop_duplicates("filter").set_index("filter")["word"]
    table["agrees"] = (first.reindex(table["filter"]).to_numpy() == table["dissection_word"].to_numpy())
    return table


class WordVerification:
    """Each filter's best-supported word: the candidate that probe scenes support best.

    The candidates are a filter's first ``top`` words and, given a dissection, its Network
    Dissection label. Each testable candidate is scored on ``selection`` probe scenes and the
    best is kept; the score shown is that word's AUC on ``evaluation`` probe scenes of another
    seed, because the best of several noisy AUCs, read off the scenes that chose it, is
    biased upward. Words the scene generator cannot compose (zero-shot words among them)
    cannot be verified; a filter with no testable candidate gets none.

    Parameters
    ----------
    evaluation : ProbeScenes
        Probe scenes that score the chosen word: the ones behind the ``faithfulness`` column, so
        the two columns compare.
    selection : ProbeScenes, optional
        Probe scenes that choose the word (default ``evaluation.disjoint()``). Their seeds must not
        overlap the evaluation's (base seeds at least :data:`SEED_SPAN` apart).
    top : int
        The filter's own words considered, by rank.

    Examples
    --------
    >>> verified = WordVerification(ProbeScenes(model, "_blocks.15")).verify(
    ...     explanations, network_dissection(store, top_words=1))                 # doctest: +SKIP
    """

    def __init__(self, evaluation: ProbeScenes, selection: ProbeScenes | None = None, top: int = 10):
        selection = evaluation.disjoint() if selection is None else selection
        if abs(selection.seed - evaluation.seed) < SEED_SPAN:
            raise ValueError(f"selection and evaluation probe scenes have base seeds {selection.seed} and "
                             f"{evaluation.seed}, less than {SEED_SPAN} apart, so their scenes may share seeds and the "
                             "chosen words be scored on scenes like those that chose them; leave selection out "
                             f"(it defaults to evaluation.disjoint(), seed {evaluation.seed + SEED_SPAN})")
        self.selection, self.evaluation, self.top = selection, evaluation, check_int("top", top)

    def candidates(self, explanations: pd.DataFrame, dissection: pd.DataFrame | None = None) -> pd.DataFrame:
        """``filter, word, order, source`` rows: the testable candidates of every explained filter, in the order
        ties go (the explainer's ranks, then the label)."""
        own = explanations.dropna(subset=["word"])
        own = own[own["rank"] <= self.top][["filter", "word", "rank"]].assign(source="explainer")
        parts = [own.rename(columns={"rank": "order"})]
        if dissection is not None:
            label = dissection[dissection["rank"] == 1].drop_duplicates("filter")[["filter", "word"]]
            parts.append(label[label["filter"].isin(own["filter"])].assign(source="dissection", order=self.top + 1))
        table = pd.concat(parts, ignore_index=True)
        both = table.groupby(["filter", "word"])["source"].transform("nunique") > 1
        table.loc[both, "source"] = "both"
        table = table.sort_values(["filter", "order"], kind="stable").drop_duplicates(["filter", "word"])
        return table[table["word"].map(self.selection.testable).astype(bool)].reset_index(drop=True)

    def verify(self, explanations: pd.DataFrame, dissection: pd.DataFrame | None = None) -> pd.DataFrame:
        """The explanation table with each filter's best-supported word.

        Parameters
        ----------
        explanations : pandas.DataFrame
            :meth:`FilterExplainer.explain` rows.
        dissection : pandas.DataFrame, optional
            :func:`~lavise_nb.evaluate.network_dissection`'s table (its rank-1 word joins the candidates).

        Returns
        -------
        pandas.DataFrame
            ``explanations`` with per-filter :data:`VERIFIED_COLUMNS`: ``verified_word``,
            ``verified_from`` ("explainer", "dissection" or "both"), ``verified_selection``
            (its AUC on the selection scenes) and ``verified_faithfulness`` (its AUC on the
            evaluation scenes); NaN where no candidate could be tested.
        """
        table = explanations.drop(columns=VERIFIED_COLUMNS, errors="ignore").copy()
        candidates = self.candidates(explanations, dissection)
        if not len(candidates):
            return table.assign(**{column: np.nan for column in VERIFIED_COLUMNS})
        scored = candidates.assign(auc=self.selection.score(candidates[["filter", "word"]])["auc"].to_numpy())
        best = scored.dropna(subset=["auc"]).sort_values(["filter", "auc", "order"], ascending=[True, False, True],
                                                        kind="stable").drop_duplicates("filter")
        best = best.assign(faithfulness=self.evaluation.score(best[["filter", "word"]])["auc"].to_numpy())
        best = best.set_index("filter").reindex(explanations["filter"])
        for column, source in zip(VERIFIED_COLUMNS, ["word", "source", "auc", "faithfulness"]):
            table[column] = best[source].to_numpy()
        return table
