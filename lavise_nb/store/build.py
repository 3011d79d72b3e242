"""Building stores: one pass of a dataset through a model, resumable, optionally in shards.

:func:`build_store` streams the dataset through the model once (thresholds included:
they come from an exact streaming histogram of the stored float16 values, so memory
does not grow with the dataset). A key (model fingerprint, layer, dataset id,
preprocessing, dtype) decides reuse; an interrupted build resumes from its last
complete batch, and a store only counts as complete once ``manifest.json`` exists.

Large datasets can be built in shards, ``shard=(i, n)`` (contiguous image ranges, one
folder each, on any number of processes or machines), and combined with
:func:`lavise_nb.store.merge.merge_shards`.

A build holds the store's lock (:mod:`lavise_nb.store.locks`), so processes that
build one store at once take turns: the first builds, the others then open its result.
"""
from __future__ import annotations

import json
import numbers
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._utils.cache import cache_dir
from .._utils.progress import progress
from ..coherence import direction_maxima, draw_directions
from ..probe import LayerProbe, TargetModel, resolve_device
from ..transform import check_model_preprocess
from .format import LEFTOVERS, folder_name, store_key, write_json, write_manifest
from .integrity import check_store, damaged
from .locks import EndWithParent, remove_leftovers, store_lock
from .masks import VALID_CELLS, StoreCollate, part_cells
from .thresholds import TailHistogram, load_histogram, store_thresholds
from .writers import RowWriter, concat_parts, file_digest, part_files, read_digests, read_parts, write_part

__all__ = ["BuildInterrupted", "BuildSettings", "build_store", "checked_parts", "finalize", "resume_histogram",
           "shard_range"]

DTYPES = ("float16", "float32")


_MAP_SIZES: dict = {}


def layer_map_size(model, layer: str, size: int, device) -> tuple[int, int]:
    """(h, w) of ``layer``'s maps for ``size``-pixel inputs; one 1-image forward per model, layer and size
    in a process (many small builds, such as probe scenes, skip it)."""
    key = (model.fingerprint, layer, size)
    if key not in _MAP_SIZES:
        with LayerProbe(model, layer) as probe:
            _MAP_SIZES[key] = tuple(probe(torch.zeros(1, 3, size, size, device=device)).shape[2:])
    return _MAP_SIZES[key]


