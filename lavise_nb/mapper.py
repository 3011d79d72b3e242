"""The latent visual-semantic mapping: a small head from pooled CNN features to word vectors.

:class:`ExplainerTrainer` trains it from an activation store (no CNN forward pass per
epoch): every distinct mask of an image becomes one pooled feature vector, computed once
(:mod:`lavise_nb.pooling`; memory-mapped from a cached file when the pairs exceed
:func:`~lavise_nb.pooling.memory_budget`, and trained from in minibatches).
The result, a :class:`Mapper`, carries its concept split, the word-space id, the
layer and the model fingerprint, and loads with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ._utils.cache import cache_dir
from ._utils.progress import progress
from .config import TrainingConfig
from .pooling import (POOLED_BUDGET, image_means, mask_features, mask_table, masked_mean, memory_budget,
                      pool_features, pooled_file, pooled_masks)
from .probe import resolve_device
from .words.space import content_id

if TYPE_CHECKING:
    from .calibration import Calibration

__all__ = ["ExplainerHead", "Mapper", "ExplainerTrainer", "TrainingConfig", "pool_features", "mask_table",
           "pooled_masks", "pooled_file", "mask_features", "memory_budget", "image_means", "masked_mean",
           "ranking_loss", "plain", "POOLED_BUDGET", "EVAL_ROWS"]
EVAL_ROWS = 8192            # rows the head embeds at once when it scores validation and zero-shot masks


class _Dropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask NumPy draws (3x faster than torch's here), seeded from torch's generator."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0 or x.device.type != "cpu":
            return super().forward(x)
        seed = int(torch.randint(0, 2 ** 62, (1,)))
        keep = np.random.default_rng(seed).random(x.shape, dtype=np.float32) >= self.p
        return x * torch.from_numpy(keep).to(x.dtype) * (1.0 / (1.0 - self.p))


class ExplainerHead(nn.Module):
    """The paper's head: BN-Dropout-Linear(d, d)-ReLU-BN-Dropout-Linear(d, dim).

    Parameters
    ----------
    channels : int
        d, the layer's number of filters (measured from the store).
    dim : int
        Word-space dimension.
    dropout : float
    """

    def __init__(self, channels: int, dim: int, dropout: float = TrainingConfig.dropout):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(channels), _Dropout(dropout), nn.Linear(channels, channels), nn.ReLU(),
            nn.BatchNorm1d(channels), _Dropout(dropout), nn.Linear(channels, dim),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled features -> (B, dim) unit-norm word-space vectors."""
        return F.normalize(self.net(pooled), dim=-1)


