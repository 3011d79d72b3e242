"""Pooling a store's feature maps under masks: the training pairs of the explainer head, in memory or on disk.

:func:`mask_table` lists the distinct masks of each image; :func:`pooled_masks` pools the
store's features under each (in memory), :func:`pooled_file` writes the same values to a
cached ``.npy`` file, and :func:`mask_features` picks one or the other by
:func:`memory_budget`, so training pairs of a large store live on disk, memory-mapped.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ._utils.cache import cache_dir
from ._utils.progress import progress

__all__ = ["pool_features", "mask_table", "pooled_masks", "pooled_file", "remove_stale_pooled", "mask_features",
           "memory_budget", "image_means", "masked_mean", "POOLED_BUDGET"]

POOLED_BUDGET = 512 << 20   # bytes of pooled training pairs held in memory; above it they are memory-mapped


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


def mask_table(store) -> pd.DataFrame:
    """One row per distinct mask of an image: the store's object masks with identical pixels grouped.

    Two concepts annotated with exactly the same pixels ("red" and "circle" for one
    shape) are one training mask with two positives. (A "pair" elsewhere in the
    package is a (filter, image) pair of an explanation.)

    Returns
    -------
    pandas.DataFrame
        Columns ``mask``, ``image``, ``object`` (a representative object row),
        ``concepts`` (tuple of names).
    """
    objects = store.objects
    digests = []
    for start in range(0, len(objects), 65536):
        block = np.asarray(store.packed_masks[start:start + 65536])
        digests += [hashlib.blake2b(row.tobytes(), digest_size=8).hexdigest() for row in block]
    frame = objects.assign(digest=digests)
    grouped = frame.groupby(["image", "digest"], sort=False).agg(
        object=("object", "first"), concepts=("concept", lambda c: tuple(sorted(set(c)))))
    table = grouped.reset_index().drop(columns="digest").sort_values("object", kind="stable")
    table = table.reset_index(drop=True)
    table.insert(0, "mask", np.arange(len(table)))
    return table


def masked_mean(flat: torch.Tensor, cells) -> torch.Tensor:
    """Mean of (n, C, s) maps over the cells marked True in ``cells`` (n, h, w) with h * w = s; (n, C)."""
    cells = np.asarray(cells, dtype=bool).reshape(len(flat), -1)
    if cells.all():
        return flat.mean(2)
    weights = torch.from_numpy(cells.astype(np.float32)).to(flat.device)[:, None]
    return (flat * weights).sum(2) / weights.sum(2).clamp_min(1)


def image_means(store, images, block: int = 256) -> torch.Tensor:
    """Each image's feature map averaged over the cells that show it (letterbox padding left out); (n, C).

    Read ``block`` images at a time: memory does not grow with ``len(images)`` beyond the (n, C) result.
    """
    images = np.asarray(images, dtype=np.int64).reshape(-1)
    out = torch.zeros(len(images), store.shape[1])
    cells = store.valid_cells
    for start in range(0, len(images), block):
        part = images[start:start + block]
        out[start:start + len(part)] = masked_mean(store.features(part).flatten(2), cells[part])
    return out


def _pooled_blocks(store, masks: pd.DataFrame, pooling: str, batch_images: int, show_progress: bool):
    """Yield (rows, (len(rows), C) pooled features) for the rows of ``masks``, ``batch_images`` images at a time."""
    images = masks["image"].to_numpy()
    objects = masks["object"].to_numpy()
    unique = np.unique(images)
    order = np.argsort(images, kind="stable")
    ordered = images[order]
    for start in progress(range(0, len(unique), batch_images), enabled=show_progress, desc="pool masks"):
        chunk = unique[start:start + batch_images]
        rows = np.sort(order[np.searchsorted(ordered, chunk[0]):np.searchsorted(ordered, chunk[-1], side="right")])
        features = store.features(chunk)
        local = np.searchsorted(chunk, images[rows])
        yield rows, pool_features(features[local], store.object_masks_small(objects[rows]), pooling)


def pooled_masks(store, masks: pd.DataFrame, pooling: str = "mass", batch_images: int = 256,
                 show_progress: bool = False) -> torch.Tensor:
    """Pool the store's features under each row of :func:`mask_table`; (n_masks, C) float32, in memory."""
    out = torch.zeros(len(masks), store.shape[1])
    for rows, values in _pooled_blocks(store, masks, pooling, batch_images, show_progress):
        out[rows] = values
    return out


