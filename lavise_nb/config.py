"""Settings objects: one frozen dataclass per stage, changed with :func:`dataclasses.replace`.

- :class:`TrainingConfig`: how the explainer head is trained (saved with the mapper);
- :class:`ExplainSettings`: how filters are named; taken whole by
  :class:`~lavise_nb.explain.FilterExplainer`, :class:`~lavise_nb.calibration.GammaCalibration`
  and :class:`~lavise_nb.evaluate.MethodComparison`, so a gamma is tuned under the
  settings it is used with;
- :class:`CalibrationSettings`: how the calibrated-stacking gamma is searched;
- :class:`CropSettings`: how a region becomes a crop for the target model.

Every value is checked when the object is made; a bad one raises a ``ValueError``
that names the setting and its valid range.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

__all__ = ["TrainingConfig", "ExplainSettings", "CalibrationSettings", "METHODS", "ATTENTION_FORMS", "VOTING",
           "RANKINGS", "POOLING", "CropSettings", "check_int", "check_float", "check_choice"]

METHODS = ("attention", "activation_masking", "image_masking", "original")
ATTENTION_FORMS = ("soft_mask", "paper", "code")
VOTING = ("softmax", "top_s")
RANKINGS = ("votes", "lift")
POOLING = ("mass", "mean")


def check_int(name: str, value, low: int = 1, high: int | None = None) -> int:
    """``value`` as an int in [low, high], else a ValueError naming ``name`` and the range."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise ValueError(f"{name} must be an integer, not {value!r}")
    value = int(value)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, not {value}")
    return value


def check_float(name: str, value, low: float | None = None, high: float | None = None, *,
                open_low: bool = False) -> float:
    """``value`` as a float within the bounds, else a ValueError naming ``name`` and the range."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, not {value!r}") from None
    too_low = low is not None and (value <= low if open_low else value < low)
    if too_low or (high is not None and value > high) or value != value:
        lo = "" if low is None else f"{'>' if open_low else '>='} {low}"
        hi = "" if high is None else f"<= {high}"
        raise ValueError(f"{name} must be {' and '.join(x for x in (lo, hi) if x)}, not {value}")
    return value


def check_choice(name: str, value, choices) -> None:
    """A ValueError naming ``name`` and the valid choices when ``value`` is not one of them."""
    if value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, not {value!r}")


@dataclass(frozen=True)
class CropSettings:
    """How a region becomes a crop for the target model (class prior and region weak labels).

    Parameters
    ----------
    context : float
        Margin added around the region's bounding box, as a share of its side.
    min_side : int
        Boxes grow to at least this many pixels a side.
    batch_size : int
        Crops classified per forward pass.
    """

    context: float = 0.15
    min_side: int = 16
    batch_size: int = 64

    def __post_init__(self):
        check_float("context", self.context, 0)
        check_int("min_side", self.min_side)
        check_int("batch_size", self.batch_size)


@dataclass(frozen=True)
class TrainingConfig:
    """Every setting of a training run of the explainer head (saved with the mapper).

    Parameters
    ----------
    seen_fraction : float
        Share of annotated concepts used for training, drawn without replacement.
    seed : int
        Concept split, validation split, initialisation and batch order.
    val_fraction : float
        Share of images held out for validation (early stopping).
    pooling : {"mass", "mean"}
        How a mask pools the feature map (see :func:`lavise_nb.mapper.pool_features`).
    dropout, margin, lr : float
    batch_size, max_epochs, patience, plateau_patience : int
        ``max_epochs`` is a ceiling: early stopping on the validation loss (``patience``
        epochs without improvement) ends training. The defaults (batches of 1024 at
        lr 5e-3) were chosen by measurement on the embedded default: a lower best
        validation loss than the paper-like 256 at 1e-3 (200.2 vs 211.0, seed 0; 195.5 vs
        207.7 at lr 1e-2, seed 1) in about half the time (90 epochs in 33 s vs 78-124 in 56-68 s).
    seen : tuple of str, optional
        An explicit seen set (overrides ``seen_fraction``).
    weak_weight : float
        Loss weight of weak-label pairs (``ExplainerTrainer(weak_labels=...)``).
    """

    seen_fraction: float = 0.7
    seed: int = 0
    val_fraction: float = 0.2
    pooling: str = "mass"
    dropout: float = 0.5
    margin: float = 1.0
    lr: float = 5e-3
    batch_size: int = 1024
    max_epochs: int = 300
    patience: int = 8
    plateau_patience: int = 3
    seen: tuple | None = None
    weak_weight: float = 0.5

    def __post_init__(self):
        check_float("seen_fraction", self.seen_fraction, 0, 1, open_low=True)
        check_float("val_fraction", self.val_fraction, 0, 0.9)
        check_choice("pooling", self.pooling, POOLING)
        check_float("dropout", self.dropout, 0, 0.99)
        check_float("margin", self.margin, 0)
        check_float("lr", self.lr, 0, open_low=True)
        check_float("weak_weight", self.weak_weight, 0)
        for name in ("batch_size", "max_epochs", "patience", "plateau_patience"):
            check_int(name, getattr(self, name), 1 if name != "plateau_patience" else 0)
        if self.seen is not None:
            object.__setattr__(self, "seen", tuple(sorted(self.seen)))

    def to_dict(self) -> dict:
        """Plain values (lists for tuples), as saved in a mapper checkpoint."""
        out = dataclasses.asdict(self)
        out["seen"] = None if self.seen is None else list(self.seen)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "TrainingConfig":
        """The inverse of :meth:`to_dict`; unknown keys (from other versions) are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})