@dataclass(frozen=True)
class BuildSettings:
    """How a store is built; every field is checked when the settings are made.

    The store's key holds only ``dtype`` of these: the others change how the build runs
    (or, for ``quantile``, the thresholds), not which folder it writes.

    Parameters
    ----------
    batch_size : int
        Images per forward pass, >= 1.
    num_workers : int or None
        DataLoader worker processes, >= 0; None takes ``min(2, CPU count)``.
    dtype : str
        ``"float16"`` (default) or ``"float32"`` storage for activations.
    quantile : float
        Threshold quantile, in (0, 1); 0.995 gives P(a_u > T_u) = 0.005 as Network Dissection.
    amp : bool
        Autocast extraction to float16 on cuda.
    logits : bool
        Also run the layers after ``layer`` and keep the network's (N, K) output
        (``logits.npy``), from the same forward pass, when it is a (B, K) tensor: the
        weak labels come from it without a second pass over the images.

    Raises
    ------
    ValueError
        A field outside its range; the message names the field and the range.
    """

    batch_size: int = 64
    num_workers: int | None = None
    dtype: str = "float16"
    quantile: float = 0.995
    amp: bool = False
    logits: bool = True

    def __post_init__(self):
        if not _is_int(self.batch_size) or self.batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, not {self.batch_size!r}")
        if self.num_workers is not None and (not _is_int(self.num_workers) or self.num_workers < 0):
            raise ValueError(f"num_workers must be an int >= 0, or None for min(2, CPU count); "
                             f"not {self.num_workers!r}")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(map(repr, DTYPES))}, not {self.dtype!r}")
        q = self.quantile
        if not isinstance(q, numbers.Real) or isinstance(q, bool) or not 0 < q < 1:
            raise ValueError(f"quantile must be a number in (0, 1), e.g. 0.995; not {q!r}")
        for name in ("amp", "logits"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, not {getattr(self, name)!r}")
        object.__setattr__(self, "batch_size", int(self.batch_size))
        object.__setattr__(self, "quantile", float(q))

    @property
    def workers(self) -> int:
        """The DataLoader worker processes a build uses: ``num_workers``, or ``min(2, CPU count)`` for None."""
        return min(2, os.cpu_count() or 1) if self.num_workers is None else self.num_workers


def _is_int(value) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class BuildInterrupted(Exception):
    """A build stopped after ``max_batches`` batches, before its last image.

    The folder keeps what was written; building again with the same arguments resumes it.

    Attributes
    ----------
    path : pathlib.Path
        The incomplete store's folder (no ``manifest.json`` yet).
    done, total : int
        Images written so far, images the store (or shard) will hold.
    """

    def __init__(self, path: Path, done: int, total: int):
        super().__init__(f"{path}: build stopped after {done} of {total} images; build again to resume")
        self.path, self.done, self.total = Path(path), done, total


def shard_range(shard: tuple[int, int] | None, total: int) -> dict | None:
    """The manifest's shard entry of ``shard=(i, n)`` over ``total`` images, or None for no shard.

    Shard ``i`` holds images ``[i * total // n, (i + 1) * total // n)``.
    """
    if shard is None:
        return None
    i, count = (int(v) for v in shard)
    if not (count >= 1 and 0 <= i < count):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, not {shard!r}")
    if i * total // count == (i + 1) * total // count:
        raise ValueError(f"shard {shard!r} of {total} images holds no image; use at most {total} shards")
    return {"index": i, "count": count, "start": i * total // count, "stop": (i + 1) * total // count,
            "total": total}


def _image_range(shard: dict | None, total: int) -> tuple[int, int]:
    return (shard["start"], shard["stop"]) if shard else (0, total)


def build_store(model: TargetModel, layer: str, dataset, root: str | Path | None = None,
                settings: BuildSettings | None = None, *, device="auto", shard: tuple[int, int] | None = None,
                max_batches: int | None = None, rebuild: bool = False, show_progress: bool = True) -> Path:
    """Build a store, or find a complete one with the same key; see :meth:`ActivationStore.build`.

    Returns
    -------
    pathlib.Path
        The complete store's folder.

    Raises
    ------
    BuildInterrupted
        When ``max_batches`` batches were written before the last image.
    StoreDamagedError
        The folder holds a damaged store (and ``rebuild`` is False).
    RuntimeError
        When the folder holds a complete store with another key.
    """
    check_model_preprocess(dataset, model)
    settings = BuildSettings() if settings is None else settings
    if not isinstance(settings, BuildSettings):
        raise TypeError(f"settings must be a BuildSettings, e.g. BuildSettings(batch_size=32), "
                        f"not {type(settings).__name__}")
    if len(dataset) == 0:
        raise ValueError("the dataset has no images; a store needs at least one")
    model.resolve(layer)
    shard_info = shard_range(shard, len(dataset))
    key = store_key(model, layer, dataset, settings.dtype)
    root = Path(root) if root is not None else cache_dir("stores")
    path = root / folder_name(model.name, layer, key, shard_info)
    if not rebuild and _reusable(path, key, shard_info):
        return path
    root.mkdir(parents=True, exist_ok=True)
    with store_lock(path, notice=_notice if show_progress else None):
        if rebuild and path.exists():
            shutil.rmtree(path)
        if (path / "manifest.json").exists():
            return _complete_store(path, key, shard_info)
        device = resolve_device(device)
        model.to(device)
        job = _StoreBuild(model, layer, dataset, path, key, shard_info, settings, device, show_progress)
        try:
            job.run(max_batches)
        finally:
            if not (path / "building.json").is_file() and not (path / "manifest.json").is_file():
                shutil.rmtree(path, ignore_errors=True)     # nothing to resume: leave no folder
    return path


def _notice(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _reusable(path: Path, key: dict, shard: dict | None) -> bool:
    """Whether ``path`` holds the intact store of ``key`` with nothing to tidy (usable without the lock,
    so on a read-only disk too)."""
    try:
        manifest = check_store(path)
    except (OSError, ValueError):
        return False
    leftovers = any((path / name).exists() for name in LEFTOVERS)
    return manifest["key"] == key and manifest.get("shard") == shard and not leftovers


def _complete_store(path: Path, key: dict, shard: dict | None) -> Path:
    """``path`` once checked to hold the store of ``key`` (and ``shard``), without a killed build's leftovers."""
    manifest = check_store(path)
    if manifest["key"] != key or manifest.get("shard") != shard:
        raise RuntimeError(f"{path} holds a store with another key; remove it or choose another root")
    remove_leftovers(path, locked=True)
    return path


class _StoreBuild:
    """The writing steps of one build into ``path``, run by :func:`build_store`.

    ``acts`` ((n, C, h, w)), ``maxima`` ((n, C) float32) and ``logits`` ((n, K) float32, or
    None) are :class:`RowWriter` objects once the first batch (or a resumed build) gives
    their shape; ``histogram`` is the :class:`TailHistogram` of a float16 store.
    """

    def __init__(self, model, layer, dataset, path: Path, key: dict, shard: dict | None,
                 settings: BuildSettings, device: torch.device, show_progress: bool):
        self.model, self.layer, self.dataset = model, layer, dataset
        self.path, self.key, self.shard = path, key, shard
        self.start, self.stop = _image_range(shard, len(dataset))
        self.settings, self.device, self.show_progress = settings, device, show_progress
        self.dtype, self.quantile = settings.dtype, settings.quantile
        self.parts = path / "parts"
        self.state_file = path / "building.json"
        self.acts = self.maxima = self.logits = self.histogram = self.null = self.directions = None

    def run(self, max_batches: int | None) -> None:
        """Write (or resume) every batch, then the store's other files and its manifest."""
        done = self.write_batches(self.read_state(), max_batches)
        if done < self.stop - self.start:
            raise BuildInterrupted(self.path, done, self.stop - self.start)
        if self.histogram is not None:
            self.histogram.save(self.path / "histogram.npz")
        finalize(self.path, self.key, self.model.name, self.dataset, self.quantile, self.shard)

    def read_state(self) -> dict | None:
        """``building.json`` of an interrupted build with this key; a folder that cannot be resumed
        (another key's, or an unreadable state) is emptied."""
        self.path.mkdir(parents=True, exist_ok=True)
        try:
            state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else None
        except ValueError:
            state = {}
        needed = [self.parts, self.path / "activations.npy", self.path / "maxima.npy"]
        if state is not None and (not isinstance(state, dict) or state.get("key") != self.key
                                  or state.get("shard") != self.shard or not all(f.exists() for f in needed)):
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            state = None
        if state:
            read_digests(self.parts, state["batches"])
        return state

    def loader(self, first: int) -> torch.utils.data.DataLoader:
        """Batches of images ``first`` to the end, their masks packed and pooled in the workers."""
        map_size = layer_map_size(self.model, self.layer, int(self.dataset.preprocess.size), self.device)
        workers = self.settings.workers
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, range(first, self.stop)), batch_size=self.settings.batch_size,
            shuffle=False, num_workers=workers, collate_fn=StoreCollate(map_size, self.start),
            pin_memory=self.device.type == "cuda", worker_init_fn=EndWithParent() if workers else None,
        )

    def open_outputs(self, shape=None, done: int = 0, floors=None, classes: int | None = None) -> None:
        """Create the outputs for (C, h, w) maps and ``classes`` logits (None: none kept), or with
        ``shape=None`` reopen a resumed build's."""
        n = self.stop - self.start
        if shape is None:
            self.acts = RowWriter(self.path / "activations.npy")
            self.maxima = RowWriter(self.path / "maxima.npy")
            if (self.path / "logits.npy").is_file():    # all rows or none: resumed without logits, drop them
                if self.settings.logits:
                    self.logits = RowWriter(self.path / "logits.npy")
                else:
                    (self.path / "logits.npy").unlink()
            if self.dtype == "float16":
                self.histogram = resume_histogram(self.path, done, self.acts.shape[1], floors, self.device,
                                                  self.quantile)
            self.open_null(n, self.acts.shape[1], done)
            return
        c, h, w = shape
        self.acts = RowWriter(self.path / "activations.npy", (n, c, h, w), self.dtype)
        self.maxima = RowWriter(self.path / "maxima.npy", (n, c), np.float32)
        if classes is not None:
            self.logits = RowWriter(self.path / "logits.npy", (n, classes), np.float32)
        if self.dtype == "float16":
            self.histogram = TailHistogram(c, self.device)
        self.open_null(n, c, 0)

    def open_null(self, n: int, channels: int, done: int) -> None:
        """The coherence null's directions and maxima writer; a resumed build that has none (begun by an
        older version) gets the maxima of its ``done`` rows from what it wrote."""
        self.directions = draw_directions(channels)
        file = self.path / "null_maxima.npy"
        if done and file.is_file():
            self.null = RowWriter(file)
            return
        np.save(self.path / "null_directions.npy", self.directions.numpy())
        self.null = RowWriter(file, (n, len(self.directions)), np.float32)
        if done:
            written = np.load(self.path / "activations.npy", mmap_mode="r")
            cells = part_cells(checked_parts(self.path), written.shape[2:])
            for lo in range(0, done, 256):
                hi = min(lo + 256, done)
                self.null.write(lo, direction_maxima(torch.from_numpy(np.array(written[lo:hi])),
                                                     self.directions, torch.from_numpy(cells[lo:hi])).numpy())

    def close_outputs(self) -> None:
        for writer in (self.acts, self.maxima, self.logits, self.null):
            if writer is not None:
                writer.close()

    def write_batches(self, state: dict | None, max_batches: int | None) -> int:
        """Write the remaining batches (at most ``max_batches`` in all); returns the images done."""
        done = state["done"] if state else 0
        batch_no = state["batches"] if state else 0
        loader = self.loader(self.start + done)
        self.parts.mkdir(exist_ok=True)
        if state and done > 0:
            self.open_outputs(done=done, floors=state.get("floors"))
        bar = progress(total=self.stop - self.start, initial=done, enabled=self.show_progress,
                       desc=f"store {self.model.name}:{self.layer}")
        try:
            with LayerProbe(self.model, self.layer, stop=not self.settings.logits) as probe:
                for batch in loader:
                    if max_batches is not None and batch_no >= max_batches:
                        break
                    lo, hi = self.write_batch(probe, batch, batch_no)
                    batch_no += 1
                    done = hi
                    floors = self.histogram.floors if self.histogram is not None else None
                    write_json(self.state_file, {
                        "key": self.key, "shard": self.shard, "done": done, "batches": batch_no,
                        "floors": None if floors is None else floors.cpu().tolist()})
                    bar.update(hi - lo)
        finally:
            bar.close()
            self.close_outputs()
        return done

    def write_batch(self, probe: LayerProbe, batch: dict, batch_no: int) -> tuple[int, int]:
        """Activations, maxima, histogram and part file of one batch; returns its rows [lo, hi)."""
        images = batch["images"].to(self.device, non_blocking=True)
        amp = self.settings.amp and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=amp):
            features, output = probe.outputs(images)
        features = features.float()
        logits = output.float() if torch.is_tensor(output) and output.dim() == 2 else None
        if self.acts is None:
            self.open_outputs(features.shape[1:], classes=None if logits is None else logits.shape[1])
        index = batch["index"].numpy() - self.start
        lo, hi = int(index[0]), int(index[-1]) + 1
        bad = torch.tensor([e is not None for e in batch["errors"]], device=self.device)
        if bad.any():
            features[bad] = 0
        batch_max = features.amax(dim=(2, 3))
        if bad.any():
            batch_max[bad] = -torch.inf
        stored = features.to(getattr(torch, self.dtype))
        cells = torch.from_numpy(batch["part"]["cells"]).to(self.device)     # none for unreadable images
        if self.histogram is not None:
            self.histogram.add(stored, self.quantile, cells)
        self.acts.write(lo, stored.cpu().numpy())
        self.maxima.write(lo, batch_max.cpu().numpy())
        self.null.write(lo, direction_maxima(stored, self.directions, cells).numpy())
        if self.logits is not None and logits is not None:
            if bad.any():
                logits[bad] = torch.nan
            self.logits.write(lo, logits.cpu().numpy())
        write_part(self.parts / f"{batch_no:06d}.npz", batch["part"])
        return lo, hi


