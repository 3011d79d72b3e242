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
    valid_cells.npy        (N, h, w) bool, the map cells that show the image (not letterbox padding),
                           the cells thresholds are taken over (stores built before it: every cell)
    logits.npy             (N, K) float32, the network's own output from the same forward pass (NaN rows
                           for unreadable images); absent when the output is not a (B, K) tensor, or
                           built with ``BuildSettings(logits=False)`` or before it existed
    null_directions.npy    (n, C) float32, the coherence null's random unit directions
                           (:func:`lavise_nb.coherence.draw_directions`), and
    null_maxima.npy        (N, n) float32, each one's max response over each image's valid cells, from the
                           same pass (-inf for unreadable images); absent in stores built before them

The manifest also lists each of these files (``files``): its size in bytes, a BLAKE2b
checksum and, for ``.npy`` files, shape and dtype; :mod:`lavise_nb.store.integrity`
checks them.

While a build runs, the folder also holds ``building.json`` (its progress) and
``parts/`` (one ``.npz`` per batch: masks and errors, and ``checksums.txt``); both go
once ``manifest.json`` is written, and only a folder with ``manifest.json`` is a
complete store. Beside the folder, ``<folder>.lock`` keeps two builds (or merges) of
one store apart (:mod:`lavise_nb.store.locks`).

A merged store (:func:`lavise_nb.store.merge.merge_shards`) holds the index, objects,
maxima, logits and thresholds over all shards; its manifest lists the shard folders
(``shards``, ``shard_ranges``), which keep the activations and masks.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from .._utils.version import VERSION
from .writers import describe_files

if TYPE_CHECKING:
    from ..probe import TargetModel

__all__ = ["FORMAT", "LEFTOVERS", "MERGED_FILES", "OPTIONAL_FILES", "STORE_FILES", "folder_name", "key_hash", "slug", "store_key",
           "write_json", "write_manifest"]

FORMAT = 1
STORE_FILES = ("activations.npy", "maxima.npy", "thresholds.npy", "index.parquet", "objects.parquet",
               "object_masks.npy", "object_masks_small.npy", "histogram.npz", "valid_cells.npy", "logits.npy",
               "null_directions.npy", "null_maxima.npy")
MERGED_FILES = ("maxima.npy", "thresholds.npy", "index.parquet", "objects.parquet", "logits.npy",
                "null_directions.npy", "null_maxima.npy")
OPTIONAL_FILES = ("histogram.npz", "valid_cells.npy", "logits.npy", "null_directions.npy", "null_maxima.npy")
LEFTOVERS = ("building.json", "parts", "manifest.json.tmp", "building.json.tmp", "histogram.tmp.npz")


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


def write_manifest(folder: Path, key: dict, contents: dict) -> dict:
    """Write ``manifest.json``, the file that marks ``folder`` as a complete store.

    Parameters
    ----------
    folder : pathlib.Path
    key : dict
        From :func:`store_key`.
    contents : dict
        ``model_name`` (str), ``shape`` ((N, C, h, w) of the activations), ``dtype``
        (``"float16"`` or ``"float32"``), ``image_size`` (input size S), ``quantile`` (the
        thresholds'), ``n_objects``, ``n_invalid`` (object masks; unreadable images),
        ``supercategories`` (concept -> supercategory); optionally ``shard`` (a shard's
        ``index``, ``count``, ``start``, ``stop`` and ``total``), or for a merged store
        ``shards`` (its shard folders, relative to ``folder`` when possible),
        ``shard_ranges`` (their ``[start, stop)`` image ranges) and ``shard_manifests``
        (the checksums of their manifests). None values are left out.

    Returns
    -------
    dict
        The manifest written; its ``files`` describe the store's files as they are now.
    """
    manifest = {
        "key": key,
        "key_hash": key_hash(key),
        "model_name": contents["model_name"],
        "shape": [int(v) for v in contents["shape"]],
        "dtype": str(contents["dtype"]),
        "image_size": int(contents["image_size"]),
        "quantile": float(contents["quantile"]),
        "n_objects": int(contents["n_objects"]),
        "n_invalid": int(contents["n_invalid"]),
        "supercategories": dict(contents.get("supercategories") or {}),
        "package_version": VERSION,
    }
    optional = ("shard", "shards", "shard_ranges", "shard_manifests")
    manifest.update({name: contents[name] for name in optional if contents.get(name) is not None})
    manifest["files"] = describe_files(folder, MERGED_FILES if manifest.get("shards") else STORE_FILES)
    write_json(folder / "manifest.json", manifest)
    return manifest
