"""The latent visual-semantic mapping: a small head from pooled CNN features to word vectors.

:class:`ExplainerTrainer` trains it from an activation store (no CNN forward pass per
epoch): every (image, mask) pair becomes one pooled feature vector, computed once.
The result, a :class:`Mapper`, carries its concept split, the word-space id, the
layer and the model fingerprint, and loads with ``weights_only=True``.
"""
from __future__ import annotations

import copy
import hashlib
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ._utils.progress import progress
from .probe import resolve_device

__all__ = ["ExplainerHead", "Mapper", "ExplainerTrainer", "pool_features", "pair_table", "model_labels",
           "region_labels", "imagenet_classes"]


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

    def __init__(self, channels: int, dim: int, dropout: float = 0.1):
        super().__init__()
        self.net = nn.Sequential(
            nn.BatchNorm1d(channels), nn.Dropout(dropout), nn.Linear(channels, channels), nn.ReLU(),
            nn.BatchNorm1d(channels), nn.Dropout(dropout), nn.Linear(channels, dim),
        )

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """(B, d) pooled features -> (B, dim) unit-norm word-space vectors."""
        return F.normalize(self.net(pooled), dim=-1)


def pool_features(features: torch.Tensor, masks: torch.Tensor, mode: str = "mass") -> torch.Tensor:
    """Mask-weighted pooling of feature maps.

    Parameters
    ----------
    features : torch.Tensor
        (B, C, h, w).
    masks : torch.Tensor
        (B, h, w) weights in [0, 1] (masks area-averaged to the map size).
    mode : {"mass", "mean"}
        ``"mass"``: sum(F * M) / sum(M), the mean over the masked region;
        ``"mean"``: the paper's GAP(F * M), the mean over the whole map.

    Returns
    -------
    torch.Tensor
        (B, C).
    """
    weighted = torch.einsum("bchw,bhw->bc", features, masks)
    if mode == "mass":
        return weighted / masks.sum(dim=(1, 2)).clamp_min(1e-6)[:, None]
    if mode == "mean":
        return weighted / (masks.shape[1] * masks.shape[2])
    raise ValueError(f"pooling must be 'mass' or 'mean', not {mode!r}")


def pair_table(store) -> pd.DataFrame:
    """One row per (image, region): the store's masks with identical pixels grouped.

    Two concepts annotated with exactly the same pixels ("red" and "circle" for one
    shape) are one training pair with two positives.

    Returns
    -------
    pandas.DataFrame
        Columns ``pair``, ``image``, ``object`` (a representative object row),
        ``concepts`` (tuple of names).
    """
    objects = store.objects
    packed = np.asarray(store._masks)
    digests = [hashlib.blake2b(packed[i].tobytes(), digest_size=8).hexdigest() for i in range(len(objects))]
    frame = objects.assign(digest=digests)
    grouped = frame.groupby(["image", "digest"], sort=False).agg(
        object=("object", "first"), concepts=("concept", lambda c: tuple(sorted(set(c)))))
    table = grouped.reset_index().drop(columns="digest").sort_values("object", kind="stable")
    table = table.reset_index(drop=True)
    table.insert(0, "pair", np.arange(len(table)))
    return table


