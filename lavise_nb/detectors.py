"""Planted detectors: filters whose concept is known, appended to a real network.

A benchmark for naming needs filters with a ground truth. :func:`fit_probes` fits one
logistic probe per concept on a store's features at map resolution (a cell is positive
when the concept's area-averaged mask covers more than half of it) and draws a few noise
projections; :func:`plant` deep-copies the target model (under ``net.``) and adds a submodule
beside it (``"planted"`` by default) that a forward hook on the probed layer feeds. That
submodule returns the layer's own channels followed by relu(probe) and the noise channels, so a
:class:`~lavise_nb.probe.LayerProbe` (or a store) can read layer ``"planted"`` while the
rest of the network still sees the original output: the logits do not change.
:func:`firing_auc` checks that a planted channel fires on images with its concept, and
:func:`planted_ranks` reads where each planted word lands in an explanation table.

>>> probes = fit_probes(store, ["tiger", "forest"])                  # doctest: +SKIP
>>> planted = plant(model, "_blocks.15", probes)                      # doctest: +SKIP
>>> store = ActivationStore.build(planted.model, planted.layer, data)  # doctest: +SKIP
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn

from .config import check_float, check_int
from .downstream import split_after
from .labels import imagenet_classes
from .probe import TargetModel

__all__ = ["ProbeSettings", "Probes", "PlantedHead", "PlantedNet", "FirstChannels", "PlantedModel", "PLANT_KINDS", "concept_kind",
           "concept_cells", "fit_probes", "plant", "firing_auc", "planted_ranks", "auc_score"]

#: The kinds of planted channel, as in :attr:`Probes.table`.
PLANT_KINDS = ("imagenet", "not-imagenet", "not-object", "noise")
_NOISE_CELLS = 1 << 20  # most cells the noise channels' offsets and scales are measured on


@dataclass(frozen=True)
class ProbeSettings:
    """How :func:`fit_probes` fits its probes and draws its noise channels.

    Parameters
    ----------
    coverage : float
        A cell is positive when the concept's area-averaged mask covers more than this share of it.
    holdout : float
        Share of images held out (seeded) to measure each probe's cell AUC.
    seed : int
        Held-out images, initialisation and noise projections.
    steps : int
        Full-batch Adam steps of the logistic regression.
    lr, weight_decay : float
        Adam's learning rate and the L2 penalty on the (standardised) weights.
    n_noise : int
        Noise channels: relu of random 1x1 projections, scaled like the probes.
    """

    coverage: float = 0.5
    holdout: float = 0.2
    seed: int = 0
    steps: int = 300
    lr: float = 0.05
    weight_decay: float = 1e-3
    n_noise: int = 4

    def __post_init__(self):
        check_float("coverage", self.coverage, 0, 1)
        check_float("holdout", self.holdout, 0, 0.9, open_low=True)
        check_int("steps", self.steps)
        check_float("lr", self.lr, 0, open_low=True)
        check_float("weight_decay", self.weight_decay, 0)
        check_int("n_noise", self.n_noise, 0)


@dataclass
class Probes:
    """Fitted probes and noise projections of one layer (:func:`fit_probes`).

    Attributes
    ----------
    weight : torch.Tensor
        (K + M, C) float32: K probes, then M noise projections, on the raw features.
    bias : torch.Tensor
        (K + M,) float32. Channel j of the planted block is relu(weight[j] . x + bias[j]).
    table : pandas.DataFrame
        One row per channel, in order: ``concept`` (None for noise), ``kind`` (one of
        :data:`PLANT_KINDS`), ``auc`` (held-out cell AUC; NaN for noise or when the held-out
        images have no positive cell), ``positive_cells`` (training cells above ``coverage``)
        and ``active_share`` (share of training cells where the channel is > 0).
    test_images : numpy.ndarray
        (n_test,) int64, the held-out images (never used to fit).
    settings : ProbeSettings
    layer : str
        The store layer the probes read.
    """

    weight: torch.Tensor
    bias: torch.Tensor
    table: pd.DataFrame
    test_images: np.ndarray
    settings: ProbeSettings
    layer: str

    @property
    def concepts(self) -> list:
        """The planted concepts, in channel order (noise excluded)."""
        return [c for c in self.table["concept"] if isinstance(c, str)]

    def save(self, path: str | Path) -> Path:
        """Write the probes (``weights_only``-loadable), so a planted model is rebuilt bit for bit."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"weight": self.weight, "bias": self.bias, "table": self.table.to_dict(orient="list"),
                    "test_images": torch.from_numpy(self.test_images), "layer": self.layer,
                    "settings": dataclasses.asdict(self.settings)}, path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "Probes":
        """The inverse of :meth:`save`."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        table = pd.DataFrame(payload["table"]).astype({"concept": object})
        table["concept"] = [None if not isinstance(c, str) else c for c in table["concept"]]
        return cls(payload["weight"], payload["bias"], table, payload["test_images"].numpy(),
                   ProbeSettings(**payload["settings"]), payload["layer"])


def auc_score(scores, labels) -> float:
    """ROC AUC of ``scores`` (n,) for binary ``labels`` (n,), ties counted half; NaN when one class is missing."""
    labels = np.asarray(labels, dtype=bool).reshape(-1)
    if labels.all() or not labels.any():
        return float("nan")
    return float(roc_auc_score(labels, np.asarray(scores, dtype=np.float64).reshape(-1)))


def concept_kind(concept: str, store) -> str:
    """``"not-object"`` for a store's background concepts, ``"imagenet"`` when the name is exactly one of
    ImageNet-1k's class names (lower case), else ``"not-imagenet"``."""
    if concept in set(store.stuff):
        return "not-object"
    return "imagenet" if concept.lower() in set(imagenet_classes()) else "not-imagenet"


