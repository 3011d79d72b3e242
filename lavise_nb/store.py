"""The activation store: one layer's activations over a dataset, on disk, self-describing.

A store is a directory::

    manifest.json          shapes, dtypes, key, model fingerprint, layer, preprocessing,
                           dataset id and size, thresholds' quantile, package version
    activations.npy        (N, C, h, w) float16 by default   (numpy .npy, memory-mapped)
    maxima.npy             (N, C) float32, max over space; -inf for unreadable images
    thresholds.npy         (C,) float32, the per-filter quantile of all spatial activations
    index.parquet          one row per image: image, image_id, path, valid, error, metadata
    objects.parquet        one row per (image, concept) mask: object, image, concept, area
    object_masks.npy       (n_objects, ceil(S*S/8)) uint8, packed bool masks at input size
    object_masks_small.npy (n_objects, h, w) float32, masks area-averaged to the map size

It is written by :meth:`ActivationStore.build`, which streams the dataset through
the model once. A key (model fingerprint, layer, dataset id, preprocessing, dtype)
decides reuse; an interrupted build resumes from its last complete batch, and a
store only counts as complete once ``manifest.json`` exists.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap

from ._cache import cache_dir
from ._progress import progress
from .probe import LayerProbe, TargetModel, resolve_device

__all__ = ["ActivationStore", "store_key"]

_VERSION = "0.1.0"
_FORMAT = 1


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")


def _write_json(path: Path, payload: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def store_key(model: TargetModel, layer: str, dataset, dtype: str = "float16") -> dict:
    """The fields that decide whether an existing store can be reused."""
    return {
        "format": _FORMAT,
        "model": model.fingerprint,
        "layer": layer,
        "dataset": dataset.dataset_id,
        "preprocess": dataset.preprocess.describe(),
        "dtype": dtype,
    }


def _key_hash(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def _quantile_by_channel(activations: np.ndarray, valid: np.ndarray, quantile: float,
                         block_bytes: int = 256 << 20) -> np.ndarray:
    """Exact per-channel quantile of (N, C, h, w) activations over the valid images."""
    n, c, h, w = activations.shape
    rows = np.flatnonzero(valid)
    out = np.zeros(c, dtype=np.float32)
    if rows.size == 0:
        return out
    step = max(1, block_bytes // max(1, rows.size * h * w * 4))
    for start in range(0, c, step):
        block = np.asarray(activations[rows, start:start + step], dtype=np.float32)
        block = block.transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        out[start:start + step] = np.quantile(block, quantile, axis=1)
    return out


class ActivationStore:
    """A built (or opened) activation store; see the module docstring for the layout.

    Use :meth:`build` to make or reuse one and :meth:`open` to read one.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
    activations : numpy.ndarray
        (N, C, h, w) memory-mapped, read-only.
    maxima : numpy.ndarray
        (N, C) float32 max over space per image and filter.
    thresholds : numpy.ndarray
        (C,) float32, T_u with P(a_u > T_u) = 1 - quantile over all spatial positions.
    index : pandas.DataFrame
        One row per image, in dataset order.
    objects : pandas.DataFrame
        One row per (image, concept) mask.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        manifest = self.path / "manifest.json"
        if not manifest.is_file():
            raise FileNotFoundError(
                f"{self.path} is not a complete activation store (no manifest.json); "
                "build it with ActivationStore.build(...)"
            )
        self.manifest = json.loads(manifest.read_text())
        self.activations = np.load(self.path / "activations.npy", mmap_mode="r")
        self.maxima = np.load(self.path / "maxima.npy", mmap_mode="r")
        self.thresholds = np.load(self.path / "thresholds.npy")
        self.index = pd.read_parquet(self.path / "index.parquet")
        self.objects = pd.read_parquet(self.path / "objects.parquet")
        self._masks = np.load(self.path / "object_masks.npy", mmap_mode="r")
        self._masks_small = np.load(self.path / "object_masks_small.npy", mmap_mode="r")

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a complete store read-only."""
        return cls(path)

    def __repr__(self) -> str:
        n, c, h, w = self.shape
        return (f"ActivationStore({self.manifest['model_name']} {self.layer!r}: {n} images x "
                f"{c} filters x {h}x{w}, {len(self.objects)} object masks, at {self.path})")

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(N, C, h, w)."""
        return tuple(self.activations.shape)

    @property
    def layer(self) -> str:
        return self.manifest["key"]["layer"]

    @property
    def image_size(self) -> int:
        return int(self.manifest["image_size"])

    @property
    def concepts(self) -> list[str]:
        """Sorted concept names that have at least one mask in the store."""
        return sorted(self.objects["concept"].unique())

    @property
    def stuff(self) -> list[str]:
        """Concepts whose supercategory is "background" (scene "stuff", not objects)."""
        groups = self.manifest.get("supercategories", {})
        return sorted(c for c in self.concepts if groups.get(c) == "background")

    @property
    def valid(self) -> np.ndarray:
        """(N,) bool, images that were read and passed through the model."""
        return self.index["valid"].to_numpy()

    def features(self, images, device="cpu") -> torch.Tensor:
        """Activations of some images as float32, (len(images), C, h, w)."""
        rows = np.asarray(images, dtype=np.int64)
        order = np.argsort(rows)
        block = np.asarray(self.activations[rows[order]], dtype=np.float32)
        out = np.empty_like(block)
        out[order] = block
        return torch.from_numpy(out).to(device)

    def top_indices(self, p: int = 25, filters=None) -> np.ndarray:
        """Indices of the p images with the highest max activation, per filter.

        Returns
        -------
        numpy.ndarray
            (len(filters), p) int64, best first; ties broken by image order.
        """
        maxima = np.asarray(self.maxima, dtype=np.float32)
        if filters is not None:
            maxima = maxima[:, np.asarray(filters)]
        p = min(p, maxima.shape[0])
        order = np.argsort(-maxima, axis=0, kind="stable")[:p]
        return order.T.copy()

    def top_images(self, p: int = 25, filters=None) -> pd.DataFrame:
        """Tidy top-p table: filter, rank, image, image_id, activation, above_threshold."""
        filters = np.arange(self.shape[1]) if filters is None else np.asarray(filters)
        top = self.top_indices(p, filters)
        maxima = np.asarray(self.maxima)
        rows = []
        for f, images in zip(filters, top):
            for rank, image in enumerate(images):
                rows.append((int(f), rank, int(image), float(maxima[image, f])))
        table = pd.DataFrame(rows, columns=["filter", "rank", "image", "activation"])
        table["image_id"] = self.index["image_id"].to_numpy()[table["image"]]
        table["above_threshold"] = table["activation"].to_numpy() > self.thresholds[table["filter"]]
        return table

    def activation_map(self, image: int, filter: int, size: int | None = None) -> torch.Tensor:
        """One filter's map for one image, bilinearly upsampled to ``size`` (default: input size).

        Returns
        -------
        torch.Tensor
            (size, size) float32.
        """
        size = size or self.image_size
        amap = torch.from_numpy(np.asarray(self.activations[image, filter], dtype=np.float32))
        return F.interpolate(amap[None, None], size=(size, size), mode="bilinear", align_corners=False)[0, 0]

    def object_masks(self, objects) -> torch.Tensor:
        """Full-size masks of some objects, (n, S, S) bool."""
        rows = np.asarray(objects, dtype=np.int64)
        s = self.image_size
        bits = np.unpackbits(np.asarray(self._masks[rows]), axis=1, count=s * s)
        return torch.from_numpy(bits.reshape(len(rows), s, s).astype(bool))

    def object_masks_small(self, objects=None) -> torch.Tensor:
        """Masks area-averaged to the map size, (n, h, w) float32 in [0, 1]."""
        if objects is None:
            return torch.from_numpy(np.asarray(self._masks_small, dtype=np.float32))
        return torch.from_numpy(np.asarray(self._masks_small[np.asarray(objects)], dtype=np.float32))

    # ------------------------------------------------------------------ building
    @classmethod
    def build(cls, model: TargetModel, layer: str, dataset, root: str | Path | None = None, *,
              batch_size: int = 64, num_workers: int | None = None, device="auto",
              dtype: str = "float16", quantile: float = 0.995, amp: bool = False,
              show_progress: bool = True, max_batches: int | None = None) -> "ActivationStore":
        """Build the store of ``model``'s ``layer`` over ``dataset``, or reuse a matching one.

        Parameters
        ----------
        model : TargetModel
        layer : str
            Dotted layer name.
        dataset : torch.utils.data.Dataset
            Follows the sample contract of :mod:`lavise_nb.datasets`.
        root : path, optional
            Parent folder of stores (default: the cache's ``stores/``). The store's
            own folder name holds the key's hash, so different keys never collide.
        batch_size, num_workers : int
            DataLoader settings (workers default to ``min(2, cpu count)``).
        device : str
            ``"auto"`` (cuda when present), ``"cpu"`` or ``"cuda"``.
        dtype : str
            ``"float16"`` (default) or ``"float32"`` storage for activations.
        quantile : float
            Threshold quantile; 0.995 gives P(a_u > T_u) = 0.005 as Network Dissection.
        amp : bool
            Autocast extraction to float16 on cuda.
        max_batches : int, optional
            Stop after this many batches without completing (used to test resuming).
        """
        from .datasets import collate_samples

        key = store_key(model, layer, dataset, dtype)
        root = Path(root) if root is not None else cache_dir("stores")
        path = root / f"{_slug(model.name)}_{_slug(layer)}_{_key_hash(key)}"
        if (path / "manifest.json").is_file():
            store = cls(path)
            if store.manifest["key"] == key:
                return store
            raise RuntimeError(f"{path} holds a store with another key; remove it or choose another root")
        path.mkdir(parents=True, exist_ok=True)
        state_file = path / "building.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else None
        if state is not None and state.get("key") != key:
            shutil.rmtree(path)
            path.mkdir(parents=True)
            state = None

        device = resolve_device(device)
        model.to(device)
        n = len(dataset)
        done = state["done"] if state else 0
        batch_no = state["batches"] if state else 0
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(done, n)), batch_size=batch_size, shuffle=False,
            num_workers=min(2, os.cpu_count() or 1) if num_workers is None else num_workers,
            collate_fn=collate_samples, pin_memory=device.type == "cuda",
        )
        acts = maxima = None
        if state:
            acts = open_memmap(path / "activations.npy", mode="r+")
            maxima = open_memmap(path / "maxima.npy", mode="r+")
        parts = path / "parts"
        parts.mkdir(exist_ok=True)
        bar = progress(total=n, initial=done, enabled=show_progress, desc=f"store {model.name}:{layer}")
        try:
            with LayerProbe(model, layer) as probe:
                for batch in loader:
                    if max_batches is not None and batch_no >= max_batches:
                        break
                    images = batch["images"].to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                        features = probe(images).float()
                    if acts is None:
                        _, c, h, w = features.shape
                        acts = open_memmap(path / "activations.npy", mode="w+", dtype=dtype, shape=(n, c, h, w))
                        maxima = open_memmap(path / "maxima.npy", mode="w+", dtype=np.float32, shape=(n, c))
                    index = batch["index"].numpy()
                    lo, hi = int(index[0]), int(index[-1]) + 1
                    bad = np.array([e is not None for e in batch["errors"]])
                    if bad.any():
                        features[torch.from_numpy(bad).to(device)] = 0
                    block = features.cpu().numpy()
                    acts[lo:hi] = block.astype(dtype)
                    batch_max = block.reshape(block.shape[0], block.shape[1], -1).max(axis=2)
                    batch_max[bad] = -np.inf
                    maxima[lo:hi] = batch_max
                    cls._write_part(parts / f"{batch_no:06d}.npz", batch, acts.shape[2:])
                    acts.flush()
                    maxima.flush()
                    batch_no += 1
                    done = hi
                    _write_json(state_file, {"key": key, "done": done, "batches": batch_no})
                    bar.update(hi - lo)
        finally:
            bar.close()
        if done < n:
            return None
        return cls._finalize(path, key, model, dataset, quantile, parts)

    @staticmethod
    def _write_part(file: Path, batch: dict, map_size) -> None:
        packed, small, image, concept, area, errors = [], [], [], [], [], []
        for masks, names, i, error in zip(batch["masks"], batch["concepts"], batch["index"].tolist(),
                                          batch["errors"]):
            errors.append("" if error is None else str(error))
            if error is not None or len(names) == 0:
                continue
            masks = masks.bool()
            packed.append(np.packbits(masks.reshape(len(names), -1).numpy(), axis=1))
            small.append(F.adaptive_avg_pool2d(masks.float()[None], tuple(map_size))[0].numpy())
            image += [i] * len(names)
            concept += list(names)
            area += masks.reshape(len(names), -1).sum(1).tolist()
        s = batch["images"].shape[-1]
        np.savez(
            file.with_suffix(".tmp.npz"),
            packed=np.concatenate(packed) if packed else np.zeros((0, (s * s + 7) // 8), np.uint8),
            small=np.concatenate(small).astype(np.float32) if small else np.zeros((0, *map_size), np.float32),
            image=np.asarray(image, np.int64), concept=np.asarray(concept, dtype=str),
            area=np.asarray(area, np.int64), index=batch["index"].numpy(),
            errors=np.asarray(errors, dtype=str),
        )
        os.replace(file.with_suffix(".tmp.npz"), file)

    @classmethod
    def _finalize(cls, path: Path, key: dict, model: TargetModel, dataset, quantile: float,
                  parts: Path) -> "ActivationStore":
        loaded = [np.load(p) for p in sorted(parts.glob("[0-9]*.npz"))]
        errors = np.concatenate([p["errors"] for p in loaded])
        objects = pd.DataFrame({
            "image": np.concatenate([p["image"] for p in loaded]),
            "concept": np.concatenate([p["concept"] for p in loaded]).astype(str),
            "area": np.concatenate([p["area"] for p in loaded]),
        })
        objects.insert(0, "object", np.arange(len(objects)))
        np.save(path / "object_masks.npy", np.concatenate([p["packed"] for p in loaded]))
        np.save(path / "object_masks_small.npy", np.concatenate([p["small"] for p in loaded]))
        objects.to_parquet(path / "objects.parquet", index=False)

        index = dataset.records.reset_index(drop=True).copy()
        index.insert(0, "image", np.arange(len(index)))
        index["valid"] = errors == ""
        index["error"] = errors
        index.to_parquet(path / "index.parquet", index=False)

        acts = np.load(path / "activations.npy", mmap_mode="r")
        thresholds = _quantile_by_channel(acts, index["valid"].to_numpy(), quantile)
        np.save(path / "thresholds.npy", thresholds)
        n, c, h, w = acts.shape
        _write_json(path / "manifest.json", {
            "key": key,
            "key_hash": _key_hash(key),
            "model_name": model.name,
            "shape": [n, c, h, w],
            "dtype": str(acts.dtype),
            "image_size": int(dataset.preprocess.size),
            "quantile": quantile,
            "n_objects": int(len(objects)),
            "n_invalid": int((errors != "").sum()),
            "supercategories": dict(getattr(dataset, "supercategories", {}) or {}),
            "package_version": _VERSION,
        })
        shutil.rmtree(parts)
        (path / "building.json").unlink(missing_ok=True)
        return cls(path)
