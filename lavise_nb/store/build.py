"""Building stores: one pass of a dataset through a model, resumable, optionally in shards.

:func:`build_store` streams the dataset through the model once (thresholds included:
they come from an exact streaming histogram of the stored float16 values, so memory
does not grow with the dataset). A key (model fingerprint, layer, dataset id,
preprocessing, dtype) decides reuse; an interrupted build resumes from its last
complete batch, and a store only counts as complete once ``manifest.json`` exists.

Large datasets can be built in shards, ``shard=(i, n)`` (contiguous image ranges, one
folder each, on any number of processes or machines), and combined with
:func:`merge_shards`: the merged folder holds the index, objects, maxima and
thresholds over all shards and reads the shards' activations and masks through
:class:`~lavise_nb.store.read.ConcatRows` views.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .._utils.cache import cache_dir
from .._utils.progress import progress
from ..probe import LayerProbe, TargetModel, resolve_device
from .format import folder_name, store_key, write_json, write_manifest
from .masks import StoreCollate
from .read import ActivationStore, ConcatRows
from .thresholds import TailHistogram, load_histogram, merge_histograms, store_thresholds
from .writers import RowWriter, concat_parts, part_files, read_parts, write_part

__all__ = ["BuildInterrupted", "build_store", "finalize", "merge_shards", "resume_histogram", "shard_range"]


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
    return {"index": i, "count": count, "start": i * total // count, "stop": (i + 1) * total // count,
            "total": total}


def _image_range(shard: dict | None, total: int) -> tuple[int, int]:
    return (shard["start"], shard["stop"]) if shard else (0, total)


def build_store(model: TargetModel, layer: str, dataset, root: str | Path | None = None, *,
                batch_size: int = 64, num_workers: int | None = None, device="auto",
                dtype: str = "float16", quantile: float = 0.995, amp: bool = False,
                show_progress: bool = True, max_batches: int | None = None,
                shard: tuple[int, int] | None = None) -> Path:
    """Build a store, or find a complete one with the same key; see :meth:`ActivationStore.build`.

    Returns
    -------
    pathlib.Path
        The complete store's folder.

    Raises
    ------
    BuildInterrupted
        When ``max_batches`` batches were written before the last image.
    RuntimeError
        When the folder holds a complete store with another key.
    """
    key = store_key(model, layer, dataset, dtype)
    root = Path(root) if root is not None else cache_dir("stores")
    shard_info = shard_range(shard, len(dataset))
    path = root / folder_name(model.name, layer, key, shard_info)
    if (path / "manifest.json").is_file():
        manifest = json.loads((path / "manifest.json").read_text())
        if manifest["key"] == key and manifest.get("shard") == shard_info:
            return path
        raise RuntimeError(f"{path} holds a store with another key; remove it or choose another root")
    device = resolve_device(device)
    model.to(device)
    job = _StoreBuild(model, layer, dataset, path, key, shard_info, batch_size=batch_size,
                      num_workers=num_workers, device=device, dtype=dtype, quantile=quantile, amp=amp,
                      show_progress=show_progress)
    state = job.read_state()
    done = job.write_batches(state, max_batches)
    if done < job.stop - job.start:
        raise BuildInterrupted(path, done, job.stop - job.start)
    if job.histogram is not None:
        job.histogram.save(path / "histogram.npz")
    finalize(path, key, model.name, dataset, quantile, shard_info)
    return path


class _StoreBuild:
    """The writing steps of one build into ``path``, run by :func:`build_store`.

    ``acts`` ((n, C, h, w)) and ``maxima`` ((n, C) float32) are :class:`RowWriter` objects
    once the first batch (or a resumed build) gives their shape; ``histogram`` is the
    :class:`TailHistogram` of a float16 store.
    """

    def __init__(self, model, layer, dataset, path: Path, key: dict, shard: dict | None, *, batch_size,
                 num_workers, device: torch.device, dtype, quantile, amp, show_progress):
        self.model, self.layer, self.dataset = model, layer, dataset
        self.path, self.key, self.shard = path, key, shard
        self.start, self.stop = _image_range(shard, len(dataset))
        self.batch_size, self.num_workers, self.device = batch_size, num_workers, device
        self.dtype, self.quantile, self.amp, self.show_progress = dtype, quantile, amp, show_progress
        self.parts = path / "parts"
        self.state_file = path / "building.json"
        self.acts = self.maxima = self.histogram = None

    def read_state(self) -> dict | None:
        """``building.json`` of an interrupted build with this key; another key's folder is emptied."""
        self.path.mkdir(parents=True, exist_ok=True)
        state = json.loads(self.state_file.read_text()) if self.state_file.is_file() else None
        if state is not None and (state.get("key") != self.key or state.get("shard") != self.shard):
            shutil.rmtree(self.path)
            self.path.mkdir(parents=True)
            state = None
        return state

    def loader(self, first: int) -> torch.utils.data.DataLoader:
        """Batches of images ``first`` to the end, their masks packed and pooled in the workers."""
        size = int(self.dataset.preprocess.size)
        with LayerProbe(self.model, self.layer) as probe:
            map_size = probe(torch.zeros(1, 3, size, size, device=self.device)).shape[2:]
        workers = min(2, os.cpu_count() or 1) if self.num_workers is None else self.num_workers
        return torch.utils.data.DataLoader(
            torch.utils.data.Subset(self.dataset, range(first, self.stop)), batch_size=self.batch_size,
            shuffle=False, num_workers=workers, collate_fn=StoreCollate(map_size, self.start),
            pin_memory=self.device.type == "cuda",
        )

    def open_outputs(self, shape=None, done: int = 0, floors=None) -> None:
        """Create the outputs for (C, h, w) maps, or with ``shape=None`` reopen a resumed build's."""
        n = self.stop - self.start
        if shape is None:
            self.acts = RowWriter(self.path / "activations.npy")
            self.maxima = RowWriter(self.path / "maxima.npy")
            if self.dtype == "float16":
                self.histogram = resume_histogram(self.path, done, self.acts.shape[1], floors, self.device,
                                                  self.quantile)
            return
        c, h, w = shape
        self.acts = RowWriter(self.path / "activations.npy", (n, c, h, w), self.dtype)
        self.maxima = RowWriter(self.path / "maxima.npy", (n, c), np.float32)
        if self.dtype == "float16":
            self.histogram = TailHistogram(c, self.device)

    def close_outputs(self) -> None:
        for writer in (self.acts, self.maxima):
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
            with LayerProbe(self.model, self.layer) as probe:
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
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp and self.device.type == "cuda"):
            features = probe(images)
        features = features.float()
        if self.acts is None:
            self.open_outputs(features.shape[1:])
        index = batch["index"].numpy() - self.start
        lo, hi = int(index[0]), int(index[-1]) + 1
        bad = torch.tensor([e is not None for e in batch["errors"]], device=self.device)
        if bad.any():
            features[bad] = 0
        batch_max = features.amax(dim=(2, 3))
        if bad.any():
            batch_max[bad] = -torch.inf
        stored = features.to(getattr(torch, self.dtype))
        if self.histogram is not None:
            self.histogram.add(stored[~bad] if bad.any() else stored, self.quantile)
        self.acts.write(lo, stored.cpu().numpy())
        self.maxima.write(lo, batch_max.cpu().numpy())
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
    errors = read_parts(part_files(path / "parts"), ["errors"]).get("errors", np.zeros(0, str))
    valid = errors[:done] == ""
    histogram = TailHistogram(channels, device, floors)
    written = np.load(path / "activations.npy", mmap_mode="r")
    for lo in range(0, done, block):
        rows = lo + np.flatnonzero(valid[lo:lo + block])
        if rows.size:
            histogram.add(torch.from_numpy(np.ascontiguousarray(written[rows])).to(device), quantile)
    return histogram