def concept_cells(store, concepts, images=None) -> torch.Tensor:
    """Each concept's coverage of each map cell: the area-averaged masks of its objects, summed and clipped at 1.

    Parameters
    ----------
    store : ActivationStore
    concepts : list of str
        K concepts with masks in ``store.objects``.
    images : array-like of int, optional
        N image rows (default: every image of the store).

    Returns
    -------
    torch.Tensor
        (N, K, h, w) float32 in [0, 1].
    """
    images = np.arange(store.shape[0]) if images is None else np.asarray(images, dtype=np.int64)
    unknown = sorted(set(concepts) - set(store.concepts))
    if unknown:
        raise ValueError(f"concepts without masks in the store: {unknown}")
    h, w = store.shape[2:]
    out = torch.zeros(len(images), len(concepts), h, w)
    row_of = pd.Series(np.arange(len(images)), index=images)
    objects = store.objects[store.objects["image"].isin(images) & store.objects["concept"].isin(concepts)]
    if len(objects):
        masks = store.object_masks_small(objects["object"].to_numpy())
        rows = torch.from_numpy(np.array(row_of.loc[objects["image"].to_numpy()], dtype=np.int64))
        column = {c: k for k, c in enumerate(concepts)}
        cols = torch.tensor([column[c] for c in objects["concept"]], dtype=torch.long)
        out.index_put_((rows, cols), masks, accumulate=True)
    return out.clamp_(max=1.0)


