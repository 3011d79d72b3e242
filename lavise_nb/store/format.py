"""The on-disk format of an activation store.

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

While a build runs, the folder also holds ``building.json`` (its progress) and
``parts/`` (one ``.npz`` per batch: masks and errors); both go once ``manifest.json``
is written, and only a folder with ``manifest.json`` is a complete store.

A merged store (:func:`lavise_nb.store.build.merge_shards`) holds the index, objects,
maxima and thresholds over all shards; its manifest lists the shard folders
(``shards``, ``shard_ranges``), which keep the activations and masks.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._utils.version import VERSION

if TYPE_CHECKING:
    from ..probe import TargetModel

__all__ = ["FORMAT", "folder_name", "key_hash", "slug", "store_key", "write_json", "write_manifest"]

FORMAT = 1


def slug(text: str) -> str:
    """``text`` with every character that is not alphanumeric replaced by ``-``, for folder names."""
    return "".join(ch if ch.isalnum() else "-" for ch in text).strip("-")


def write_json(path: Path, payload: dict) -> None:
    """Write ``payload`` as indented, key-sorted JSON, atomically (through a ``.tmp`` file)."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    os.replace(tmp, path)


def store_key(model: TargetModel, layer: str, dataset, dtype: str = "float16") -> dict:
    """The fields that decide whether an existing store can be reused."""
    return {
        "format": FORMAT,
        "model": model.fingerprint,
        "layer": layer,
        "dataset": dataset.dataset_id,
        "preprocess": dataset.preprocess.describe(),
        "dtype": dtype,
    }


def key_hash(key: dict) -> str:
    """12 hex digits of the SHA-256 of the key's sorted JSON."""
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:12]


def folder_name(model_name: str, layer: str, key: dict, shard: dict | None = None) -> str:
    """The store's folder name: model, layer, key hash and, for a shard, ``_shard{i}of{n}``."""
    name = f"{slug(model_name)}_{slug(layer)}_{key_hash(key)}"
    if shard is not None:
        name += f"_shard{shard['index']:0{len(str(shard['count'] - 1))}d}of{shard['count']}"
    return name


def write_manifest(folder: Path, key: dict, *, model_name: str, shape, dtype: str, image_size: int,
                   quantile: float, n_objects: int, n_invalid: int, supercategories: dict,
                   shard: dict | None = None, shards: list[str] | None = None,
                   shard_ranges: list | None = None) -> dict:
    """Write ``manifest.json``, the file that marks ``folder`` as a complete store.

    Parameters
    ----------
    folder : pathlib.Path
    key : dict
        From :func:`store_key`.
    model_name, dtype : str
        The model's name; the activations' dtype (``"float16"`` or ``"float32"``).
    shape : sequence of int
        (N, C, h, w) of the activations.
    image_size, n_objects, n_invalid : int
        Input size S; number of object masks; number of unreadable images.
    quantile : float
        The thresholds' quantile.
    supercategories : dict
        Concept -> supercategory.
    shard : dict, optional
        A shard's ``index``, ``count``, ``start``, ``stop`` and ``total``.
    shards, shard_ranges : list, optional
        A merged store's shard folders (relative to ``folder`` when possible) and their
        ``[start, stop)`` image ranges.

    Returns
    -------
    dict
        The manifest written.
    """
    manifest = {
        "key": key,
        "key_hash": key_hash(key),
        "model_name": model_name,
        "shape": [int(v) for v in shape],
        "dtype": str(dtype),
        "image_size": int(image_size),
        "quantile": quantile,
        "n_objects": int(n_objects),
        "n_invalid": int(n_invalid),
        "supercategories": dict(supercategories),
        "package_version": VERSION,
    }
    optional = {"shard": shard, "shards": shards, "shard_ranges": shard_ranges}
    manifest.update({name: value for name, value in optional.items() if value is not None})
    write_json(folder / "manifest.json", manifest)
    return manifest
