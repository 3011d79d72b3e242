"""Merging shard stores into one.

:func:`merge_shards` writes a folder that holds the index, objects, maxima and
thresholds over all shards and reads the shards' activations and masks through
:class:`~lavise_nb.store.read.ConcatRows` views. It holds the merged folder's lock
(:mod:`lavise_nb.store.locks`), so two processes merging the same shards take turns.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from .format import write_manifest
from .integrity import StoreDamagedError, check_store
from .locks import store_lock
from .read import ActivationStore, ConcatRows
from .thresholds import load_histogram, merge_histograms, store_thresholds
from .writers import RowWriter, file_digest

__all__ = ["merge_shards"]


def merge_shards(shard_paths, out_path: str | Path) -> Path:
    """Combine shard stores into one; see :meth:`ActivationStore.merge`.

    Holds ``out_path``'s lock; a complete merge of the same shards (same manifests) is kept.

    Returns
    -------
    pathlib.Path
        ``out_path``, now a complete (merged) store.
    """
    out = Path(out_path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(out):
        stores, infos = _checked_shards(shard_paths)
        contents = {"shards": [_relative(s.path, out) for s in stores],
                    "shard_ranges": [[i["start"], i["stop"]] for i in infos],
                    "shard_manifests": [file_digest(s.path / "manifest.json") for s in stores]}
        if not _same_merge(out, contents):
            _write_merge(stores, out, contents)
    return out


def _same_merge(out: Path, contents: dict) -> bool:
    """Whether ``out`` holds an intact merge of the shards ``contents`` describes."""
    if not (out / "manifest.json").is_file():
        return False
    try:
        manifest = check_store(out)
    except StoreDamagedError:
        return False
    return all(manifest.get(name) == value for name, value in contents.items())


def _write_merge(stores: list[ActivationStore], out: Path, contents: dict) -> None:
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
    n = int(image_offsets[-1])
    _stack_rows(out / "maxima.npy", [s.maxima for s in stores], image_offsets)
    if all(s.logits is not None for s in stores):
        _stack_rows(out / "logits.npy", [s.logits for s in stores], image_offsets)
    else:
        (out / "logits.npy").unlink(missing_ok=True)
    kept = [s.null_directions for s in stores]
    if all(k is not None and np.array_equal(k, kept[0]) for k in kept):
        np.save(out / "null_directions.npy", kept[0])
        _stack_rows(out / "null_maxima.npy", [s.null_maxima for s in stores], image_offsets)
    else:
        for name in ("null_directions.npy", "null_maxima.npy"):
            (out / name).unlink(missing_ok=True)
    index.to_parquet(out / "index.parquet", index=False)
    objects.to_parquet(out / "objects.parquet", index=False)

    first = stores[0].manifest
    states = [load_histogram(s.path) for s in stores]
    histogram = merge_histograms(states) if all(st is not None for st in states) else None
    acts = ConcatRows([s.activations for s in stores])
    cells = np.concatenate([s.valid_cells for s in stores])
    np.save(out / "thresholds.npy", store_thresholds(acts, cells, first["quantile"], histogram))

    supercategories = {}
    for s in stores:
        supercategories.update(s.manifest.get("supercategories", {}))
    write_manifest(out, first["key"], dict(
        contents, model_name=first["model_name"], shape=[n, *stores[0].shape[1:]], dtype=first["dtype"],
        image_size=first["image_size"], quantile=first["quantile"], n_objects=len(objects),
        n_invalid=sum(s.manifest["n_invalid"] for s in stores), supercategories=supercategories))


def _stack_rows(file: Path, arrays: list, offsets) -> None:
    """Write the shards' (n_i, K) float32 arrays one after another into ``file``, one shard in memory at a time."""
    writer = RowWriter(file, (int(offsets[-1]), arrays[0].shape[1]), np.float32)
    try:
        for array, off in zip(arrays, offsets):
            writer.write(int(off), np.asarray(array))
    finally:
        writer.close()


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