def _cells(features: torch.Tensor) -> torch.Tensor:
    """(N, C, h, w) -> (N * h * w, C)."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


def _logistic(x: torch.Tensor, y: torch.Tensor, settings: ProbeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """K independent class-balanced logistic regressions on standardised x (n, C), y (n, K); weights on raw x."""
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    z = (x - mean) / std
    positives = y.sum(0)
    pos_weight = ((len(y) - positives) / positives.clamp_min(1)).clamp_min(1e-6)
    generator = torch.Generator().manual_seed(settings.seed)
    weight = (0.01 * torch.randn(y.shape[1], x.shape[1], generator=generator)).requires_grad_()
    bias = torch.zeros(y.shape[1], requires_grad=True)
    optimiser = torch.optim.Adam([weight, bias], lr=settings.lr)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small steps: threads only add synchronisation; one thread is reproducible
    try:
        with torch.enable_grad():
            for _ in range(settings.steps):
                logits = z @ weight.T + bias
                loss = F.binary_cross_entropy_with_logits(logits, y, pos_weight=pos_weight, reduction="none")
                loss = (loss / (1 + pos_weight)).mean(0).sum() + settings.weight_decay * weight.square().sum()
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    weight, bias = weight.detach() / std, bias.detach()
    return weight, bias - weight @ mean


def _noise(x: torch.Tensor, probe_out: torch.Tensor, settings: ProbeSettings) -> tuple[torch.Tensor, torch.Tensor]:
    """M random projections of standardised x (n, C), offset to fire as often as the median probe and scaled
    so that their 99th percentile when firing matches the probes' median one (torch's lower median)."""
    generator = torch.Generator().manual_seed(settings.seed + 1)
    mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
    directions = torch.randn(settings.n_noise, x.shape[1], generator=generator)
    directions = directions / directions.norm(dim=1, keepdim=True) / std  # unit directions in standardised units
    projected = (x - mean) @ directions.T
    if len(x) > _NOISE_CELLS:  # torch.quantile takes at most 16M values: the statistics come from a seeded sample
        rows = torch.randperm(len(x), generator=generator)[:_NOISE_CELLS]
        projected, probe_out = projected[rows], probe_out[rows]
    if probe_out.shape[1]:
        active = (probe_out > 0).float().mean(0)
        share = float(active.median().clamp(0.005, 0.5))  # torch's median: the lower of the two middle values
        tops = [torch.quantile(col[col > 0], 0.99) for col in probe_out.T if (col > 0).any()]
        target = float(torch.stack(tops).median()) if tops else 1.0
    else:
        share, target = 0.05, 1.0
    offset = -torch.quantile(projected, 1 - share, dim=0)
    fired = (projected + offset).clamp_min(0)
    scale = torch.tensor([target / float(torch.quantile(col[col > 0], 0.99)) if (col > 0).any() else 1.0
                          for col in fired.T])
    weight = directions * scale[:, None]
    return weight, (offset - mean @ directions.T) * scale


def fit_probes(store, concepts, settings: ProbeSettings | None = None, *, kinds: dict | None = None) -> Probes:
    """Fit one logistic probe per concept on a store's features, cell by cell, and draw noise channels.

    Parameters
    ----------
    store : ActivationStore
        (N, C, h, w) activations with object masks; every concept needs masks in it.
    concepts : list of str
        The K concepts to plant, in channel order.
    settings : ProbeSettings, optional
    kinds : dict, optional
        Concept -> kind, overriding :func:`concept_kind`.

    Returns
    -------
    Probes
        Weights (K + M, C) on the raw features; ``table`` holds each probe's held-out cell AUC
        (about 0.97-1.00 for object concepts on StampScenes at ``_blocks.15``).

    Notes
    -----
    Every valid image's cells are read into memory: (N * h * w, C) float32.
    """
    settings = ProbeSettings() if settings is None else settings
    concepts = list(concepts)
    if len(set(concepts)) != len(concepts):
        raise ValueError(f"concepts must be distinct, not {concepts}")
    images = np.flatnonzero(store.valid)
    rng = np.random.default_rng(settings.seed)
    test = np.sort(rng.choice(images, size=max(1, int(round(settings.holdout * len(images)))), replace=False))
    train = np.setdiff1d(images, test)
    x_train, x_test = _cells(store.features(train)), _cells(store.features(test))
    y_train = (_cells(concept_cells(store, concepts, train)) > settings.coverage).float()
    y_test = _cells(concept_cells(store, concepts, test)) > settings.coverage
    empty = [c for c, n in zip(concepts, y_train.sum(0).tolist()) if n == 0]
    if empty:
        raise ValueError(f"no training cell is covered more than {settings.coverage} by {empty}: pick concepts with "
                         "larger or more masks")
    weight, bias = _logistic(x_train, y_train, settings) if concepts else (torch.zeros(0, x_train.shape[1]),
                                                                           torch.zeros(0))
    probe_out = (x_train @ weight.T + bias).clamp_min(0)
    test_logits = x_test @ weight.T + bias
    kinds = {c: (kinds or {}).get(c) or concept_kind(c, store) for c in concepts}
    rows = [dict(concept=c, kind=kinds[c], auc=auc_score(test_logits[:, k], y_test[:, k]),
                 positive_cells=int(y_train[:, k].sum()), active_share=float((probe_out[:, k] > 0).float().mean()))
            for k, c in enumerate(concepts)]
    if settings.n_noise:
        noise_weight, noise_bias = _noise(x_train, probe_out, settings)
        noise_out = x_train @ noise_weight.T + noise_bias
        rows += [dict(concept=None, kind="noise", auc=float("nan"), positive_cells=0,
                      active_share=float((noise_out[:, m] > 0).float().mean())) for m in range(settings.n_noise)]
        weight, bias = torch.cat([weight, noise_weight]), torch.cat([bias, noise_bias])
    table = pd.DataFrame(rows, columns=["concept", "kind", "auc", "positive_cells", "active_share"])
    return Probes(weight.float().contiguous(), bias.float().contiguous(), table, test, settings, store.layer)


class PlantedHead(nn.Module):
    """The planted block: a layer's output followed by its planted channels.

    Parameters
    ----------
    weight : torch.Tensor
        (P, C) 1x1 projections (:attr:`Probes.weight`), kept as a buffer (part of the model's fingerprint).
    bias : torch.Tensor
        (P,).
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.register_buffer("weight", weight.detach().float().clone())
        self.register_buffer("bias", bias.detach().float().clone())

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, C + P, h, w): the features, then relu(weight . features + bias) per channel."""
        planted = torch.einsum("bchw,pc->bphw", features, self.weight.to(features.dtype))
        planted = (planted + self.bias.to(features.dtype)[None, :, None, None]).clamp_min(0)
        return torch.cat([features, planted], dim=1)


class FirstChannels(nn.Module):
    """(B, C + P, h, w) -> (B, C, h, w): the layer's own channels, without the planted ones."""

    def __init__(self, channels: int):
        super().__init__()
        self.channels = channels

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features[:, :self.channels]