@dataclass(frozen=True)
class ExplainSettings:
    """How a layer's filters are named; one object for explaining, calibration and evaluation.

    Parameters
    ----------
    method : {"attention", "activation_masking", "image_masking", "original"}
        ``"attention"`` is LaViSE's filter attention. ``"activation_masking"`` pools
        the maps under 1[A_u > T_u]; ``"image_masking"`` zeroes image pixels outside
        the filter's region, runs the model again (needs ``model`` and ``dataset``)
        and pools the new maps under the kept region; ``"original"`` pools the whole map.
    attention : {"soft_mask", "paper", "code"}
        ``"paper"``: F_k^att = cos(F_u, F_k) F_k, then GAP (the paper's equation).
        ``"code"``: e_k = mean_ij(F_k * F_u / ||F_u||) (the authors' released code).
        ``"soft_mask"`` (default): e_k = sum_ij(F_k * relu(F_u)) / sum_ij(relu(F_u)),
        normalised like the mapper's mask pooling, so attention features follow the
        training distribution.
    p : int
        Top images per filter (by max activation).
    s : int
        Words each image votes for with ``voting="top_s"``.
    voting : {"softmax", "top_s"}
        ``"top_s"`` (the paper): one activation-weighted vote for each of an image's
        ``s`` best words. ``"softmax"``: a share of the vote for each of its
        ``image_k`` best words, softmax(score / ``temperature``).
    temperature : float
        Softmax temperature, in cosine units (> 0).
    image_k : int
        Words kept per (filter, image); raised to ``s`` when smaller.
    ranking : {"votes", "lift"}
        How a filter's words are ordered. ``"votes"``: by their votes. ``"lift"``: by
        (share + ``lift_floor``) / (base + ``lift_floor``), the word's share of the
        filter's votes over its mean share among the layer's filters with top images,
        so words every filter votes for (hubs, frequent backgrounds) sink.
    lift_floor : float
        Added to both shares of ``"lift"`` (> 0), so a word with a tiny base share
        does not win on a tiny share of its own.
    hubness : {None, "csls"}
        ``"csls"``: rank by 2 cos(v, w) - r_w, r_w the word's mean cosine to its
        ``hubness_k`` nearest explanation vectors (demotes hub words).
    hubness_k : int
    top_words : int
        Words returned per filter.
    calibrated : bool or float
        True: subtract the mapper's calibrated gammas from seen-concept scores; a
        float: that offset; False: raw cosines.
    batch_pairs : int
        (filter, image) pairs pooled per step (memory, not results).
    null_directions : int
        Random directions of the layer explained as filters, the null of each filter's
        ``coherence`` (:mod:`lavise_nb.coherence`); 0: no null (``null_share`` NaN).
        Costs one pass over the store's activations per explainer.
    """

    method: str = "attention"
    attention: str = "soft_mask"
    p: int = 25
    s: int = 5
    voting: str = "softmax"
    temperature: float = 0.1
    image_k: int = 20
    ranking: str = "votes"
    lift_floor: float = 0.01
    hubness: str | None = None
    hubness_k: int = 10
    top_words: int = 10
    calibrated: bool | float = True
    batch_pairs: int = 1024
    null_directions: int = 64

    def __post_init__(self):
        check_choice("method", self.method, METHODS)
        check_choice("attention", self.attention, ATTENTION_FORMS)
        check_choice("voting", self.voting, VOTING)
        check_choice("ranking", self.ranking, RANKINGS)
        check_float("lift_floor", self.lift_floor, 0, open_low=True)
        check_choice("hubness", self.hubness, (None, "csls"))
        for name in ("p", "s", "image_k", "hubness_k", "top_words", "batch_pairs"):
            check_int(name, getattr(self, name))
        check_float("temperature", self.temperature, 0, open_low=True)
        check_int("null_directions", self.null_directions, 0)
        if not isinstance(self.calibrated, bool):
            check_float("calibrated", self.calibrated)
        object.__setattr__(self, "image_k", max(self.s, self.image_k))

    def scoring(self) -> dict:
        """The settings a calibrated gamma depends on, as a plain dict (only those in effect:
        ``s`` for top-s voting, ``temperature`` and ``image_k`` for softmax voting, ``attention`` for the
        attention method, ``hubness_k`` for CSLS, ``lift_floor`` for lift ranking)."""
        names = ["method", "p", "voting", "ranking", "hubness"]
        names += ["s"] if self.voting == "top_s" else ["temperature", "image_k"]
        names += ["attention"] if self.method == "attention" else []
        names += ["hubness_k"] if self.hubness is not None else []
        names += ["lift_floor"] if self.ranking == "lift" else []
        return {name: getattr(self, name) for name in names}

    @property
    def name(self) -> str:
        """``"attention/soft_mask"``-style method name, as in recall tables."""
        return self.method if self.method != "attention" else f"attention/{self.attention}"


