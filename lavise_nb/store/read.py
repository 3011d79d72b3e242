"""Reading an activation store: :class:`ActivationStore` and the :class:`ConcatRows` view.

See :mod:`lavise_nb.store.format` for the files of a store, :mod:`lavise_nb.store.build`
and :mod:`lavise_nb.store.merge` for building and merging one, and
:mod:`lavise_nb.store.integrity` for the checks every open makes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ..probe import TargetModel
from .build import BuildSettings, build_store
from .integrity import check_store, damaged, verify_files
from .locks import remove_leftovers
from .masks import load_valid_cells, unpack_masks

__all__ = ["ActivationStore", "ConcatRows"]


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
    """A built (or opened) activation store; :mod:`lavise_nb.store.format` lists its files.

    Use :meth:`build` to make or reuse one, :meth:`open` to read one and :meth:`merge`
    to combine shards.

    Attributes
    ----------
    path : pathlib.Path
    manifest : dict
    activations : numpy.ndarray or ConcatRows
        (N, C, h, w) memory-mapped, read-only (a :class:`ConcatRows` view of the shards'
        memory maps for a merged store).
    maxima : numpy.ndarray
        (N, C) float32 max over space per image and filter.
    logits : numpy.ndarray or None
        (N, K) float32, memory-mapped: the network's output for each image from the build's
        forward pass (NaN rows for unreadable images); None when the store has none.
    null_directions, null_maxima : numpy.ndarray or None
        (n, C) the coherence null's random directions and (N, n) their max response per image,
        kept by the build (:class:`~lavise_nb.coherence.RandomDirections` reads them instead of a
        pass over the activations); None in stores built before them.
    thresholds : numpy.ndarray
        (C,) float32, T_u with P(a_u > T_u) = 1 - quantile over all spatial positions.
    index : pandas.DataFrame
        One row per image, in dataset order.
    objects : pandas.DataFrame
        One row per (image, concept) mask.
    packed_masks : numpy.ndarray or ConcatRows
        (n_objects, ceil(S*S/8)) uint8, memory-mapped: each object's bool mask at the input
        size S, flattened row-major and packed with ``np.packbits``
        (:meth:`object_masks` unpacks them).
    packed_masks_small : numpy.ndarray or ConcatRows
        (n_objects, h, w) float32, memory-mapped: the masks area-averaged to the map size
        (:meth:`object_masks_small` reads them as a tensor).
    shard_paths : list of pathlib.Path or None
        A merged store's shard folders.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.manifest = check_store(self.path)
        remove_leftovers(self.path)
        shards = self.manifest.get("shards")
        if shards:
            paths = [(self.path / shard).resolve() for shard in shards]
            missing = [str(q) for q in paths if not (q / "manifest.json").is_file()]
            if missing:
                raise FileNotFoundError(f"{self.path} lists shards that are missing or incomplete: {missing}")
            for q in paths:
                check_store(q)
            self.activations = ConcatRows([np.load(q / "activations.npy", mmap_mode="r") for q in paths])
            self.packed_masks = ConcatRows([np.load(q / "object_masks.npy", mmap_mode="r") for q in paths])
            self.packed_masks_small = ConcatRows([np.load(q / "object_masks_small.npy", mmap_mode="r") for q in paths])
            self.shard_paths = paths
        else:
            self.activations = np.load(self.path / "activations.npy", mmap_mode="r")
            self.packed_masks = np.load(self.path / "object_masks.npy", mmap_mode="r")
            self.packed_masks_small = np.load(self.path / "object_masks_small.npy", mmap_mode="r")
            self.shard_paths = None
        self.maxima = np.load(self.path / "maxima.npy", mmap_mode="r")
        listed = self.manifest.get("files", {})
        self.logits = np.load(self.path / "logits.npy", mmap_mode="r") if "logits.npy" in listed else None
        kept = "null_maxima.npy" in listed and "null_directions.npy" in listed
        self.null_directions = np.load(self.path / "null_directions.npy") if kept else None
        self.null_maxima = np.load(self.path / "null_maxima.npy", mmap_mode="r") if kept else None
        self.thresholds = np.load(self.path / "thresholds.npy")
        self.index = self._table("index.parquet", int(self.manifest["shape"][0]))
        self.objects = self._table("objects.parquet", int(self.manifest["n_objects"]))
        if tuple(self.activations.shape) != tuple(self.manifest["shape"]):
            raise damaged(self.path, "manifest.json", f"says shape {self.manifest['shape']}, its arrays hold "
                          f"{list(self.activations.shape)}", bool(shards))

    def _table(self, name: str, rows: int) -> pd.DataFrame:
        try:
            table = pd.read_parquet(self.path / name)
        except (OSError, ValueError) as error:
            raise damaged(self.path, name, f"cannot be read ({error})", bool(self.shard_paths)) from None
        if len(table) != rows:
            raise damaged(self.path, name, f"has {len(table)} rows, the manifest says {rows}", bool(self.shard_paths))
        return table

    @classmethod
    def open(cls, path: str | Path) -> "ActivationStore":
        """Open a complete store read-only, after the cheap checks of its files.

        Each file's size and ``.npy`` header must match the manifest, whose key must match the
        folder (:func:`~lavise_nb.store.integrity.check_store`); :meth:`verify` also compares
        checksums. Leftovers of a build killed after its manifest was written are removed.

        Raises
        ------
        FileNotFoundError
            ``path`` holds no complete store (no ``manifest.json``).
        StoreDamagedError
            A file is missing, cut short or does not match the manifest, or the manifest is
            invalid; the message names the file and the fix.
        """
        return cls(path)

    def verify(self) -> list[Path]:
        """Compare every file's checksum (and each shard's, for a merged store) with the manifest's.

        Reads every byte, so it takes as long as reading the store once; it finds what the checks
        of :meth:`open` cannot, such as zeroed or altered values in a file of the right size.

        Returns
        -------
        list of pathlib.Path
            The files checked; without those of a store written before manifests held checksums.

        Raises
        ------
        StoreDamagedError
            The first file whose contents differ from what the build wrote.
        """
        checked = verify_files(self.path, self.manifest)
        for shard in self.shard_paths or []:
            checked += verify_files(shard, check_store(shard))
        return checked

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

    def top_indices(self, p: int = 25, filters=None, block_bytes: int = 64 << 20) -> np.ndarray:
        """Indices of the p images with the highest max activation, per filter.

        Reads the maxima a block of filters at a time (about ``block_bytes``) and sorts only
        each filter's candidates (the values at or above its p-th largest), so memory and
        time stay near one pass over the (N, C) maxima.

        Returns
        -------
        numpy.ndarray
            (len(filters), p) int64, best first; ties broken by image order.
        """
        n, c = self.maxima.shape
        filters = np.arange(c) if filters is None else np.asarray(filters, dtype=np.int64).reshape(-1)
        p = min(p, n)
        out = np.zeros((len(filters), p), dtype=np.int64)
        step = max(1, block_bytes // max(1, 4 * n))
        for start in range(0, len(filters) if p else 0, step):
            block = np.asarray(self.maxima[:, filters[start:start + step]], dtype=np.float32)
            kth = -np.partition(-block, p - 1, axis=0)[p - 1]
            for j in range(block.shape[1]):
                rows = np.flatnonzero(block[:, j] >= kth[j])
                if len(rows) < p:       # NaN: the full stable order
                    out[start + j] = np.argsort(-block[:, j], kind="stable")[:p]
                else:
                    out[start + j] = rows[np.argsort(-block[rows, j], kind="stable")[:p]]
        return out

    def activation_map(self, image: int, filter: int, size: int | None = None) -> torch.Tensor:
        """One filter's map for one image, bilinearly upsampled to ``size`` (default: input size).

        Returns
        -------
        torch.Tensor
            (size, size) float32.
        """
        from ..regions import filter_maps

        return filter_maps(self, [image], [filter], size)[0]

    def object_masks(self, objects) -> torch.Tensor:
        """Full-size masks of some objects, (n, S, S) bool."""
        rows = np.asarray(objects, dtype=np.int64)
        return unpack_masks(np.asarray(self.packed_masks[rows]), self.image_size)

    @property
    def valid_cells(self) -> np.ndarray:
        """(N, h, w) bool map cells that show each image (False on letterbox padding and unreadable images)."""
        if not self.shard_paths:
            return load_valid_cells(self.path, self.valid, self.shape[2:])
        ends = np.cumsum([0] + [b - a for a, b in self.manifest["shard_ranges"]])
        return np.concatenate([load_valid_cells(q, self.valid[a:b], self.shape[2:])
                               for q, a, b in zip(self.shard_paths, ends[:-1], ends[1:])])

    def object_masks_small(self, objects=None) -> torch.Tensor:
        """Masks area-averaged to the map size, (n, h, w) float32 in [0, 1]."""
        if objects is None:
            return torch.from_numpy(np.asarray(self.packed_masks_small, dtype=np.float32))
        return torch.from_numpy(np.asarray(self.packed_masks_small[np.asarray(objects)], dtype=np.float32))


    @classmethod
    def build(cls, model: TargetModel, layer: str, dataset, root: str | Path | None = None,
              settings: BuildSettings | None = None, *, device="auto", shard: tuple[int, int] | None = None,
              max_batches: int | None = None, rebuild: bool = False, show_progress: bool = True) -> "ActivationStore":
        """Build the store of ``model``'s ``layer`` over ``dataset``, or reuse a matching one.

        One pass over the data: activations are written as they come (plain file writes, so
        resident memory does not grow with the dataset), maxima are taken in float32 and the
        thresholds come from a streaming histogram of the stored float16 values (exact).
        An interrupted build resumes from its last complete batch. The build holds the store's
        lock (``<folder>.lock`` beside it): another process building the same store waits, then
        opens the finished store (or resumes, if this one died).

        Parameters
        ----------
        model : TargetModel
        layer : str
            Dotted layer name.
        dataset : torch.utils.data.Dataset
            Follows the sample contract of :mod:`lavise_nb.datasets`; at least one image.
        root : path, optional
            Parent folder of stores (default: the cache's ``stores/``). The store's
            own folder name holds the key's hash, so different keys never collide.
        settings : BuildSettings, optional
            Batch size, loader workers, dtype, threshold quantile, autocast (default:
            ``BuildSettings()``). Only ``dtype`` is part of the store's key.
        device : str
            ``"auto"`` (cuda when present), ``"cpu"`` or ``"cuda"``.
        shard : (i, n), optional
            Build only shard ``i`` of ``n``: the contiguous image range
            ``[i * N // n, (i + 1) * N // n)``, into its own folder (same key, plus the shard
            in the folder name and manifest). Combine the shards with :meth:`merge`.
        max_batches : int, optional
            Write at most this many batches in all (used to test resuming); when that stops
            the build before its last image, :class:`~lavise_nb.store.build.BuildInterrupted`
            is raised and building again resumes.
        rebuild : bool
            Delete whatever the folder holds (a complete, damaged or interrupted store) and
            build it anew.
        show_progress : bool
            A progress bar, and a line when waiting for another process's build.

        Returns
        -------
        ActivationStore
            The complete store.

        Raises
        ------
        BuildInterrupted
            ``max_batches`` stopped the build before its last image.
        StoreDamagedError
            The folder holds a damaged store; ``rebuild=True`` replaces it.
        RuntimeError
            The store's folder holds a complete store with another key.
        ValueError
            An empty dataset, or a shard that holds no image.
        KeyError
            ``model`` has no layer ``layer``.
        """
        return cls(build_store(model, layer, dataset, root, settings, device=device, shard=shard,
                               max_batches=max_batches, rebuild=rebuild, show_progress=show_progress))

    @classmethod
    def merge(cls, shard_paths, out_path: str | Path) -> "ActivationStore":
        """Combine shard stores (built with ``build(..., shard=(i, n))``) into one store.

        ``out_path`` gets a manifest that lists the shards (relative paths when possible),
        the concatenated index, objects and maxima (image and object numbers offset), and
        thresholds recomputed over all shards (from their histograms: no pass over the
        activations for float16 stores). Activations and masks stay in the shard folders
        and are read through :class:`ConcatRows` views; keep the shards next to it.
        :meth:`open` on ``out_path`` gives the merged store. Merging holds ``out_path``'s lock,
        and a complete merge of the same shards is kept as it is.

        Raises
        ------
        ValueError
            No shards, a store that is not a shard, different keys or activation shapes, or
            shards that do not cover the dataset contiguously.
        """
        from .merge import merge_shards

        return cls(merge_shards(shard_paths, out_path))