class _Feed:
    """Forward hook that feeds a layer's output to the planted head and leaves the output as it is.

    A callable object rather than a closure, so a deep copy of the module feeds the copied head.
    """

    def __init__(self, head: nn.Module):
        self.head = head

    def __call__(self, _module, _inputs, output):
        self.head(output)
        return None


class PlantedNet(nn.Module):
    """A network with a planted head: ``net`` runs as before, and the head is fed by a hook inside it.

    The head is a sibling of ``net`` (not a child of it), so a container network such as
    ``nn.Sequential``, whose forward runs every child, never calls it on its own.

    Parameters
    ----------
    net : torch.nn.Module
        The network (layers keep their names under ``net.``).
    head : PlantedHead
    layer : str
        ``net``'s layer whose output feeds the head.
    name : str
        The head's name.
    """

    def __init__(self, net: nn.Module, head: nn.Module, layer: str, name: str = "planted"):
        super().__init__()
        if name == "net":
            raise ValueError("the head cannot be called 'net'")
        self.net = net
        self.add_module(name, head)
        net.get_submodule(layer).register_forward_hook(_Feed(head))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> the network's own output (its logits)."""
        return self.net(images)


@dataclass
class PlantedModel:
    """A target model with planted channels (:func:`plant`).

    Attributes
    ----------
    model : TargetModel
        A deep copy of the original with the planted head; its logits equal the original's.
    layer : str
        The head's name: build the store (or a LayerProbe) on this layer, (B, C + P, h, w).
    source_layer : str
        The planted model's name of the layer whose output feeds the head (``"net." + layer``).
    channels : pandas.DataFrame
        :attr:`Probes.table` with a first column ``channel``, the index in the planted layer (C + j).
    """

    model: TargetModel
    layer: str
    source_layer: str
    channels: pd.DataFrame

    @property
    def planted_channels(self) -> list:
        """Channel indices of the planted concepts and the noise channels, in order."""
        return self.channels["channel"].tolist()


def plant(model: TargetModel, layer: str, probes: Probes, *, name: str = "planted") -> PlantedModel:
    """A copy of ``model`` whose ``layer`` also feeds a submodule ``name`` returning its channels plus the probes'.

    Parameters
    ----------
    model : TargetModel
        Not changed: its module is deep-copied.
    layer : str
        The layer the probes were fitted on (its output has C channels).
    probes : Probes
    name : str
        The head's name (a child of the new root, :class:`PlantedNet`).

    Returns
    -------
    PlantedModel
        Its model's root is a :class:`PlantedNet`: the copy sits under ``net.`` (``"_blocks.15"``
        becomes ``"net._blocks.15"``) and the head at ``name``.

    Notes
    -----
    The head is fed by a forward hook on ``layer`` that returns None, so every later layer
    still sees the original output. The hook is part of the planted model for its lifetime
    (it is its architecture, not a probe); the original model gets no hook.
    """
    if probes.layer != layer:
        raise ValueError(f"these probes were fitted on layer {probes.layer!r}, not {layer!r}")
    width = probes.weight.shape[1]
    module = PlantedNet(copy.deepcopy(model.module), PlantedHead(probes.weight, probes.bias), layer, name)
    planted = TargetModel(module, model.preprocess, f"{model.name}-planted").to(model.device)
    shapes = planted.layers().set_index("layer")
    if int(shapes.loc[f"net.{layer}", "channels"]) != width:
        raise ValueError(f"the probes read {width} channels but {layer!r} has {shapes.loc[f'net.{layer}', 'channels']}")
    planted.set_downstream(name, nn.Sequential(FirstChannels(width), split_after(module.net, layer)))
    channels = probes.table.copy()
    channels.insert(0, "channel", width + np.arange(len(channels)))
    return PlantedModel(planted, name, f"net.{layer}", channels)