@dataclass
class TrainingConfig:
    """Every setting of a training run (saved with the mapper)."""

    seen_fraction: float = 0.7
    seed: int = 0
    val_fraction: float = 0.2
    pooling: str = "mass"
    dropout: float = 0.5
    margin: float = 1.0
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 60
    patience: int = 8
    plateau_patience: int = 3
    seen: list | None = None


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
    space_id, layer, model : str
        Word space, layer and model fingerprint the head belongs to.
    config : dict
    history : pandas.DataFrame
    gamma : float
        Calibrated-stacking offset subtracted from seen-concept scores (0 = none);
        tuned for per-image (or per-mask) words.
    gamma_table : pandas.DataFrame
        The calibration curves it was chosen from (``GammaCalibration.table()``).
    filter_gamma : float or None
        The offset tuned for a filter's vote-ranked words (None: use ``gamma``).
    prior : dict or None
        ``ClassPrior.settings`` of the class prior the gammas were tuned with (None: none).
    """

    head: ExplainerHead
    concepts: list
    seen: list
    unseen: list
    space_id: str
    layer: str
    model: str
    config: dict
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    gamma: float = 0.0
    gamma_table: pd.DataFrame = field(default_factory=pd.DataFrame)
    filter_gamma: float | None = None
    prior: dict | None = None

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
            if key["model"] != self.model or key["layer"] != self.layer:
                raise ValueError(
                    f"this explainer was trained on {self.model} layer {self.layer!r}, but the store is "
                    f"{key['model']} layer {key['layer']!r}; train one for this store or open the right store"
                )
        if space is not None and getattr(space, "space_id", None) != self.space_id:
            raise ValueError(
                f"this explainer maps into word space {self.space_id!r}, not {space.space_id!r}; "
                "load the same word space it was trained with"
            )

    def save(self, path: str | Path) -> Path:
        """Write a ``weights_only``-loadable checkpoint."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "state_dict": self.head.state_dict(),
            "channels": self.head.net[0].num_features, "dim": self.head.net[-1].out_features,
            "concepts": list(self.concepts), "seen": list(self.seen), "unseen": list(self.unseen),
            "space_id": self.space_id, "layer": self.layer, "model": self.model,
            "config": _plain(self.config), "gamma": float(self.gamma),
            "filter_gamma": None if self.filter_gamma is None else float(self.filter_gamma),
            "history": _plain(self.history.to_dict(orient="list")),
            "gamma_table": _plain(self.gamma_table.to_dict(orient="list")),
            "prior": _plain(self.prior),
        }
        tmp = path.with_suffix(path.suffix + ".tmp")
        torch.save(payload, tmp)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, store=None, space=None) -> "Mapper":
        """Load a checkpoint (``weights_only=True``); with ``store``/``space`` check it fits them."""
        payload = torch.load(path, map_location="cpu", weights_only=True)
        head = ExplainerHead(payload["channels"], payload["dim"], payload["config"].get("dropout", 0.1))
        head.load_state_dict(payload["state_dict"])
        head.eval()
        mapper = cls(head, payload["concepts"], payload["seen"], payload["unseen"], payload["space_id"],
                     payload["layer"], payload["model"], payload["config"],
                     pd.DataFrame(payload["history"]), payload["gamma"], pd.DataFrame(payload["gamma_table"]),
                     payload.get("filter_gamma"), payload.get("prior"))
        mapper.check(store, space)
        return mapper


def _plain(value):
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return _plain(value.tolist())
    return value


def _rank_metrics(vectors: torch.Tensor, targets: list, label_vectors: torch.Tensor,
                  labels: list, bias: torch.Tensor | None = None) -> tuple[float, float]:
    """Top-1 / top-5 accuracy: a hit when any of a pair's target concepts ranks there."""
    if len(vectors) == 0:
        return float("nan"), float("nan")
    scores = vectors @ label_vectors.T
    if bias is not None:
        scores = scores - bias
    top = scores.topk(min(5, scores.shape[1]), dim=1).indices
    position = {name: i for i, name in enumerate(labels)}
    hits1 = hits5 = 0
    for row, names in zip(top.tolist(), targets):
        wanted = {position[n] for n in names if n in position}
        hits1 += row[0] in wanted
        hits5 += bool(wanted.intersection(row))
    return hits1 / len(targets), hits5 / len(targets)