def resume_histogram(path: Path, done: int, channels: int, floors, device, quantile: float,
                     block: int = 256) -> TailHistogram:
    """Rebuild the threshold histogram of the first ``done`` rows an interrupted build wrote.

    Parameters
    ----------
    path : pathlib.Path
        The build's folder (``activations.npy`` and ``parts/``).
    done, channels : int
    floors : list of int or None
        (C,) floors the build recorded in ``building.json``.
    device : torch.device
    quantile : float
    block : int
        Rows read at a time.
    """
    histogram = TailHistogram(channels, device, floors)
    written = np.load(path / "activations.npy", mmap_mode="r")
    cells = part_cells(checked_parts(path), written.shape[2:])[:done]
    for lo in range(0, done, block):
        rows = lo + np.flatnonzero(cells[lo:lo + block].any((1, 2)))
        if rows.size:
            histogram.add(torch.from_numpy(np.ascontiguousarray(written[rows])).to(device), quantile,
                          torch.from_numpy(cells[rows]).to(device))
    return histogram


def finalize(path: Path, key: dict, model_name: str, dataset, quantile: float, shard: dict | None = None) -> None:
    """Turn a build's parts into the store's masks, tables, thresholds and, last, its manifest.

    Raises
    ------
    StoreDamagedError
        A part file is missing or differs from the checksum recorded when it was written.
    """
    files = checked_parts(path)
    parts = read_parts(files, ["errors", "image", "concept", "area"])
    objects = pd.DataFrame({"image": parts["image"], "concept": parts["concept"].astype(str),
                            "area": parts["area"]})
    objects.insert(0, "object", np.arange(len(objects)))
    concat_parts(files, "packed", path / "object_masks.npy")
    concat_parts(files, "small", path / "object_masks_small.npy")
    objects.to_parquet(path / "objects.parquet", index=False)

    errors = parts["errors"]
    start, stop = _image_range(shard, len(dataset))
    index = dataset.records.iloc[start:stop].reset_index(drop=True).copy()
    index.insert(0, "image", np.arange(len(index)))
    index["valid"] = errors == ""
    index["error"] = errors
    index.to_parquet(path / "index.parquet", index=False)

    acts = np.load(path / "activations.npy", mmap_mode="r")
    cells = part_cells(files, acts.shape[2:])
    np.save(path / VALID_CELLS, cells)
    np.save(path / "thresholds.npy", store_thresholds(acts, cells, quantile, load_histogram(path)))
    shape, dtype = acts.shape, acts.dtype
    del acts
    write_manifest(path, key, dict(model_name=model_name, shape=shape, dtype=str(dtype),
                                   image_size=int(dataset.preprocess.size), quantile=quantile,
                                   n_objects=len(objects), n_invalid=(errors != "").sum(),
                                   supercategories=getattr(dataset, "supercategories", {}), shard=shard))
    remove_leftovers(path, locked=True)


def checked_parts(path: Path) -> list[Path]:
    """The part files of the batches ``building.json`` counts, each checked against its checksum."""
    batches = json.loads((path / "building.json").read_text())["batches"]
    files = part_files(path / "parts", batches)
    digests = read_digests(path / "parts", batches)
    for file in files:
        name = f"parts/{file.name}"
        if not file.is_file():
            raise damaged(path, name, "is missing (the build cannot be finished)")
        if file.name in digests and file_digest(file) != digests[file.name]:
            raise damaged(path, name, "differs from the checksum recorded when it was written")
    return files