@dataclass
class Mapper:
    """A trained explainer head with everything needed to use it safely.

    Attributes
    ----------
    head : ExplainerHead
    concepts : list of str
        All annotated concepts of the reference store.
    seen, unseen : list of str
        The concept split (training used only ``seen``).
    space_id, layer : str
        Word space and layer the head belongs to.
    model_fingerprint : str
        The target model's fingerprint (:attr:`TargetModel.fingerprint`).
    config : TrainingConfig
    history : pandas.DataFrame
        One row per epoch (losses, seen and unseen top-1/top-5, learning rate).
    calibration : Calibration or None
        The calibrated-stacking record the explanations use
        (:meth:`GammaCalibration.fit`, attached with :meth:`calibrated`); None: gamma 0.
    """

    head: ExplainerHead
    concepts: list
    seen: list
    unseen: list
    space_id: str
    layer: str
    model_fingerprint: str
    config: TrainingConfig
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    calibration: Calibration | None = None

    def calibrated(self, record: Calibration | None) -> "Mapper":
        """A copy of this mapper that uses ``record`` (None: uncalibrated); the head is shared."""
        if record is not None and record.layer not in (None, self.layer):
            raise ValueError(f"this calibration was tuned for layer {record.layer!r}, not {self.layer!r}")
        return dataclasses.replace(self, calibration=record)

    def embed(self, pooled: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
        """(B, d) pooled features -> (B, dim) unit vectors, in eval mode."""
        self.head.eval()
        device = next(self.head.parameters()).device
        with torch.no_grad():
            return torch.cat([self.head(chunk.to(device)).cpu() for chunk in pooled.split(batch_size)]) \
                if len(pooled) else torch.zeros(0, self.head.net[-1].out_features)

    def check(self, store=None, space=None) -> None:
        """Fail clearly when this mapper is used with another model, layer or word space."""
        if store is not None:
            key = store.manifest["key"]
            if key["model"] != self.model_fingerprint or key["layer"] != self.layer:
                raise ValueError(
                    f"this explainer was trained on {self.model_fingerprint} layer {self.layer!r}, but the store is "
                    f"{key['model']} layer {key['layer']!r}; train one for this store or open the right store"
                )
        if space is not None and content_id(getattr(space, "space_id", "")) != content_id(self.space_id):
            raise ValueError(
                f"this explainer maps into word space {self.space_id!r}, not {space.space_id!r}; "
                "load the same word space it was trained with"
            )

    def save(self, path: str | Path) -> Path:
        """Write a ``weights_only``-loadable checkpoint (atomically)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "state_dict": self.head.state_dict(),
            "channels": self.head.net[0].num_features, "dim": self.head.net[-1].out_features,
            "concepts": list(self.concepts), "seen": list(self.seen), "unseen": list(self.unseen),
            "space_id": self.space_id, "layer": self.layer, "model": self.model_fingerprint,
            "config": self.config.to_dict(),
            "history": plain(self.history.to_dict(orient="list")),
            "calibration": None if self.calibration is None else self.calibration.to_dict(),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, store=None, space=None) -> "Mapper":
        """Load a checkpoint (``weights_only=True``); with ``store``/``space`` check it fits them."""
        from .calibration import Calibration

        try:
            payload = torch.load(path, map_location="cpu", weights_only=True)
        except (RuntimeError, EOFError, OSError, pickle.UnpicklingError) as error:
            raise ValueError(f"{path} is not a readable mapper checkpoint ({error}); pass the mapper.pt that "
                             "Mapper.save (notebook 01) wrote") from error
        needed = {"state_dict", "channels", "dim", "concepts", "seen", "unseen", "space_id", "layer", "model", "config"}
        if not isinstance(payload, dict) or not needed <= set(payload):
            found = sorted(payload)[:8] if isinstance(payload, dict) else type(payload).__name__
            raise ValueError(f"{path} is not a mapper checkpoint (it holds {found}); pass the mapper.pt that "
                             "Mapper.save (notebook 01) wrote")
        config = TrainingConfig.from_dict(payload["config"])
        head = ExplainerHead(payload["channels"], payload["dim"], config.dropout)
        head.load_state_dict(payload["state_dict"])
        head.eval()
        if "calibration" in payload:
            record = None if payload["calibration"] is None else Calibration.from_dict(payload["calibration"])
        else:  # checkpoints written before the calibration record existed
            record = Calibration.from_legacy(payload, payload["layer"])
        mapper = cls(head, payload["concepts"], payload["seen"], payload["unseen"], payload["space_id"],
                     payload["layer"], payload["model"], config, pd.DataFrame(payload["history"]), record)
        mapper.check(store, space)
        return mapper


def plain(value):
    """Numpy scalars and arrays, tuples and dict keys as plain Python values (for checkpoints)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return plain(value.tolist())
    return value


def _rank_metrics(vectors: torch.Tensor, wanted: torch.Tensor, label_vectors: torch.Tensor) -> tuple[float, float]:
    """Top-1 / top-5 accuracy: a hit when one of a mask's concepts (``wanted``, (n, L) bool) ranks there."""
    if len(vectors) == 0:
        return float("nan"), float("nan")
    hits = wanted.gather(1, (vectors @ label_vectors.T).topk(min(5, len(label_vectors)), dim=1).indices)
    return hits[:, 0].float().mean().item(), hits.any(1).float().mean().item()


def _wanted(targets: list, labels: list) -> torch.Tensor:
    """(len(targets), len(labels)) bool: which labels each row's target names are."""
    position = {name: i for i, name in enumerate(labels)}
    entries = [(r, position[n]) for r, names in enumerate(targets) for n in names if n in position]
    return _Labels(entries, len(targets), len(labels)).dense(np.arange(len(targets))) > 0


def ranking_loss(vectors: torch.Tensor, positives: torch.Tensor, label_vectors: torch.Tensor, margin: float,
                 weights: torch.Tensor | None = None) -> torch.Tensor:
    """The head's hinge ranking loss.

    Parameters
    ----------
    vectors : torch.Tensor
        (B, dim) unit explanation vectors.
    positives : torch.Tensor
        (B, L) 1 where label l is one of the mask's concepts, else 0.
    label_vectors : torch.Tensor
        (L, dim) unit label vectors.
    margin : float
    weights : torch.Tensor, optional
        (B,) per-mask weights (weak labels weigh less).

    Returns
    -------
    torch.Tensor
        Scalar: the mean over masks of sum over negatives of
        max(0, margin - mean positive cosine + negative cosine).
    """
    cos = vectors @ label_vectors.T
    positive = (cos * positives).sum(1) / positives.sum(1).clamp_min(1)
    hinge = ((margin - positive[:, None] + cos).clamp_min(0) * (1 - positives)).sum(1)
    if weights is None:
        return hinge.mean()
    return (hinge * weights).sum() / weights.sum()


class ExplainerTrainer:
    """Train the explainer head of one store into one word space.

    Parameters
    ----------
    store : ActivationStore
        The reference dataset's activations and masks.
    space : WordSpace
        Target semantic space; every concept must have a vector (see ``missing``).
    config : TrainingConfig, optional
        Every training setting (concept split, pooling, optimiser, epochs, weak-label weight).
    weak_labels : pandas.DataFrame, optional
        Extra labels (columns ``image``, ``label``), e.g. the target model's own
        predictions: :func:`~lavise_nb.labels.model_labels` for whole images
        (features averaged over the map), :func:`~lavise_nb.labels.region_labels`
        for mask crops (an ``object`` column; features pooled under that mask).
        They widen the label space the head learns; labels sharing a token with
        any annotated concept are dropped so that unseen concepts stay unseen.
    restrict_to : list of str, optional
        Use only these annotated concepts (others are never read); calibration
        uses it to keep the real unseen concepts out of its inner split.
    missing : {"error", "skip"}
        What to do with concepts the word space cannot embed.
    device : str
        ``"auto"`` (cuda when available), ``"cpu"`` or ``"cuda"``.
    metrics : bool
        Record the per-epoch accuracies (seen top-1/5 on the validation masks, zero-shot
        top-1/5 on the unseen ones) in the history. False leaves them NaN and skips the
        unseen masks' scoring; the validation loss, and so the training, is the same.
    show_progress : bool

    Examples
    --------
    >>> mapper = ExplainerTrainer(store, space, TrainingConfig(seed=0)).fit()   # doctest: +SKIP
    >>> mapper.history.tail()                                                  # doctest: +SKIP
    """

    def __init__(self, store, space, config: TrainingConfig | None = None, *, weak_labels=None, restrict_to=None,
                 missing: str = "error", device="auto", metrics: bool = True, show_progress: bool = True):
        if missing not in ("error", "skip"):
            raise ValueError(f"missing must be 'error' or 'skip', not {missing!r}")
        self.store = store
        self.space = space
        self.config = TrainingConfig() if config is None else config
        self.device = resolve_device(device)
        self.show_progress, self.metrics = show_progress, metrics
        universe = store.concepts if restrict_to is None else sorted(set(restrict_to) & set(store.concepts))
        embedding = space.embed(universe, missing=missing)
        self.concepts = list(embedding.names)
        self.concept_vectors = torch.as_tensor(np.asarray(embedding.vectors), dtype=torch.float32)
        self.seen, self.unseen = self._split()
        self.masks = mask_table(store)
        self._pooled = None
        self.weak_names, self.weak_vectors, self.weak = self._weak(weak_labels, store.concepts)

    def _weak(self, labels, annotated) -> tuple[list, torch.Tensor, pd.DataFrame]:
        if labels is not None and not {"image", "label"} <= set(labels.columns):
            raise ValueError(f"weak_labels needs columns 'image' and 'label' (and 'object' for region labels), not "
                             f"{list(labels.columns)}: make them with model_labels() or region_labels()")
        if labels is None or len(labels) == 0:
            return [], torch.zeros(0, self.concept_vectors.shape[1]), pd.DataFrame(columns=["image", "label"])
        tokens = {t for name in annotated for t in name.replace("-", " ").split()}
        names = sorted(n for n in set(labels["label"]) if not tokens & set(n.replace("-", " ").split()))
        embedding = self.space.embed(names, missing="skip") if names else None
        kept = list(embedding.names) if embedding is not None else []
        vectors = torch.as_tensor(np.asarray(embedding.vectors), dtype=torch.float32) if kept else \
            torch.zeros(0, self.concept_vectors.shape[1])
        rows = labels[labels["label"].isin(set(kept))].reset_index(drop=True)
        return kept, vectors, rows

    def weak_features(self, weak: pd.DataFrame, pooled: torch.Tensor) -> torch.Tensor:
        """Features of weak-label rows, (len(weak), C): the mask-pooled vector, or the image's map mean.

        ``pooled`` is :meth:`pooled`'s (n_masks, C).
        """
        out = torch.zeros(len(weak), pooled.shape[1]) if len(weak) * pooled.shape[1] * 4 <= memory_budget() \
            else _scratch((len(weak), pooled.shape[1]))
        by_object = np.array(weak["object"].notna()) if "object" in weak else np.zeros(len(weak), bool)
        if by_object.any():
            mask_of = pd.Series(self.masks["mask"].to_numpy(), index=self.masks["object"].to_numpy())
            objects = weak["object"].to_numpy()[by_object].astype(np.int64)
            unknown = sorted(set(objects) - set(mask_of.index))
            if unknown:
                raise ValueError(f"weak labels name objects that are not a mask's representative: {unknown[:5]}; "
                                 "make them with region_labels(model, store, dataset)")
            targets, sources = np.flatnonzero(by_object), mask_of[objects].to_numpy().astype(np.int64)
            for start in range(0, len(targets), EVAL_ROWS):
                out[torch.from_numpy(targets[start:start + EVAL_ROWS])] = \
                    pooled[torch.from_numpy(sources[start:start + EVAL_ROWS])]
        if (~by_object).any():
            targets, images = np.flatnonzero(~by_object), weak["image"].to_numpy()[~by_object]
            for start in range(0, len(targets), EVAL_ROWS):
                out[torch.from_numpy(targets[start:start + EVAL_ROWS])] = \
                    image_means(self.store, images[start:start + EVAL_ROWS])
        return out

    def _split(self) -> tuple[list, list]:
        if self.config.seen is not None:
            unknown = sorted(set(self.config.seen) - set(self.concepts))
            if unknown:
                raise ValueError(f"seen concepts not in the store: {unknown}")
            seen = sorted(self.config.seen)
        else:
            rng = np.random.default_rng(self.config.seed)
            n_seen = max(1, round(self.config.seen_fraction * len(self.concepts)))
            seen = sorted(rng.choice(self.concepts, size=n_seen, replace=False).tolist())
        return seen, sorted(set(self.concepts) - set(seen))

    def pooled(self) -> torch.Tensor:
        """(n_masks, C) pooled features of every mask of :attr:`masks`, computed once from the store.

        In memory up to :func:`memory_budget` bytes; above it a memory-mapped view of the
        cached :func:`pooled_file` (another trainer on the same store reuses it), with the same values.
        """
        if self._pooled is None:
            self._pooled = mask_features(self.store, self.masks, self.config.pooling,
                                         show_progress=self.show_progress)
        return self._pooled

    def _image_split(self) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed + 1)
        images = np.unique(self.masks["image"].to_numpy())
        n_val = int(round(self.config.val_fraction * len(images)))
        return np.isin(self.masks["image"].to_numpy(), rng.choice(images, size=n_val, replace=False))

    def _targets(self, names: list) -> list:
        keep = set(names)
        return [tuple(c for c in concepts if c in keep) for concepts in self.masks["concepts"]]

    def fit(self, callback=None) -> Mapper:
        """Train; return the best-on-validation :class:`Mapper`.

        Parameters
        ----------
        callback : callable, optional
            Called after every epoch with the history DataFrame so far (live monitors).
        """
        cfg = self.config
        torch.manual_seed(cfg.seed)
        pooled = self.pooled()
        val = self._image_split()
        seen_targets = self._targets(self.seen)
        unseen_targets = self._targets(self.unseen)
        has_seen = np.array([len(t) > 0 for t in seen_targets])
        has_unseen = np.array([len(t) > 0 for t in unseen_targets])
        train_rows = np.flatnonzero(has_seen & ~val)
        val_rows = np.flatnonzero(has_seen & val)
        if len(train_rows) == 0:
            raise ValueError("no training masks: the store has no masks of seen concepts")
        zs_rows = np.flatnonzero(has_unseen) if self.metrics else np.zeros(0, dtype=np.int64)

        seen_index = {c: i for i, c in enumerate(self.seen)}
        seen_vectors = self.concept_vectors[[self.concepts.index(c) for c in self.seen]]
        label_vectors = torch.cat([seen_vectors, self.weak_vectors]).to(self.device)
        entries = [(row, seen_index[name]) for row, names in enumerate(seen_targets) for name in names]
        weights = torch.ones(len(self.masks))
        rows = _Rows(pooled)
        if len(self.weak):
            weak = self.weak[~np.isin(self.weak["image"], self.masks["image"][val].unique())]
            weak_index = {c: len(self.seen) + i for i, c in enumerate(self.weak_names)}
            start = len(pooled)
            entries += [(start + i, weak_index[c]) for i, c in enumerate(weak["label"])]
            rows = _Rows(pooled, self.weak_features(weak, pooled))
            weights = torch.cat([weights, torch.full((len(weak),), cfg.weak_weight)])
            train_rows = np.concatenate([train_rows, start + np.arange(len(weak))])
        if self.device.type != "cpu" and rows.nbytes() <= memory_budget():
            rows = rows.to(self.device)
        positives = _Labels(entries, len(weights), len(label_vectors))
        val_positives = positives.dense(val_rows).to(self.device)
        val_wanted = _wanted([seen_targets[i] for i in val_rows], self.seen)
        zs_wanted = _wanted([unseen_targets[i] for i in zs_rows], self.concepts)

        head = ExplainerHead(pooled.shape[1], self.concept_vectors.shape[1], cfg.dropout).to(self.device)
        optimiser = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, patience=cfg.plateau_patience, factor=0.5)
        best, best_loss, since_best, history = None, math.inf, 0, []
        generator = torch.Generator().manual_seed(cfg.seed)
        epochs = progress(range(cfg.max_epochs), enabled=self.show_progress, desc="train explainer")
        for epoch in epochs:
            head.train()
            order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
            total = 0.0
            for chunk in order.split(cfg.batch_size):
                if len(chunk) < 2:
                    continue
                loss = ranking_loss(head(rows.take(chunk).to(self.device)), positives.dense(chunk).to(self.device),
                                    label_vectors, cfg.margin, weights[chunk].to(self.device))
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(chunk)
            head.eval()
            val_vectors, zs_vectors = rows.embed(head, val_rows, self.device), rows.embed(head, zs_rows, self.device)
            with torch.no_grad():
                val_loss = ranking_loss(val_vectors.to(self.device), val_positives, label_vectors,
                                        cfg.margin).item() if len(val_rows) else total / len(train_rows)
            scheduler.step(val_loss)
            (top1, top5), (zs1, zs5) = (_rank_metrics(val_vectors, val_wanted, seen_vectors),
                                        _rank_metrics(zs_vectors, zs_wanted, self.concept_vectors)) \
                if self.metrics else ((math.nan, math.nan), (math.nan, math.nan))
            row = dict(epoch=epoch, train_loss=total / len(train_rows), val_loss=val_loss, seen_top1=top1,
                       seen_top5=top5, unseen_top1=zs1, unseen_top5=zs5, lr=optimiser.param_groups[0]["lr"])
            history.append(row)
            if val_loss < best_loss - 1e-5:
                best, best_loss, since_best = copy.deepcopy(head.state_dict()), val_loss, 0
            else:
                since_best += 1
            if callback is not None:
                callback(pd.DataFrame(history))
            if since_best >= cfg.patience:
                break
        head.load_state_dict(best)
        head.eval()
        history = pd.DataFrame(history)
        history["best"] = history["val_loss"] == history["val_loss"].min()
        return Mapper(head.cpu(), self.concepts, self.seen, self.unseen, self.space.space_id,
                      self.store.layer, self.store.manifest["key"]["model"], cfg, history)