def firing_auc(store, channels: pd.DataFrame, images=None) -> pd.DataFrame:
    """Does each planted channel fire on the images that hold its concept?

    Parameters
    ----------
    store : ActivationStore
        The planted layer's store (its images carry the concepts' masks).
    channels : pandas.DataFrame
        :attr:`PlantedModel.channels` (columns ``channel``, ``concept``).
    images : array-like of int, optional
        The images to score (default: every valid image); pass :attr:`Probes.test_images` for held-out ones.

    Returns
    -------
    pandas.DataFrame
        One row per concept channel: ``channel, concept, image_auc`` (AUC of the channel's per-image max
        for the concept's presence), ``mean_with``, ``mean_without`` (mean per-image max), ``n_with``.
    """
    images = np.flatnonzero(store.valid) if images is None else np.asarray(images, dtype=np.int64)
    maxima = np.asarray(store.maxima[images], dtype=np.float32)
    rows = []
    for channel, concept in zip(channels["channel"], channels["concept"]):
        if not isinstance(concept, str):
            continue
        holders = store.objects.loc[store.objects["concept"] == concept, "image"].unique()
        present = np.isin(images, holders)
        score = maxima[:, int(channel)]
        rows.append(dict(channel=int(channel), concept=concept, image_auc=auc_score(score, present),
                         mean_with=float(score[present].mean()) if present.any() else float("nan"),
                         mean_without=float(score[~present].mean()) if (~present).any() else float("nan"),
                         n_with=int(present.sum())))
    return pd.DataFrame(rows, columns=["channel", "concept", "image_auc", "mean_with", "mean_without", "n_with"])


def planted_ranks(explained, channels: pd.DataFrame, n_words: int = 5) -> pd.DataFrame:
    """Where each planted channel's own word lands in its explanation.

    Parameters
    ----------
    explained : pandas.DataFrame or FilterExplainer
        :meth:`FilterExplainer.explain` rows (``filter, rank, word, votes``; a ``support`` column is used
        when present), or an explainer, explained here on the planted channels. Ranks deeper than the
        table's ``top_words`` are unknown (give it e.g. ``top_words=100``).
    channels : pandas.DataFrame
        :attr:`PlantedModel.channels`.
    n_words : int
        First words listed per channel.

    Returns
    -------
    pandas.DataFrame
        One row per channel: ``channel, concept, kind, auc``, ``rank`` (float; NaN when the word is not
        among the listed words or the channel is noise), ``listed`` (words listed for the channel),
        ``words`` (the first ``n_words``, comma-separated), ``top_word``, ``top_share`` (the top word's
        ``support``, else its votes / the votes of every listed word of the channel), ``top_is_planted``
        (the top word is one of the planted concepts), and the channel's ``coherence`` and ``null_share``
        (NaN when the table has none).
    """
    if hasattr(explained, "explain"):
        explained = explained.explain(filters=channels["channel"].to_numpy())
    planted_words = {c for c in channels["concept"] if isinstance(c, str)}
    rows = []
    for row in channels.itertuples(index=False):
        words = explained[(explained["filter"] == row.channel) & explained["word"].notna()].sort_values("rank")
        listed = words["word"].tolist()
        rank = float(words["rank"].iloc[listed.index(row.concept)]) if row.concept in listed else float("nan")
        if len(words) and "support" in words:
            share = float(words["support"].iloc[0])
        else:
            total = float(words["votes"].sum()) if len(words) else 0.0
            share = float(words["votes"].iloc[0]) / total if total > 0 else float("nan")
        top = listed[0] if listed else None
        agreement = {name: float(words[name].iloc[0]) if len(words) and name in words else float("nan")
                     for name in ("coherence", "null_share")}
        rows.append(dict(channel=int(row.channel), concept=row.concept, kind=row.kind, auc=row.auc, rank=rank,
                         listed=len(listed), words=", ".join(listed[:n_words]), top_word=top, top_share=share,
                         top_is_planted=top in planted_words, **agreement))
    return pd.DataFrame(rows, columns=["channel", "concept", "kind", "auc", "rank", "listed", "words", "top_word",
                                       "top_share", "top_is_planted", "coherence", "null_share"])