def finalize(path: Path, key: dict, model_name: str, dataset, quantile: float, shard: dict | None = None) -> None:
    """Turn a build's parts into the store's masks, tables, thresholds and, last, its manifest."""
    files = part_files(path / "parts")
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
    np.save(path / "thresholds.npy", store_thresholds(acts, index["valid"].to_numpy(), quantile, load_histogram(path)))
    shape, dtype = acts.shape, acts.dtype
    del acts
    write_manifest(path, key, model_name=model_name, shape=shape, dtype=str(dtype),
                   image_size=int(dataset.preprocess.size), quantile=quantile, n_objects=len(objects),
                   n_invalid=(errors != "").sum(), supercategories=getattr(dataset, "supercategories", {}) or {},
                   shard=shard)
    shutil.rmtree(path / "parts")
    (path / "building.json").unlink(missing_ok=True)


def merge_shards(shard_paths, out_path: str | Path) -> Path:
    """Combine shard stores into one; see :meth:`ActivationStore.merge`.

    Returns
    -------
    pathlib.Path
        ``out_path``, now a complete (merged) store.
    """
    stores, infos = _checked_shards(shard_paths)
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
    writer = RowWriter(out / "maxima.npy", (n, c), np.float32)
    try:
        for s, off in zip(stores, image_offsets):
            writer.write(int(off), np.asarray(s.maxima))
    finally:
        writer.close()
    index.to_parquet(out / "index.parquet", index=False)
    objects.to_parquet(out / "objects.parquet", index=False)

    first = stores[0].manifest
    states = [load_histogram(s.path) for s in stores]
    histogram = merge_histograms(states) if all(st is not None for st in states) else None
    acts = ConcatRows([s.activations for s in stores])
    np.save(out / "thresholds.npy", store_thresholds(acts, index["valid"].to_numpy(), first["quantile"], histogram))

    supercategories = {}
    for s in stores:
        supercategories.update(s.manifest.get("supercategories", {}))
    write_manifest(out, first["key"], model_name=first["model_name"], shape=[n, *stores[0].shape[1:]],
                   dtype=first["dtype"], image_size=first["image_size"], quantile=first["quantile"],
                   n_objects=len(objects), n_invalid=sum(s.manifest["n_invalid"] for s in stores),
                   supercategories=supercategories, shards=[_relative(s.path, out) for s in stores],
                   shard_ranges=[[i["start"], i["stop"]] for i in infos])
    return out


def _checked_shards(shard_paths) -> tuple[list[ActivationStore], list[dict]]:
    """The shard stores and their manifests' shard entries, in image order, checked to fit together."""
    stores = [ActivationStore(p) for p in shard_paths]
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
    return stores, infos


def _relative(path: Path, start: Path) -> str:
    """``path`` relative to ``start`` when possible (not across Windows drives), else absolute."""
    try:
        return os.path.relpath(path.resolve(), start.resolve())
    except ValueError:
        return str(path.resolve())