class _Rows:
    """The training rows' features: the pooled masks (in memory or memory-mapped), then any weak-label rows."""

    def __init__(self, pooled: torch.Tensor, extra: torch.Tensor | None = None):
        self.pooled, self.extra = pooled, extra

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.pooled, self.extra) if t is not None)

    def to(self, device) -> "_Rows":
        """The rows moved to ``device`` (in-memory pairs on a GPU: moved once, not per minibatch)."""
        return _Rows(self.pooled.to(device), None if self.extra is None else self.extra.to(device))

    def take(self, rows) -> torch.Tensor:
        """(len(rows), C) features of ``rows``, in their order."""
        rows = torch.as_tensor(rows, dtype=torch.long).to(self.pooled.device)
        inside = rows < len(self.pooled)
        if self.extra is None or bool(inside.all()):
            return self.pooled[rows]
        out = torch.empty(len(rows), self.pooled.shape[1], device=self.pooled.device)
        out[inside] = self.pooled[rows[inside]]
        out[~inside] = self.extra[rows[~inside] - len(self.pooled)]
        return out

    def embed(self, head: ExplainerHead, rows: np.ndarray, device) -> torch.Tensor:
        """(len(rows), dim) head outputs on the CPU, :data:`EVAL_ROWS` rows at a time, without gradients."""
        if len(rows) == 0:
            return torch.zeros(0, 1)
        with torch.no_grad():
            return torch.cat([head(self.take(rows[start:start + EVAL_ROWS]).to(device)).cpu()
                              for start in range(0, len(rows), EVAL_ROWS)])


