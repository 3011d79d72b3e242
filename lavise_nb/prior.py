"""The target model's own classifier as a word prior for its filters' regions (ConSE).

For each (filter, image) pair, the target model classifies the region where the filter
fires, and the word vectors of its ``top`` classes, weighted by their probabilities, make a
unit vector (ConSE: Norouzi et al., ICLR 2014). The region is classified from the stored
activations (``source="features"``: the box around the region on the layer's map, resampled
to the map's size, through the layers after it) or from a crop of the image around it
(``source="region"``: a forward pass per crop).
:class:`~lavise_nb.explain.FilterExplainer` adds ``weight`` times this vector to each
pair's explanation vector before ranking words. The class names are not the annotated
concepts, so the prior helps seen, unseen and open-vocabulary words alike.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torchvision.ops import roi_align

from ._utils.cache import cache_dir
from ._utils.progress import progress
from .config import CropSettings
from .labels import classify, imagenet_classes
from .probe import resolve_device
from .downstream import SplitError
from .regions import crop_around, filter_regions, region_box
from .store.locks import store_lock

__all__ = ["ClassPrior"]

SOURCES = ("features", "region", "image")
WHOLE_IMAGE = -1  # the cache's filter key for source="image": one prediction per image
STORED_CLASSES = 20
FEATURE_BATCHES = 8   # source="features" classifies this many crop batches' worth of pairs at once (no images)


class ClassPrior:
    """Word prior from the target model's predictions for each filter's region.

    Parameters
    ----------
    model : TargetModel
        A classifier whose outputs are ``class_names``, in order (the store's model, as a rule).
    dataset : torch.utils.data.Dataset
        The store's dataset (sample contract of :mod:`lavise_nb.datasets`).
    space : WordSpace
        The explainer's word space; class names it cannot embed are reported and their
        probability is dropped.
    top : int, optional
        Classes per pair (ConSE's T), at most 20 and the number of classes; default
        10 (or every class when there are fewer).
    weight : float
        How much of the prior vector is added to a pair's explanation vector (both unit length).
    source : {"features", "region", "image"}
        Where the filter fires is its thresholded, upsampled activation region and the box
        around it (:func:`~lavise_nb.regions.region_box`, with ``crop``'s margin).
        "features" (default): that box on the store's activation map, resampled to the map's
        size (``roi_align``) and run through the layers after the store's layer
        (:meth:`TargetModel.downstream`); no image is read or run again. "region": the image
        cropped to the box, resized and run through the whole model (a forward pass per
        pair). "image": the whole image.
    crop : CropSettings, optional
        The crop's margin and smallest side, and crops per forward pass.
    class_names : list of str, optional
        Default: ImageNet-1k's 1000 class names.
    device : str
        "auto": cuda when available.
    show_progress : bool

    Notes
    -----
    Predictions are cached per (filter, image) pair beside the store (``<store>/priors/``)
    and written as they are computed, so an interrupted run resumes where it stopped.

    Examples
    --------
    >>> prior = ClassPrior(model, dataset, space)                           # doctest: +SKIP
    >>> FilterExplainer(store, mapper, space, prior=prior).explain()       # doctest: +SKIP
    """

    def __init__(self, model, dataset, space, *, top: int | None = None, weight: float = 1.0, source: str = "features",
                 crop: CropSettings | None = None, class_names=None, device="auto", show_progress: bool = True):
        if source not in SOURCES:
            raise ValueError(f"source must be one of {SOURCES}, not {source!r}")
        if weight < 0:
            raise ValueError(f"weight must be >= 0, not {weight}")
        self.class_names = imagenet_classes() if class_names is None else list(class_names)
        self.stored = min(STORED_CLASSES, len(self.class_names))
        top = min(10, self.stored) if top is None else top
        if not 1 <= top <= self.stored:
            raise ValueError(f"top must be between 1 and {self.stored} (at most {STORED_CLASSES} and the number of "
                             f"classes), not {top}")
        self.model, self.dataset, self.space = model, dataset, space
        self.top, self.weight, self.source = int(top), float(weight), source
        self.crop = CropSettings() if crop is None else crop
        self.device, self.show_progress = resolve_device(device), show_progress
        self._class_vectors = None

    def __repr__(self) -> str:
        return (f"ClassPrior({self.model.name}, source={self.source!r}, top={self.top}, weight={self.weight}, "
                f"{len(self.class_names)} classes)")

    @property
    def settings(self) -> dict:
        """What the prior's scores depend on (a calibrated gamma holds only for the same settings)."""
        return dict(model=self.model.fingerprint, source=self.source, top=self.top, weight=self.weight,
                    classes=len(self.class_names), context=self.crop.context, min_side=self.crop.min_side)

    def class_vectors(self) -> torch.Tensor:
        """Unit word vectors of the class names, (n_classes, dim); zero rows for names the space lacks."""
        if self._class_vectors is None:
            embedding = self.space.embed(self.class_names, missing="skip")
            row = {name: i for i, name in enumerate(embedding.names)}
            vectors = torch.zeros(len(self.class_names), embedding.vectors.shape[1])
            known = [j for j, name in enumerate(self.class_names) if name in row]
            vectors[known] = torch.from_numpy(np.asarray(
                embedding.vectors[[row[self.class_names[j]] for j in known]], dtype=np.float32))
            self._class_vectors = vectors
        return self._class_vectors

    def vectors(self, store, pairs: pd.DataFrame) -> torch.Tensor:
        """Each pair's prior vector: the probability-weighted mean of its top classes' vectors.

        Parameters
        ----------
        store : ActivationStore
        pairs : pandas.DataFrame
            P rows with columns ``filter`` and ``image``.

        Returns
        -------
        torch.Tensor
            (P, dim) unit vectors (zero where no class could be embedded).
        """
        table = self.predictions(store, pairs)
        classes = np.array(table["class"], dtype=np.int64).reshape(len(pairs), self.top)
        probabilities = torch.from_numpy(np.array(table["probability"], dtype=np.float32).reshape(len(pairs), self.top))
        mixed = (probabilities[:, :, None] * self.class_vectors()[torch.from_numpy(classes)]).sum(1)
        return mixed / mixed.norm(dim=1, keepdim=True).clamp_min(1e-12)

    def predictions(self, store, pairs: pd.DataFrame) -> pd.DataFrame:
        """The model's ``top`` classes for each pair's region, computed once and cached.

        Returns
        -------
        pandas.DataFrame
            P * top rows in ``pairs`` order: ``filter, image, rank`` (1 = best), ``class``
            (index into :attr:`class_names`), ``label``, ``probability``.
        """
        wanted = pairs[["filter", "image"]].astype(np.int64).reset_index(drop=True)
        keys = wanted.assign(filter=WHOLE_IMAGE) if self.source == "image" else wanted  # one crop per image
        path = self._cache_file(store)
        cached = pd.read_parquet(path) if path.is_file() else _empty()
        todo = self._missing(keys, cached)
        if len(todo):
            with store_lock(path.with_suffix("")):  # another notebook computing the same prior: wait, then reuse
                cached = pd.read_parquet(path) if path.is_file() else _empty()
                todo = self._missing(keys, cached)
                if len(todo):
                    cached = self._compute(store, todo, cached, path)
        table = cached[cached["rank"] <= self.top].set_index(["filter", "image", "rank"])
        index = pd.MultiIndex.from_arrays([np.repeat(keys["filter"].to_numpy(), self.top),
                                           np.repeat(keys["image"].to_numpy(), self.top),
                                           np.tile(np.arange(1, self.top + 1), len(keys))],
                                          names=["filter", "image", "rank"])
        out = table.reindex(index).reset_index()
        out["filter"] = np.repeat(wanted["filter"].to_numpy(), self.top)
        out["label"] = np.asarray(self.class_names, dtype=object)[out["class"].to_numpy()]
        return out[["filter", "image", "rank", "class", "label", "probability"]]

    def region_words(self, store, pairs: pd.DataFrame, top_words: int = 5) -> pd.DataFrame:
        """What the network itself sees in each filter's regions: its classes, voted over the filter's images.

        Kept apart from the filter's own words: a class the model predicts for the crop around
        a filter's region says what the region shows the classifier, not what the filter detects.

        Parameters
        ----------
        store : ActivationStore
        pairs : pandas.DataFrame
            :meth:`FilterExplainer.pairs` rows (``filter, image, activation``).
        top_words : int

        Returns
        -------
        pandas.DataFrame
            ``filter, rank, word, votes, support``: votes sum each image's max activation times the
            class probability; support divides by the filter's summed activation.
        """
        table = self.predictions(store, pairs)
        weight = np.repeat(pairs["activation"].to_numpy(dtype=np.float64), self.top)
        table = table.assign(votes=weight * table["probability"].to_numpy(dtype=np.float64))
        votes = table.groupby(["filter", "label"], as_index=False)["votes"].sum()
        votes = votes.sort_values(["filter", "votes"], ascending=[True, False], kind="stable")
        votes["rank"] = votes.groupby("filter").cumcount() + 1
        votes = votes[votes["rank"] <= top_words]
        evidence = pairs.groupby("filter")["activation"].sum()
        votes["support"] = votes["votes"].to_numpy() / evidence.reindex(votes["filter"]).to_numpy()
        return votes.rename(columns={"label": "word"})[["filter", "rank", "word", "votes", "support"]].reset_index(
            drop=True)

    def _crops(self, store, images: np.ndarray, filters: np.ndarray) -> torch.Tensor:
        """(P, 3, S, S) model inputs: each pair's crop, or its whole image for ``source="image"``."""
        size = store.image_size
        regions = filter_regions(store, images, filters, size) if self.source == "region" else None
        pictures, crops = {}, []
        for row, image in enumerate(images):
            if image not in pictures:
                pictures[image] = self.dataset[int(image)]["image"]
            crop = pictures[image]  # already size x size: the store was built from this dataset
            if regions is not None:
                crop = crop_around(crop, regions[row], self.crop.context, self.crop.min_side, size)
            crops.append(crop)
        return torch.stack(crops)

    def _classify_features(self, store, images: np.ndarray, filters: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        """Each pair's region box on the stored map, resampled to (h, w) and run through the layers after it."""
        try:
            head = self.model.downstream(store.layer)
        except SplitError as error:
            raise SplitError(f"ClassPrior(source='features') needs the layers after {store.layer!r} alone: {error}") \
                from None
        size = store.image_size
        regions = filter_regions(store, images, filters, size)
        unique, row_of = np.unique(images, return_inverse=True)
        features = store.features(unique).float().to(self.device)
        boxes = torch.tensor([[float(r), x0, y0, x1, y1] for r, (y0, y1, x0, x1) in zip(
            row_of, (region_box(m, self.crop.context, self.crop.min_side) for m in regions))],
            dtype=torch.float32, device=self.device)
        h, w = features.shape[2:]
        pooled = roi_align(features, boxes, output_size=(h, w), spatial_scale=h / size, sampling_ratio=2,
                           aligned=True)
        with torch.no_grad():
            logits = head(pooled).float()
        if logits.dim() != 2 or logits.shape[1] != len(self.class_names):
            raise ValueError(f"the layers after {store.layer!r} give {tuple(logits.shape)} outputs, not (P, "
                             f"{len(self.class_names)}) for the class names; pass the model's class names, or "
                             "source='region'")
        probabilities, classes = logits.softmax(-1).topk(self.stored, dim=1)
        return probabilities.cpu(), classes.cpu()

    @staticmethod
    def _missing(keys: pd.DataFrame, cached: pd.DataFrame) -> pd.DataFrame:
        done = pd.MultiIndex.from_frame(cached[["filter", "image"]].drop_duplicates())
        return keys[~pd.MultiIndex.from_frame(keys).isin(done)].drop_duplicates()

    def _cache_file(self, store) -> Path:
        key = dict(self.settings, store=str(Path(store.path).resolve()), layer=store.layer)
        for unused in ("top", "weight"):
            key.pop(unused)
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
        folder = Path(store.path) / "priors"
        if (folder / f"{digest}.parquet").is_file():
            return folder / f"{digest}.parquet"  # read it even where it cannot be written (a read-only store)
        try:
            folder.mkdir(exist_ok=True)
            if not os.access(folder, os.W_OK):
                raise PermissionError(folder)
        except OSError:
            folder = cache_dir("priors")
        return folder / f"{digest}.parquet"

    def _compute(self, store, todo: pd.DataFrame, cached: pd.DataFrame, path: Path) -> pd.DataFrame:
        self.model.to(self.device)
        parts = [cached]
        todo = todo.sort_values(["image", "filter"])
        step = self.crop.batch_size * (FEATURE_BATCHES if self.source == "features" else 1)
        batches = range(0, len(todo), step)
        for n, start in enumerate(progress(batches, enabled=self.show_progress, desc="class prior")):
            part = todo.iloc[start:start + step]
            images, filters = part["image"].to_numpy(), part["filter"].to_numpy()
            if self.source == "features":
                probabilities, classes = self._classify_features(store, images, filters)
            else:
                probabilities, classes = classify(self.model, self._crops(store, images, filters), self.stored,
                                                  len(self.class_names))
            parts.append(pd.DataFrame({
                "filter": np.repeat(filters, self.stored), "image": np.repeat(images, self.stored),
                "rank": np.tile(np.arange(1, self.stored + 1), len(part)),
                "class": classes.numpy().reshape(-1),
                "probability": probabilities.numpy().reshape(-1).astype(np.float32),
            }))
            if (n + 1) % 20 == 0:  # resumable: write what is done so far
                _write(pd.concat(parts, ignore_index=True), path)
        table = pd.concat(parts, ignore_index=True)
        _write(table, path)
        return table


def _empty() -> pd.DataFrame:
    return pd.DataFrame({"filter": pd.Series(dtype=np.int64), "image": pd.Series(dtype=np.int64),
                         "rank": pd.Series(dtype=np.int64), "class": pd.Series(dtype=np.int64),
                         "probability": pd.Series(dtype=np.float32)})


def _write(table: pd.DataFrame, path: Path) -> None:
    """Replace the cache file atomically, so a crash never leaves half a table."""
    partial = path.with_suffix(f".{os.getpid()}.partial")
    table.to_parquet(partial, index=False)
    os.replace(partial, path)