class ExplainerTrainer:
    """Train the explainer head of one store into one word space.

    Parameters
    ----------
    store : ActivationStore
        The reference dataset's activations and masks.
    space : WordSpace
        Target semantic space; every concept must have a vector (see ``missing``).
    seen_fraction : float
        Share of annotated concepts used for training, drawn without replacement.
    seed : int
    pooling : {"mass", "mean"}
    dropout, margin, lr : float
    batch_size, max_epochs, patience : int
    seen : list of str, optional
        An explicit seen set (overrides ``seen_fraction``).
    missing : {"error", "skip"}
        What to do with concepts the word space cannot embed.
    restrict_to : list of str, optional
        Use only these annotated concepts (others are never read); calibration
        uses it to keep the real unseen concepts out of its inner split.
    weak_labels : pandas.DataFrame, optional
        Extra labels (columns ``image``, ``label``), e.g. the target model's own
        ImageNet predictions: :func:`model_labels` for whole images (features
        averaged over the map), :func:`region_labels` for mask crops (an
        ``object`` column; features pooled under that mask, like the pairs).
        They widen the label space the head learns; labels sharing a token with
        any annotated concept are dropped so that unseen concepts stay unseen.
    weak_weight : float
        Loss weight of weak-label pairs.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``.

    Examples
    --------
    >>> mapper = ExplainerTrainer(store, space, seed=0).fit()   # doctest: +SKIP
    >>> mapper.history.tail()                                    # doctest: +SKIP
    """

    def __init__(self, store, space, *, missing: str = "error", restrict_to=None, weak_labels=None,
                 weak_weight: float = 0.5, device="cpu", show_progress: bool = True, **settings):
        self.store = store
        self.space = space
        self.config = TrainingConfig(**settings)
        self.device = resolve_device(device)
        self.show_progress = show_progress
        universe = store.concepts if restrict_to is None else sorted(set(restrict_to) & set(store.concepts))
        embedding = space.embed(universe, missing=missing)
        self.concepts = list(embedding.names)
        self.concept_vectors = torch.as_tensor(np.asarray(embedding.vectors), dtype=torch.float32)
        self.seen, self.unseen = self._split()
        self.pairs = pair_table(store)
        self._pooled = None
        self.weak_weight = weak_weight
        self.weak_names, self.weak_vectors, self.weak = self._weak(weak_labels, store.concepts)

    def _weak(self, labels, annotated) -> tuple[list, torch.Tensor, pd.DataFrame]:
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

    def _weak_features(self, weak: pd.DataFrame, pooled: torch.Tensor) -> torch.Tensor:
        """Features of weak-label rows: the pair's mask-pooled vector, or the image's map mean."""
        out = torch.zeros(len(weak), pooled.shape[1])
        by_object = np.array(weak["object"].notna()) if "object" in weak else np.zeros(len(weak), bool)
        if by_object.any():
            pair_of = pd.Series(self.pairs["pair"].to_numpy(), index=self.pairs["object"].to_numpy())
            objects = weak["object"].to_numpy()[by_object].astype(np.int64)
            unknown = sorted(set(objects) - set(pair_of.index))
            if unknown:
                raise ValueError(f"weak labels name objects that are not a pair's representative: {unknown[:5]}; "
                                 "make them with region_labels(model, store, dataset)")
            out[torch.from_numpy(by_object)] = pooled[torch.tensor(pair_of[objects].to_numpy(), dtype=torch.long)]
        if (~by_object).any():
            images = weak["image"].to_numpy()[~by_object]
            out[torch.from_numpy(~by_object)] = self.store.features(images).mean(dim=(2, 3))
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
        """(n_pairs, C) pooled features of every pair, computed once from the store."""
        if self._pooled is None:
            self._pooled = pooled_pairs(self.store, self.pairs, self.config.pooling,
                                        show_progress=self.show_progress)
        return self._pooled

    def _image_split(self) -> np.ndarray:
        rng = np.random.default_rng(self.config.seed + 1)
        images = np.unique(self.pairs["image"].to_numpy())
        n_val = int(round(self.config.val_fraction * len(images)))
        return np.isin(self.pairs["image"].to_numpy(), rng.choice(images, size=n_val, replace=False))

    def _targets(self, names: list) -> list:
        keep = set(names)
        return [tuple(c for c in concepts if c in keep) for concepts in self.pairs["concepts"]]

    def fit(self, callback=None) -> Mapper:
        """Train; return the best-on-validation :class:`Mapper`.

        Parameters
        ----------
        callback : callable, optional
            Called after every epoch with the history DataFrame so far (live monitors).
        """
        threads = torch.get_num_threads()
        if self.device.type == "cpu":
            torch.set_num_threads(1)  # a small MLP: extra threads only add synchronisation overhead
        try:
            return self._fit(callback)
        finally:
            torch.set_num_threads(threads)

    def _fit(self, callback) -> Mapper:
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
            raise ValueError("no training pairs: the store has no masks of seen concepts")
        zs_rows = np.flatnonzero(has_unseen)

        seen_index = {c: i for i, c in enumerate(self.seen)}
        seen_vectors = self.concept_vectors[[self.concepts.index(c) for c in self.seen]]
        label_vectors = torch.cat([seen_vectors, self.weak_vectors]).to(self.device)
        positives = torch.zeros(len(self.pairs), len(label_vectors))
        for row, names in enumerate(seen_targets):
            for name in names:
                positives[row, seen_index[name]] = 1.0
        weights = torch.ones(len(self.pairs))
        if len(self.weak):
            weak = self.weak[~np.isin(self.weak["image"], self.pairs["image"][val].unique())]
            weak_index = {c: len(self.seen) + i for i, c in enumerate(self.weak_names)}
            weak_pos = torch.zeros(len(weak), len(label_vectors))
            weak_pos[torch.arange(len(weak)), torch.tensor([weak_index[c] for c in weak["label"]])] = 1.0
            start = len(pooled)
            pooled = torch.cat([pooled, self._weak_features(weak, pooled)])
            positives = torch.cat([positives, weak_pos])
            weights = torch.cat([weights, torch.full((len(weak),), self.weak_weight)])
            train_rows = np.concatenate([train_rows, start + np.arange(len(weak))])

        head = ExplainerHead(pooled.shape[1], self.concept_vectors.shape[1], cfg.dropout).to(self.device)
        optimiser = torch.optim.Adam(head.parameters(), lr=cfg.lr)
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimiser, patience=cfg.plateau_patience, factor=0.5)
        x_all = pooled.to(self.device)
        pos_all = positives.to(self.device)
        w_all = weights.to(self.device)
        best, best_loss, since_best, rows = None, math.inf, 0, []
        generator = torch.Generator().manual_seed(cfg.seed)
        epochs = progress(range(cfg.max_epochs), enabled=self.show_progress, desc="train explainer")
        for epoch in epochs:
            head.train()
            order = torch.from_numpy(train_rows)[torch.randperm(len(train_rows), generator=generator)]
            total = 0.0
            for chunk in order.split(cfg.batch_size):
                if len(chunk) < 2:
                    continue
                loss = self._loss(head(x_all[chunk]), pos_all[chunk], label_vectors, w_all[chunk])
                optimiser.zero_grad()
                loss.backward()
                optimiser.step()
                total += loss.item() * len(chunk)
            head.eval()
            with torch.no_grad():
                val_loss = self._loss(head(x_all[val_rows]), pos_all[val_rows], label_vectors).item() \
                    if len(val_rows) else total / len(train_rows)
            scheduler.step(val_loss)
            row = self._epoch_row(epoch, total / len(train_rows), val_loss, head, x_all, val_rows, zs_rows,
                                  seen_targets, unseen_targets, optimiser)
            rows.append(row)
            if val_loss < best_loss - 1e-5:
                best, best_loss, since_best = copy.deepcopy(head.state_dict()), val_loss, 0
            else:
                since_best += 1
            if callback is not None:
                callback(pd.DataFrame(rows))
            if since_best >= cfg.patience:
                break
        head.load_state_dict(best)
        head.eval()
        history = pd.DataFrame(rows)
        history["best"] = history["val_loss"] == history["val_loss"].min()
        return Mapper(head.cpu(), self.concepts, self.seen, self.unseen, self.space.space_id,
                      self.store.layer, self.store.manifest["key"]["model"], _plain(asdict(cfg)), history)

    def _loss(self, vectors: torch.Tensor, positives: torch.Tensor, label_vectors: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
        cos = vectors @ label_vectors.T
        positive = (cos * positives).sum(1) / positives.sum(1).clamp_min(1)
        hinge = ((self.config.margin - positive[:, None] + cos).clamp_min(0) * (1 - positives)).sum(1)
        if weights is None:
            return hinge.mean()
        return (hinge * weights).sum() / weights.sum()

    def _epoch_row(self, epoch, train_loss, val_loss, head, x_all, val_rows, zs_rows, seen_targets,
                   unseen_targets, optimiser) -> dict:
        with torch.no_grad():
            val_vectors = head(x_all[val_rows]).cpu() if len(val_rows) else torch.zeros(0, 1)
            zs_vectors = head(x_all[zs_rows]).cpu() if len(zs_rows) else torch.zeros(0, 1)
        seen_vecs = self.concept_vectors[[self.concepts.index(c) for c in self.seen]]
        top1, top5 = _rank_metrics(val_vectors, [seen_targets[i] for i in val_rows], seen_vecs, self.seen)
        zs1, zs5 = _rank_metrics(zs_vectors, [unseen_targets[i] for i in zs_rows], self.concept_vectors,
                                 self.concepts)
        return dict(epoch=epoch, train_loss=train_loss, val_loss=val_loss, seen_top1=top1, seen_top5=top5,
                    unseen_top1=zs1, unseen_top5=zs5, lr=optimiser.param_groups[0]["lr"])


def pooled_pairs(store, pairs: pd.DataFrame, pooling: str = "mass", batch_images: int = 256,
                 show_progress: bool = False) -> torch.Tensor:
    """Pool the store's features under each pair's mask; (n_pairs, C) float32."""
    out = torch.zeros(len(pairs), store.shape[1])
    images = pairs["image"].to_numpy()
    objects = pairs["object"].to_numpy()
    unique = np.unique(images)
    for start in progress(range(0, len(unique), batch_images), enabled=show_progress, desc="pool masks"):
        chunk = unique[start:start + batch_images]
        features = store.features(chunk)
        rows = np.flatnonzero(np.isin(images, chunk))
        local = np.searchsorted(chunk, images[rows])
        masks = store.object_masks_small(objects[rows])
        out[rows] = pool_features(features[local], masks, pooling)
    return out


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1000 class names, lower-case, in output order (the weak labels' vocabulary)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return [name.lower() for name in _IMAGENET_CATEGORIES]


def model_labels(model, dataset, *, top: int = 1, min_probability: float = 0.2, batch_size: int = 64,
                 device="cpu", show_progress: bool = True) -> pd.DataFrame:
    """The target model's own ImageNet predictions for each image, as weak labels.

    Parameters
    ----------
    model : TargetModel
        An ImageNet classifier (1000 outputs in torchvision's class order).
    dataset : torch.utils.data.Dataset
        Follows the sample contract of :mod:`lavise_nb.datasets`.
    top : int
        Classes kept per image.
    min_probability : float
        Softmax probability a class needs to be kept.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, label, probability`` (labels are lower-case class names).
    """
    from .datasets import collate_samples

    names = imagenet_classes()
    device = resolve_device(device)
    model.to(device)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    rows = []
    with torch.no_grad():
        for batch in progress(loader, enabled=show_progress, desc="model labels"):
            logits = model.module(batch["images"].to(device)).float()
            if logits.shape[-1] != len(names):
                raise ValueError(f"the model has {logits.shape[-1]} outputs, not ImageNet's {len(names)}")
            probs, classes = logits.softmax(-1).topk(top, dim=1)
            for image, p_row, c_row, error in zip(batch["index"].tolist(), probs.tolist(), classes.tolist(),
                                                  batch["errors"]):
                rows += [(image, names[c], p) for p, c in zip(p_row, c_row) if p >= min_probability and not error]
    return pd.DataFrame(rows, columns=["image", "label", "probability"])


def region_labels(model, store, dataset, *, top: int = 3, min_probability: float = 0.05, context: float = 0.15,
                  min_side: int = 16, batch_size: int = 64, device="cpu", show_progress: bool = True) -> pd.DataFrame:
    """The target model's ImageNet predictions for a crop around each annotated region.

    Every distinct region of the store (:func:`pair_table`) is cropped to its
    bounding box plus ``context`` on each side, resized to the input size and
    classified. Only the pixels are used, never the region's concept names, so
    the labels are fair weak labels for seen and unseen regions alike.

    Parameters
    ----------
    model : TargetModel
        An ImageNet classifier (1000 outputs in torchvision's class order).
    store : ActivationStore
        The reference store (its masks are at the dataset's input size).
    dataset : torch.utils.data.Dataset
        The store's dataset (sample contract of :mod:`lavise_nb.datasets`).
    top : int
        Classes kept per region.
    min_probability : float
        Softmax probability a class needs to be kept.
    context : float
        Margin around the box, as a share of its side.
    min_side : int
        Boxes are grown to at least this many pixels a side.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, object, label, probability``; ``object`` is the
        region's representative object row (pass as ``weak_labels``).
    """
    names = imagenet_classes()
    device = resolve_device(device)
    model.to(device)
    pairs = pair_table(store)
    size = store.image_size
    rows, crops, keys = [], [], []

    def flush():
        if not crops:
            return
        with torch.no_grad():
            logits = model.module(torch.stack(crops).to(device)).float()
        if logits.shape[-1] != len(names):
            raise ValueError(f"the model has {logits.shape[-1]} outputs, not ImageNet's {len(names)}")
        probs, classes = logits.softmax(-1).topk(top, dim=1)
        for (image, obj), p_row, c_row in zip(keys, probs.tolist(), classes.tolist()):
            rows.extend((image, obj, names[c], p) for p, c in zip(p_row, c_row) if p >= min_probability)
        crops.clear()
        keys.clear()

    grouped = pairs.groupby("image", sort=True)
    for image, group in progress(grouped, enabled=show_progress, desc="region labels", total=grouped.ngroups):
        sample = dataset[int(image)]
        if sample.get("error"):
            continue
        picture = sample["image"]
        masks = store.object_masks(group["object"].to_numpy())
        for obj, mask in zip(group["object"].tolist(), masks):
            ys, xs = torch.nonzero(mask, as_tuple=True)
            if len(ys) == 0:
                continue
            crops.append(_crop(picture, ys, xs, context, min_side, size))
            keys.append((int(image), int(obj)))
            if len(crops) >= batch_size:
                flush()
    flush()
    return pd.DataFrame(rows, columns=["image", "object", "label", "probability"])


def _crop(picture: torch.Tensor, ys: torch.Tensor, xs: torch.Tensor, context: float, min_side: int,
          size: int) -> torch.Tensor:
    """(3, H, W) picture -> (3, size, size) crop around the pixels (ys, xs), with margin."""
    height, width = picture.shape[1:]
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    grow_y = max(context * (y1 - y0), (min_side - (y1 - y0)) / 2, 0)
    grow_x = max(context * (x1 - x0), (min_side - (x1 - x0)) / 2, 0)
    y0, y1 = max(0, int(y0 - grow_y)), min(height, int(math.ceil(y1 + grow_y)))
    x0, x1 = max(0, int(x0 - grow_x)), min(width, int(math.ceil(x1 + grow_x)))
    window = picture[:, y0:y1, x0:x1]
    return F.interpolate(window[None], size=(size, size), mode="bilinear", align_corners=False)[0]