class _Labels:
    """Each training row's positive labels, kept sparse; :meth:`dense` gives a minibatch's (B, L) 0/1 rows."""

    def __init__(self, entries: list, n_rows: int, n_labels: int):
        pairs = np.asarray(entries, dtype=np.int64).reshape(-1, 2)
        order = np.argsort(pairs[:, 0], kind="stable")
        self.labels = pairs[order, 1]
        self.indptr = np.concatenate([[0], np.cumsum(np.bincount(pairs[:, 0], minlength=n_rows))])
        self.n_labels = n_labels

    def dense(self, rows) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        starts, counts = self.indptr[rows], self.indptr[rows + 1] - self.indptr[rows]
        owner = np.repeat(np.arange(len(rows)), counts)
        at = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(starts, counts)
        out = torch.zeros(len(rows), self.n_labels)
        out[torch.from_numpy(owner), torch.from_numpy(self.labels[at])] = 1.0
        return out


def _scratch(shape: tuple) -> torch.Tensor:
    """A zeroed float32 tensor on a scratch file in the cache (removed at once; the mapping keeps it)."""
    from numpy.lib.format import open_memmap

    handle, name = tempfile.mkstemp(suffix=".npy", dir=cache_dir("pooled"))
    os.close(handle)
    try:
        return torch.from_numpy(open_memmap(name, mode="w+", dtype=np.float32, shape=shape))
    finally:
        Path(name).unlink(missing_ok=True)