def _pooled_key(store, masks: pd.DataFrame, pooling: str) -> str:
    """A digest of what the pooled pairs depend on: the store's manifest (its files' checksums), the masks, pooling."""
    digest = hashlib.sha256(json.dumps(store.manifest, sort_keys=True, default=str).encode())
    digest.update(pooling.encode())
    for column in ("image", "object"):
        digest.update(np.ascontiguousarray(masks[column].to_numpy(), dtype=np.int64).tobytes())
    return digest.hexdigest()[:16]


def pooled_file(store, masks: pd.DataFrame, pooling: str = "mass", folder=None, show_progress: bool = False) -> Path:
    """:func:`pooled_masks` written to a ``.npy`` file once and reused: (n_masks, C) float32 on disk.

    The file is keyed by the store's manifest (which holds its files' checksums), the masks and
    the pooling, written block by block with plain writes (memory does not grow with the store)
    under a temporary name and renamed when complete, so a killed run never leaves a partial file.

    Parameters
    ----------
    store : ActivationStore
    masks : pandas.DataFrame
        :func:`mask_table` rows.
    pooling : {"mass", "mean"}
    folder : path, optional
        Where the file goes (default: the cache's ``pooled/``).
    show_progress : bool

    Returns
    -------
    pathlib.Path
        The file; open it with ``np.load(path, mmap_mode="r")``.
    """
    from .store.format import slug, write_json
    from .store.writers import RowWriter, npy_header

    folder = cache_dir("pooled") if folder is None else Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{slug(store.layer)}_{_pooled_key(store, masks, pooling)}.npy"
    shape = (len(masks), int(store.shape[1]))
    if path.is_file() and npy_header(path)[:2] == (shape, np.dtype(np.float32)):
        return path
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npy")
    writer = RowWriter(tmp, shape, np.float32)
    try:
        for rows, values in _pooled_blocks(store, masks, pooling, 256, show_progress):
            values = values.numpy()
            breaks = np.flatnonzero(np.diff(rows) != 1) + 1
            for run in np.split(np.arange(len(rows)), breaks):
                if len(run):
                    writer.write(int(rows[run[0]]), values[run])
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    writer.close()
    os.replace(tmp, path)
    write_json(path.with_suffix(".json"), {"store": str(Path(store.path).resolve()),
                                           "manifest": _manifest_digest(Path(store.path))})
    remove_stale_pooled(folder)
    return path


def _manifest_digest(store_path: Path) -> str | None:
    try:
        return hashlib.sha256((store_path / "manifest.json").read_bytes()).hexdigest()[:16]
    except OSError:
        return None


def remove_stale_pooled(folder=None) -> list:
    """Delete pooled files whose store is gone or was rebuilt since (its ``manifest.json`` changed).

    Each file written by :func:`pooled_file` has a ``.json`` beside it naming its store; files
    without one (older versions) are left alone. A process still reading a deleted file keeps its
    pages (POSIX). Returns the deleted ``.npy`` paths.
    """
    folder = cache_dir("pooled") if folder is None else Path(folder)
    removed = []
    for note in sorted(folder.glob("*.json")):
        try:
            record = json.loads(note.read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or not record.get("store") or \
                _manifest_digest(Path(record["store"])) == record.get("manifest"):
            continue
        data = note.with_suffix(".npy")
        data.unlink(missing_ok=True)
        note.unlink(missing_ok=True)
        removed.append(data)
    return removed


def memory_budget() -> int:
    """Bytes of pooled pairs held in memory: ``$LAVISE_NB_POOLED_BUDGET`` when set, else :data:`POOLED_BUDGET`."""
    value = os.environ.get("LAVISE_NB_POOLED_BUDGET", "").strip()
    try:
        return int(float(value)) if value else POOLED_BUDGET
    except ValueError:
        raise ValueError(f"LAVISE_NB_POOLED_BUDGET must be a number of bytes, not {value!r}") from None


def mask_features(store, masks: pd.DataFrame, pooling: str = "mass", budget: int | None = None,
                  show_progress: bool = False) -> torch.Tensor:
    """Pooled features of every row of ``masks``, (n_masks, C) float32: in memory, or memory-mapped when large.

    Within ``budget`` bytes (default :func:`memory_budget`) this is :func:`pooled_masks`; above it,
    the tensor is a copy-on-write view of :func:`pooled_file`'s file: its pages are the file's,
    read on demand and dropped by the kernel when memory is short, so resident memory does not
    grow with the store. Both give the same values.
    """
    budget = memory_budget() if budget is None else int(budget)
    if len(masks) * int(store.shape[1]) * 4 <= budget:
        return pooled_masks(store, masks, pooling, show_progress=show_progress)
    path = pooled_file(store, masks, pooling, show_progress=show_progress)
    return torch.from_numpy(np.load(path, mmap_mode="c"))