@dataclass(frozen=True)
class CalibrationSettings:
    """How :class:`~lavise_nb.calibration.GammaCalibration` searches its gamma.

    Parameters
    ----------
    level : {"filter", "mask"}
        ``"filter"``: tune ``gamma`` on H of recall@k of each top image's words and
        ``filter_gamma`` on the filter's vote-ranked words; ``"mask"``: H of top-k
        accuracy of masks.
    gammas : tuple of float, optional
        Candidates (default 0 to 0.5 in steps of 0.01).
    inner_fraction : float
        Share of the seen concepts kept as pseudo-seen.
    k : int
        Recall@k (filter level) or top-k accuracy (mask level) used for H.
    seed : int
        The inner split and the inner head's training.
    inner_epochs : int, optional
        A ceiling on the inner head's epochs (None: the mapper's ``max_epochs``, so the inner
        head is trained exactly like the mapper, to early stopping). Cheaper, not the same: on
        the embedded default, 60 took 16 s instead of 41-49 s (159-173 epochs) and chose an
        image-word gamma 0.02-0.04 lower and a filter-word gamma within the same spread
        (0.02-0.04 against 0.02-0.06, three training seeds).
    """

    level: str = "filter"
    gammas: tuple | None = None
    inner_fraction: float = 0.7
    k: int = 20
    seed: int = 0
    inner_epochs: int | None = None

    def __post_init__(self):
        check_choice("level", self.level, ("filter", "mask"))
        check_float("inner_fraction", self.inner_fraction, 0, 1, open_low=True)
        check_int("k", self.k)
        if self.inner_epochs is not None:
            check_int("inner_epochs", self.inner_epochs)
        gammas = tuple(round(0.01 * i, 4) for i in range(51)) if self.gammas is None else \
            tuple(float(g) for g in self.gammas)
        if not gammas:
            raise ValueError("gammas must hold at least one candidate offset")
        object.__setattr__(self, "gammas", gammas)


CORRECTIONS = ("fdr_bh", "fdr_by", "fdr_tsbh", "fdr_tsbky", "fdr_gbs", "bonferroni", "holm", "holm-sidak", "sidak",
               "simes-hochberg", "hommel")
__all__ += ["BiasSettings", "CORRECTIONS"]


@dataclass(frozen=True)
class BiasSettings:
    """The statistics of :class:`~lavise_nb.bias.GroupComparison`.

    Parameters
    ----------
    min_group_size : int
        Groups with fewer valid images raise a ``ValueError`` (>= 1).
    alpha : float
        Significance level (of the corrected q-values) and 1 - confidence of the
        Wilson intervals, in (0, 1).
    correction : str or None
        A :func:`statsmodels.stats.multitest.multipletests` method (one of
        ``CORRECTIONS``; default ``"fdr_bh"``, Benjamini-Hochberg across filters);
        ``None`` or ``"none"`` uses the raw p-values (stored as ``None``).
    n_words : int
        Words per filter in ``top_words`` (>= 1).
    imbalance_warning : float
        Warn when the largest group is this many times the smallest (>= 1).
    """

    min_group_size: int = 10
    alpha: float = 0.05
    correction: str | None = "fdr_bh"
    n_words: int = 3
    imbalance_warning: float = 10.0

    def __post_init__(self):
        object.__setattr__(self, "min_group_size", check_int("min_group_size", self.min_group_size))
        alpha = check_float("alpha", self.alpha, 0, open_low=True)
        if alpha >= 1:
            raise ValueError(f"alpha must be > 0 and < 1, not {alpha}")
        object.__setattr__(self, "alpha", alpha)
        correction = None if self.correction == "none" else self.correction
        check_choice("correction", correction, (*CORRECTIONS, None))
        object.__setattr__(self, "correction", correction)
        object.__setattr__(self, "n_words", check_int("n_words", self.n_words))
        object.__setattr__(self, "imbalance_warning", check_float("imbalance_warning", self.imbalance_warning, 1))
