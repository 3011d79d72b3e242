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
    histogram.npz          float16 stores: the per-filter tail histogram the thresholds come from

It is written by :meth:`ActivationStore.build`, which streams the dataset through
the model once (thresholds included: they come from an exact streaming histogram of
the stored float16 values, so memory does not grow with the dataset). A key (model
fingerprint, layer, dataset id, preprocessing, dtype) decides reuse; an interrupted
build resumes from its last complete batch, and a store only counts as complete once
``manifest.json`` exists.

Large datasets can be built in shards, ``build(..., shard=(i, n))`` (contiguous image
ranges, one folder each, on any number of processes or machines), and combined with
:meth:`ActivationStore.merge`: the merged folder holds the index, objects, maxima and
thresholds over all shards and reads the shards' activations and masks through
:class:`ConcatRows` views.
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

from .._utils.cache import cache_dir
from .._utils.progress import progress
from .._utils.version import VERSION
from ..probe import LayerProbe, TargetModel, resolve_device

__all__ = ["ActivationStore", "ConcatRows", "store_key"]

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


def _quantile_by_channel(activations, valid: np.ndarray, quantile: float, block_bytes: int = 64 << 20,
                         channels=None) -> np.ndarray:
    """Exact per-channel quantile of (N, C, h, w) activations over the valid images (a second pass).

    Used for float32 stores and for channels the streaming histogram cannot settle.
    """
    n, c, h, w = activations.shape
    channels = np.arange(c) if channels is None else np.asarray(channels, dtype=np.int64)
    rows = np.flatnonzero(valid)
    out = np.zeros(len(channels), dtype=np.float32)
    if rows.size == 0 or len(channels) == 0:
        return out
    step = max(1, block_bytes // max(1, rows.size * h * w * 4))
    for start in range(0, len(channels), step):
        wanted = channels[start:start + step]
        lo, hi = int(wanted.min()), int(wanted.max()) + 1
        block = np.asarray(activations[rows, lo:hi], dtype=np.float32)[:, wanted - lo]
        block = block.transpose(1, 0, 2, 3).reshape(block.shape[1], -1)
        out[start:start + step] = np.quantile(block, quantile, axis=1)
    return out


_HALF = 1 << 15          # bins: the bit patterns of non-negative float16 values (+0 ... inf, NaN)


class _TailHistogram:
    """Exact per-channel quantiles of float16 values in one streaming pass, in constant memory.

    Every non-negative float16 value has its own bin (its bit pattern, which sorts like the
    value), so quantiles of the stored float16 activations are exact. To keep the per-batch
    cost low, only values at or above a per-channel floor are binned (the floor is a lower
    quantile of the first batch); values below it are only counted. A channel whose
    quantile falls below its floor (rare) is settled by an exact second pass over it.
    Histograms of shards add up, so a merged store's thresholds need no pass over the data.
    """

    def __init__(self, channels: int, device, floors=None):
        self.device = torch.device(device)
        # int32 counts: 4 bytes x C x 32768 bins (42 MB for 320 channels), whatever the dataset size
        self.counts = torch.zeros(channels * _HALF, dtype=torch.int32, device=self.device)
        self.below = torch.zeros(channels, dtype=torch.int64, device=self.device)
        self.floors = None if floors is None else torch.as_tensor(floors, dtype=torch.int32, device=self.device)
        self._offsets = torch.arange(channels, dtype=torch.int32, device=self.device)[:, None] * _HALF

    @staticmethod
    def keys(half: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) float16 -> (C, B*...) int32 bit patterns; negative values give negative keys."""
        bits = half.view(torch.int16).transpose(0, 1).reshape(half.shape[1], -1)
        return bits.to(torch.int32)

    def set_floors(self, keys: torch.Tensor, quantile: float) -> None:
        tail = 1.0 - quantile
        floor_q = max(0.0, 1.0 - 4 * tail - 0.01)
        # bit patterns of non-negative halves sort like the values; negative ones are below 0
        k = max(1, int(floor_q * keys.shape[1]))
        self.floors = keys.kthvalue(k, dim=1).values.clamp_min(0).to(torch.int32)

    def add(self, half: torch.Tensor, quantile: float) -> None:
        """Add a (B, C, h, w) float16 block (valid images only)."""
        if half.shape[0] == 0:
            return
        keys = self.keys(half)
        if self.floors is None:
            self.set_floors(keys, quantile)
        take = keys >= self.floors[:, None]
        self.below += (~take).sum(1)
        picked = (keys + self._offsets)[take]
        self.counts.index_put_((picked.long(),), torch.ones_like(picked), accumulate=True)

    def state(self) -> dict:
        counts = self.counts.view(len(self.below), _HALF).cpu().numpy()
        return {"floors": self.floors.cpu().numpy() if self.floors is not None else np.zeros(len(self.below), np.int32),
                "below": self.below.cpu().numpy(), "counts": counts}

    def save(self, path: Path) -> None:
        """Write ``histogram.npz``: floors, below and the non-zero bins only (small on disk)."""
        _save_histogram(path, self.state())


def _save_histogram(path: Path, state: dict) -> None:
    counts = np.asarray(state["counts"])
    channel, bins = np.nonzero(counts)
    tmp = path.with_suffix(".tmp.npz")
    np.savez(tmp, floors=np.asarray(state["floors"], np.int32), below=np.asarray(state["below"], np.int64),
             channel=channel.astype(np.int32), bin=bins.astype(np.uint16),
             count=counts[channel, bins].astype(np.int64), channels=np.int64(counts.shape[0]))
    os.replace(tmp, path)


def _histogram_quantiles(floors: np.ndarray, below: np.ndarray, counts: np.ndarray, quantile: float):
    """Quantiles from a tail histogram, linear interpolation as ``np.quantile``.

    ``counts`` is (C, 32768) dense or a sparse ``(channel, bin, count)`` triple sorted by
    channel then bin. Returns (values float32 (C,), channels whose quantile fell below the floor).
    """
    if isinstance(counts, tuple):
        channel, bins, count = (np.asarray(a) for a in counts)
    else:
        channel, bins = np.nonzero(counts)
        count = np.asarray(counts)[channel, bins]
    c = len(below)
    count = count.astype(np.int64)
    above = np.bincount(channel, weights=count, minlength=c).astype(np.int64)
    total = below + above
    position = (total - 1) * quantile
    lo = np.floor(position).astype(np.int64)
    hi = np.minimum(lo + 1, np.maximum(total - 1, 0))
    frac = position - lo
    unresolved = np.flatnonzero((lo < below) & (total > 0))
    cum = np.cumsum(count)                           # over (channel, bin), channel-major
    base = np.concatenate([[0], np.cumsum(above)])[:-1]

    def order_statistic(rank):
        # rank r (0-based over the channel's sorted values) is the first bin whose cumulative count exceeds r
        target = base + np.clip(rank - below, 0, None)
        at = np.minimum(np.searchsorted(cum, target, side="right"), max(len(cum) - 1, 0))
        if len(cum) == 0:
            return np.zeros(c)
        return bins[at].astype(np.uint16).view(np.float16).astype(np.float64)

    a, b = order_statistic(lo), order_statistic(hi)
    values = np.where((total > 0) & (above > 0), a + (b - a) * frac, 0.0).astype(np.float32)
    return values, unresolved


def _merge_histograms(states: list[dict]) -> dict:
    """Sum shard histograms that used different floors: below the highest floor only counts remain."""
    floors = np.max([s["floors"] for s in states], axis=0).astype(np.int64)
    c = len(floors)
    below = np.zeros(c, dtype=np.int64)
    keys, counts = [], []
    for s in states:
        channel, bins, count = s["counts"]
        keep = bins.astype(np.int64) >= floors[channel]
        below += s["below"] + np.bincount(channel[~keep], weights=count[~keep], minlength=c).astype(np.int64)
        keys.append(channel[keep].astype(np.int64) * _HALF + bins[keep])
        counts.append(count[keep])
    keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(counts), minlength=len(keys)).astype(np.int64)
    return {"floors": floors, "below": below,
            "counts": ((keys // _HALF).astype(np.int64), (keys % _HALF).astype(np.uint16), summed)}


def _load_histogram(path: Path):
    if not (path / "histogram.npz").is_file():
        return None
    with np.load(path / "histogram.npz") as data:
        return {"floors": data["floors"], "below": data["below"],
                "counts": (data["channel"].astype(np.int64), data["bin"], data["count"])}


class _RowWriter:
    """Write rows of a .npy file with plain file writes (no memory map: its dirty pages would
    count towards the process's resident memory and grow with the dataset)."""

    def __init__(self, file: Path, shape=None, dtype=None):
        if shape is not None:
            array = open_memmap(file, mode="w+", dtype=dtype, shape=tuple(shape))   # header + sparse file
        else:
            array = np.load(file, mmap_mode="r")
        self.offset, self.dtype = array.offset, array.dtype
        self.row_bytes = int(np.prod(array.shape[1:])) * array.dtype.itemsize
        self.shape = array.shape
        del array
        self._fd = os.open(file, os.O_RDWR)

    def write(self, start: int, block: np.ndarray) -> None:
        data = np.ascontiguousarray(block, dtype=self.dtype)
        if data.size:
            view = memoryview(data.reshape(-1).view(np.uint8))
            at, written = self.offset + start * self.row_bytes, 0
            while written < len(view):
                written += os.pwrite(self._fd, view[written:], at + written)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class _StoreCollate:
    """DataLoader collate for building: also packs and area-averages the masks, so that this
    work runs in the loader's worker processes, beside the forward pass, not after it."""

    def __init__(self, map_size, offset: int = 0):
        self.map_size = tuple(int(v) for v in map_size)
        self.offset = offset

    def __call__(self, samples: list) -> dict:
        from ..datasets import collate_samples

        batch = collate_samples(samples)
        batch["part"] = _mask_part(batch, self.map_size, self.offset)
        del batch["masks"]          # no need to send full-size masks back to the main process
        return batch


def _adaptive_weights(size: int, out: int) -> np.ndarray:
    """(out, size) averaging matrix of adaptive average pooling (PyTorch's bins)."""
    weights = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        weights[i, lo:hi] = 1.0 / (hi - lo)
    return weights


def _pool_masks(masks: np.ndarray, map_size) -> np.ndarray:
    """Area-average (K, S, S) bool masks to (K, h, w) float32, as ``F.adaptive_avg_pool2d``.

    Block sums when the map size divides the image size (exact), else two small matrix
    products; both are ~50x faster than adaptive_avg_pool2d on full-size masks on a CPU.
    """
    k, height, width = masks.shape
    h, w = (int(v) for v in map_size)
    if height % h == 0 and width % w == 0:
        sums = masks.reshape(k, h, height // h, w, width // w).sum((2, 4), dtype=np.int32)
        return (sums / np.float32((height // h) * (width // w))).astype(np.float32)
    rows, cols = _adaptive_weights(height, h), _adaptive_weights(width, w)
    return np.einsum("hs,kst,wt->khw", rows, masks.astype(np.float32), cols, optimize=True).astype(np.float32)


def _mask_part(batch: dict, map_size, offset: int = 0) -> dict:
    """The arrays of one batch's part file: packed and small masks, image, concept, area, errors."""
    packed, small, image, concept, area, errors = [], [], [], [], [], []
    for masks, names, i, error in zip(batch["masks"], batch["concepts"], batch["index"].tolist(), batch["errors"]):
        errors.append("" if error is None else str(error))
        if error is not None or len(names) == 0:
            continue
        full = masks.bool().numpy()
        flat = full.reshape(len(names), -1)
        packed.append(np.packbits(flat, axis=1))
        small.append(_pool_masks(full, map_size))
        image += [i - offset] * len(names)
        concept += list(names)
        area += np.count_nonzero(flat, axis=1).tolist()
    s = batch["images"].shape[-1]
    return dict(
        packed=np.concatenate(packed) if packed else np.zeros((0, (s * s + 7) // 8), np.uint8),
        small=np.concatenate(small).astype(np.float32) if small else np.zeros((0, *map_size), np.float32),
        image=np.asarray(image, np.int64), concept=np.asarray(concept, dtype=str),
        area=np.asarray(area, np.int64), index=batch["index"].numpy() - offset,
        errors=np.asarray(errors, dtype=str),
    )


class ConcatRows:
    """A read-only view that concatenates arrays (the shards' memory maps) along the first axis.

    Supports what the toolkit uses: ``view[i]``, ``view[i, f]``, ``view[rows]``,
    ``view[rows, c0:c1]``, ``view[a:b]``, ``np.asarray(view)``, ``.shape``, ``.dtype``, ``len``.
    Indexing returns numpy arrays (only the requested rows are read).
    """

    def __init__(self, parts):
        self.parts = list(parts)
        if not self.parts:
            raise ValueError("ConcatRows needs at least one array")
        tail = {tuple(p.shape[1:]) for p in self.parts}
        dtypes = {np.dtype(p.dtype) for p in self.parts}
        if len(tail) != 1 or len(dtypes) != 1:
            raise ValueError(f"arrays differ in trailing shape or dtype: {tail}, {dtypes}")
        self.starts = np.cumsum([0] + [len(p) for p in self.parts])
        self.shape = (int(self.starts[-1]), *tail.pop())
        self.dtype = dtypes.pop()
        self.ndim = len(self.shape)

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"ConcatRows(shape={self.shape}, dtype={self.dtype}, parts={len(self.parts)})"

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __array__(self, dtype=None, copy=None):
        out = np.concatenate([np.asarray(p) for p in self.parts])
        return out if dtype is None else out.astype(dtype, copy=False)

    def _locate(self, i: int) -> tuple[int, int]:
        n = self.shape[0]
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} rows")
        i %= n
        part = int(np.searchsorted(self.starts, i, side="right") - 1)
        return part, i - int(self.starts[part])

    def __getitem__(self, key):
        first, rest = (key[0], key[1:]) if isinstance(key, tuple) else (key, ())
        if first is Ellipsis:
            first, rest = slice(None), (Ellipsis, *rest)
        if isinstance(first, (int, np.integer)):
            part, local = self._locate(int(first))
            return self.parts[part][(local, *rest)]
        if isinstance(first, slice):
            start, stop, step = first.indices(self.shape[0])
            if step == 1:
                pieces = []
                for k, part in enumerate(self.parts):
                    lo, hi = max(start, self.starts[k]), min(stop, self.starts[k + 1])
                    if lo < hi:
                        pieces.append(np.asarray(part[(slice(lo - self.starts[k], hi - self.starts[k]), *rest)]))
                if pieces:
                    return np.concatenate(pieces)
                rows = np.zeros(0, dtype=np.int64)
            else:
                rows = np.arange(start, stop, step)
        else:
            rows = np.asarray(first)
            if rows.dtype == bool:
                rows = np.flatnonzero(rows)
        rows = rows.astype(np.int64).reshape(-1)
        n = self.shape[0]
        if rows.size and (rows.min() < -n or rows.max() >= n):
            raise IndexError(f"row index out of range for {n} rows")
        rows = rows % n if n else rows
        which = np.searchsorted(self.starts, rows, side="right") - 1
        out = None
        for k in np.unique(which):
            sel = np.flatnonzero(which == k)
            block = np.asarray(self.parts[k][(rows[sel] - self.starts[k], *rest)])
            if out is None:
                out = np.empty((len(rows), *block.shape[1:]), dtype=block.dtype)
            out[sel] = block
        if out is None:
            probe = np.asarray(self.parts[0][(np.zeros(0, dtype=np.int64), *rest)])
            out = probe
        return out


class ActivationStore:
    """A built (or opened) activation store; see the module docstring for the layout.

    Use :meth:`build` to make or reuse one and :meth:`open` to read one.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
    activations : numpy.ndarray or ConcatRows
        (N, C, h, w) memory-mapped, read-only (a :class:`ConcatRows` view of the shards'
        memory maps for a merged store).
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
        shards = self.manifest.get("shards")
        if shards:
            paths = [(self.path / shard).resolve() for shard in shards]
            missing = [str(q) for q in paths if not (q / "manifest.json").is_file()]
            if missing:
                raise FileNotFoundError(f"{self.path} lists shards that are missing or incomplete: {missing}")
            parts = [np.load(q / "activations.npy", mmap_mode="r") for q in paths]
            self.activations = ConcatRows(parts)
            self._masks = ConcatRows([np.load(q / "object_masks.npy", mmap_mode="r") for q in paths])
            self._masks_small = ConcatRows([np.load(q / "object_masks_small.npy", mmap_mode="r") for q in paths])
            self.shard_paths = paths
        else:
            self.activations = np.load(self.path / "activations.npy", mmap_mode="r")
            self._masks = np.load(self.path / "object_masks.npy", mmap_mode="r")
            self._masks_small = np.load(self.path / "object_masks_small.npy", mmap_mode="r")
            self.shard_paths = None
        self.maxima = np.load(self.path / "maxima.npy", mmap_mode="r")
        self.thresholds = np.load(self.path / "thresholds.npy")
        self.index = pd.read_parquet(self.path / "index.parquet")
        self.objects = pd.read_parquet(self.path / "objects.parquet")

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
        """Activations of some images as float32, (len(images), C, h, w).

        Each distinct image is read once, in file order (repeated images cost nothing extra).
        """
        rows = np.asarray(images, dtype=np.int64).reshape(-1)
        unique, inverse = np.unique(rows, return_inverse=True)
        block = torch.from_numpy(np.ascontiguousarray(self.activations[unique]))
        block = block.to(device).float() if torch.device(device).type != "cpu" else block.float()
        if len(unique) == len(rows) and np.array_equal(unique, rows):
            return block
        return block[torch.from_numpy(inverse.reshape(-1)).to(block.device)]

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
              show_progress: bool = True, max_batches: int | None = None,
              shard: tuple[int, int] | None = None) -> "ActivationStore":
        """Build the store of ``model``'s ``layer`` over ``dataset``, or reuse a matching one.

        One pass over the data: activations are written as they come (plain file writes, so
        resident memory does not grow with the dataset), maxima are taken in float32 and the
        thresholds come from a streaming histogram of the stored float16 values (exact).

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
        shard : (i, n), optional
            Build only shard ``i`` of ``n``: the contiguous image range
            ``[i * N // n, (i + 1) * N // n)``, into its own folder (same key, plus the shard
            in the folder name and manifest). Combine the shards with :meth:`merge`.
        """
        key = store_key(model, layer, dataset, dtype)
        root = Path(root) if root is not None else cache_dir("stores")
        total = len(dataset)
        shard_info = None
        name = f"{_slug(model.name)}_{_slug(layer)}_{_key_hash(key)}"
        if shard is not None:
            i, count = (int(v) for v in shard)
            if not (count >= 1 and 0 <= i < count):
                raise ValueError(f"shard must be (i, n) with 0 <= i < n, not {shard!r}")
            start, stop = i * total // count, (i + 1) * total // count
            shard_info = {"index": i, "count": count, "start": start, "stop": stop, "total": total}
            name += f"_shard{i:0{len(str(count - 1))}d}of{count}"
        else:
            start, stop = 0, total
        path = root / name
        if (path / "manifest.json").is_file():
            store = cls(path)
            if store.manifest["key"] == key and store.manifest.get("shard") == shard_info:
                return store
            raise RuntimeError(f"{path} holds a store with another key; remove it or choose another root")
        path.mkdir(parents=True, exist_ok=True)
        state_file = path / "building.json"
        state = json.loads(state_file.read_text()) if state_file.is_file() else None
        if state is not None and (state.get("key") != key or state.get("shard") != shard_info):
            shutil.rmtree(path)
            path.mkdir(parents=True)
            state = None

        device = resolve_device(device)
        model.to(device)
        n = stop - start
        done = state["done"] if state else 0
        batch_no = state["batches"] if state else 0
        size = int(dataset.preprocess.size)
        with LayerProbe(model, layer) as probe:     # the map size, so that workers can pool the masks
            map_size = probe(torch.zeros(1, 3, size, size, device=device)).shape[2:]
        loader = torch.utils.data.DataLoader(
            torch.utils.data.Subset(dataset, range(start + done, stop)), batch_size=batch_size, shuffle=False,
            num_workers=min(2, os.cpu_count() or 1) if num_workers is None else num_workers,
            collate_fn=_StoreCollate(map_size, start), pin_memory=device.type == "cuda",
        )
        parts = path / "parts"
        parts.mkdir(exist_ok=True)
        acts = maxima = histogram = None
        if state and done > 0:
            acts = _RowWriter(path / "activations.npy")
            maxima = _RowWriter(path / "maxima.npy")
            if dtype == "float16":
                histogram = cls._resume_histogram(path, parts, done, acts.shape[1], state.get("floors"), device,
                                                  quantile)
        bar = progress(total=n, initial=done, enabled=show_progress, desc=f"store {model.name}:{layer}")
        try:
            with LayerProbe(model, layer) as probe:
                for batch in loader:
                    if max_batches is not None and batch_no >= max_batches:
                        break
                    images = batch["images"].to(device, non_blocking=True)
                    with torch.autocast(device.type, dtype=torch.float16, enabled=amp and device.type == "cuda"):
                        features = probe(images)
                    features = features.float()
                    if acts is None:
                        _, c, h, w = features.shape
                        acts = _RowWriter(path / "activations.npy", (n, c, h, w), dtype)
                        maxima = _RowWriter(path / "maxima.npy", (n, c), np.float32)
                        if dtype == "float16":
                            histogram = _TailHistogram(c, device)
                    index = batch["index"].numpy() - start
                    lo, hi = int(index[0]), int(index[-1]) + 1
                    bad = torch.tensor([e is not None for e in batch["errors"]], device=device)
                    if bad.any():
                        features[bad] = 0
                    batch_max = features.amax(dim=(2, 3))
                    if bad.any():
                        batch_max[bad] = -torch.inf
                    stored = features.to(getattr(torch, dtype))
                    if histogram is not None:
                        histogram.add(stored[~bad] if bad.any() else stored, quantile)
                    acts.write(lo, stored.cpu().numpy())
                    maxima.write(lo, batch_max.cpu().numpy())
                    cls._write_part(parts / f"{batch_no:06d}.npz", batch, acts.shape[2:], start)
                    batch_no += 1
                    done = hi
                    _write_json(state_file, {
                        "key": key, "shard": shard_info, "done": done, "batches": batch_no,
                        "floors": None if histogram is None or histogram.floors is None
                        else histogram.floors.cpu().tolist()})
                    bar.update(hi - lo)
        finally:
            bar.close()
            for writer in (acts, maxima):
                if writer is not None:
                    writer.close()
        if done < n:
            return None
        if histogram is not None:
            histogram.save(path / "histogram.npz")
        return cls._finalize(path, key, model, dataset, quantile, parts, shard_info)

    @classmethod
    def _resume_histogram(cls, path: Path, parts: Path, done: int, channels: int, floors, device,
                          quantile: float, block: int = 256) -> "_TailHistogram":
        """Rebuild the threshold histogram of the rows an interrupted build already wrote."""
        errors = []
        for part in sorted(parts.glob("[0-9]*.npz")):
            with np.load(part) as data:
                errors.append(data["errors"])
        valid = np.concatenate(errors)[:done] == "" if errors else np.zeros(0, bool)
        histogram = _TailHistogram(channels, device, floors)
        written = np.load(path / "activations.npy", mmap_mode="r")
        for lo in range(0, done, block):
            rows = lo + np.flatnonzero(valid[lo:lo + block])
            if rows.size:
                histogram.add(torch.from_numpy(np.ascontiguousarray(written[rows])).to(device), quantile)
        return histogram

    @staticmethod
    def _write_part(file: Path, batch: dict, map_size, offset: int = 0) -> None:
        part = batch["part"] if "part" in batch else _mask_part(batch, map_size, offset)
        np.savez(file.with_suffix(".tmp.npz"), **part)
        os.replace(file.with_suffix(".tmp.npz"), file)

    @staticmethod
    def _concat_parts(files: list, name: str, out: Path) -> int:
        """Stream one array of every part into one .npy, a part at a time (constant memory)."""
        shapes = []
        for f in files:
            with np.load(f) as data:
                shapes.append((data[name].shape, data[name].dtype))
        rows = sum(shape[0] for shape, _ in shapes)
        tail, dtype = shapes[0][0][1:], shapes[0][1]
        writer = _RowWriter(out, (rows, *tail), dtype)
        try:
            at = 0
            for f in files:
                with np.load(f) as data:
                    block = data[name]
                writer.write(at, block)
                at += len(block)
        finally:
            writer.close()
        return rows

    @classmethod
    def _finalize(cls, path: Path, key: dict, model: TargetModel, dataset, quantile: float,
                  parts: Path, shard_info: dict | None = None) -> "ActivationStore":
        files = sorted(parts.glob("[0-9]*.npz"))
        columns = {"errors": [], "image": [], "concept": [], "area": []}
        for f in files:
            with np.load(f) as data:
                for name in columns:
                    columns[name].append(data[name])
        errors = np.concatenate(columns["errors"])
        objects = pd.DataFrame({
            "image": np.concatenate(columns["image"]),
            "concept": np.concatenate(columns["concept"]).astype(str),
            "area": np.concatenate(columns["area"]),
        })
        objects.insert(0, "object", np.arange(len(objects)))
        cls._concat_parts(files, "packed", path / "object_masks.npy")
        cls._concat_parts(files, "small", path / "object_masks_small.npy")
        objects.to_parquet(path / "objects.parquet", index=False)

        start, stop = (shard_info["start"], shard_info["stop"]) if shard_info else (0, len(dataset))
        index = dataset.records.iloc[start:stop].reset_index(drop=True).copy()
        index.insert(0, "image", np.arange(len(index)))
        index["valid"] = errors == ""
        index["error"] = errors
        index.to_parquet(path / "index.parquet", index=False)

        acts = np.load(path / "activations.npy", mmap_mode="r")
        thresholds = cls._thresholds(acts, index["valid"].to_numpy(), quantile, _load_histogram(path))
        np.save(path / "thresholds.npy", thresholds)
        n, c, h, w = acts.shape
        manifest = {
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
            "package_version": VERSION,
        }
        if shard_info is not None:
            manifest["shard"] = shard_info
        del acts
        _write_json(path / "manifest.json", manifest)
        shutil.rmtree(parts)
        (path / "building.json").unlink(missing_ok=True)
        return cls(path)

    @staticmethod
    def _thresholds(acts, valid: np.ndarray, quantile: float, histogram: dict | None) -> np.ndarray:
        """Exact per-channel quantiles: from the histogram when there is one, else a second pass."""
        if histogram is None:
            return _quantile_by_channel(acts, valid, quantile)
        thresholds, unresolved = _histogram_quantiles(histogram["floors"], histogram["below"],
                                                      histogram["counts"], quantile)
        if unresolved.size:
            thresholds[unresolved] = _quantile_by_channel(acts, valid, quantile, channels=unresolved)
        return thresholds

    # ------------------------------------------------------------------ shards
    @classmethod
    def merge(cls, shard_paths, out_path: str | Path) -> "ActivationStore":
        """Combine shard stores (built with ``build(..., shard=(i, n))``) into one store.

        ``out_path`` gets a manifest that lists the shards (relative paths when possible),
        the concatenated index, objects and maxima (image and object numbers offset), and
        thresholds recomputed over all shards (from their histograms: no pass over the
        activations for float16 stores). Activations and masks stay in the shard folders
        and are read through :class:`ConcatRows` views; keep the shards next to it.
        :meth:`open` on ``out_path`` gives the merged store.
        """
        stores = [cls(p) for p in shard_paths]
        if not stores:
            raise ValueError("merge needs at least one shard")
        infos = [s.manifest.get("shard") for s in stores]
        if any(info is None for info in infos):
            raise ValueError("merge takes shard stores, built with ActivationStore.build(..., shard=(i, n))")
        order = np.argsort([info["start"] for info in infos], kind="stable")
        stores, infos = [stores[i] for i in order], [infos[i] for i in order]
        key = stores[0].manifest["key"]
        for s in stores[1:]:
            if s.manifest["key"] != key:
                raise ValueError(f"shards have different keys: {s.path} differs from {stores[0].path}")
        if infos[0]["start"] != 0 or infos[-1]["stop"] != infos[0]["total"] or any(
                a["stop"] != b["start"] for a, b in zip(infos, infos[1:])):
            ranges = [(i["start"], i["stop"]) for i in infos]
            raise ValueError(f"shards do not cover the dataset contiguously (total {infos[0]['total']}): {ranges}")
        if len({s.shape[1:] for s in stores}) != 1:
            raise ValueError("shards have different activation shapes")

        out = Path(out_path)
        out.mkdir(parents=True, exist_ok=True)
        (out / "manifest.json").unlink(missing_ok=True)
        image_offsets = np.cumsum([0] + [s.shape[0] for s in stores])
        object_offsets = np.cumsum([0] + [len(s.objects) for s in stores])
        index = pd.concat([s.index.assign(image=s.index["image"].to_numpy() + off)
                           for s, off in zip(stores, image_offsets)], ignore_index=True)
        objects = pd.concat([s.objects.assign(object=s.objects["object"].to_numpy() + o_off,
                                              image=s.objects["image"].to_numpy() + i_off)
                             for s, o_off, i_off in zip(stores, object_offsets, image_offsets)],
                            ignore_index=True)
        n, c = int(image_offsets[-1]), stores[0].shape[1]
        writer = _RowWriter(out / "maxima.npy", (n, c), np.float32)
        try:
            for s, off in zip(stores, image_offsets):
                writer.write(int(off), np.asarray(s.maxima))
        finally:
            writer.close()
        index.to_parquet(out / "index.parquet", index=False)
        objects.to_parquet(out / "objects.parquet", index=False)

        quantile = stores[0].manifest["quantile"]
        states = [_load_histogram(s.path) for s in stores]
        acts = ConcatRows([s.activations for s in stores])
        histogram = _merge_histograms(states) if all(st is not None for st in states) else None
        np.save(out / "thresholds.npy", cls._thresholds(acts, index["valid"].to_numpy(), quantile, histogram))

        def relative(p: Path) -> str:
            try:
                return os.path.relpath(p.resolve(), out.resolve())
            except ValueError:      # another drive (Windows)
                return str(p.resolve())

        first = stores[0].manifest
        supercategories = {}
        for s in stores:
            supercategories.update(s.manifest.get("supercategories", {}))
        _write_json(out / "manifest.json", {
            "key": key,
            "key_hash": _key_hash(key),
            "model_name": first["model_name"],
            "shape": [n, *stores[0].shape[1:]],
            "dtype": first["dtype"],
            "image_size": first["image_size"],
            "quantile": quantile,
            "n_objects": int(len(objects)),
            "n_invalid": int(sum(s.manifest["n_invalid"] for s in stores)),
            "supercategories": supercategories,
            "package_version": VERSION,
            "shards": [relative(s.path) for s in stores],
            "shard_ranges": [[i["start"], i["stop"]] for i in infos],
        })
        return cls(out)
