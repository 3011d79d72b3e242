"""Object masks for a store: packing them to bits, area-averaging them to the feature map size,
and the build loader's collate that does both in its worker processes; and the map cells that
show the image (not letterbox padding), the only cells thresholds are taken over."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..datasets import collate_samples

__all__ = ["CELL_SHARE", "VALID_CELLS", "StoreCollate", "adaptive_weights", "load_valid_cells", "mask_part",
           "part_cells", "pool_masks", "unpack_masks"]

CELL_SHARE = 0.5        # a map cell counts when more than this share of its pixels are real (not padding)
VALID_CELLS = "valid_cells.npy"    # a store's (N, h, w) bool cells that show its images


def adaptive_weights(size: int, out: int) -> np.ndarray:
    """(out, size) float32 averaging matrix of adaptive average pooling (PyTorch's bins)."""
    weights = np.zeros((out, size), dtype=np.float32)
    for i in range(out):
        lo, hi = (i * size) // out, -((-(i + 1) * size) // out)
        weights[i, lo:hi] = 1.0 / (hi - lo)
    return weights


def pool_masks(masks: np.ndarray, map_size) -> np.ndarray:
    """Area-average (K, S, S) bool masks to (K, h, w) float32, as ``F.adaptive_avg_pool2d``.

    Block sums when the map size divides the image size (exact), else two small matrix
    products; both are ~50x faster than adaptive_avg_pool2d on full-size masks on a CPU.
    """
    k, height, width = masks.shape
    h, w = (int(v) for v in map_size)
    if height % h == 0 and width % w == 0:
        sums = masks.reshape(k, h, height // h, w, width // w).sum((2, 4), dtype=np.int32)
        return (sums / np.float32((height // h) * (width // w))).astype(np.float32)
    rows, cols = adaptive_weights(height, h), adaptive_weights(width, w)
    return np.einsum("hs,kst,wt->khw", rows, masks.astype(np.float32), cols, optimize=True).astype(np.float32)


def unpack_masks(packed: np.ndarray, size: int) -> torch.Tensor:
    """(n, ceil(S*S/8)) uint8 packed masks -> (n, S, S) bool."""
    bits = np.unpackbits(packed, axis=1, count=size * size)
    return torch.from_numpy(bits.reshape(len(packed), size, size).astype(bool))


def mask_part(batch: dict, map_size, offset: int = 0) -> dict:
    """The arrays of one batch's part file.

    Parameters
    ----------
    batch : dict
        From :func:`lavise_nb.datasets.collate_samples`: ``images`` (B, 3, S, S),
        ``masks`` (per image a (K, S, S) tensor), ``concepts``, ``index`` (B,), ``errors``.
    map_size : (h, w)
    offset : int
        Subtracted from dataset indices (a shard's first image).

    Returns
    -------
    dict
        ``packed`` (K, ceil(S*S/8)) uint8, ``small`` (K, h, w) float32, ``image``,
        ``area`` (K,) int64, ``concept`` (K,) str, ``index`` (B,) int64, ``errors`` (B,) str
        (``""`` for a readable image), ``cells`` (B, h, w) bool (the map cells mostly of real
        pixels, from the batch's ``valid``; none for an unreadable image); unreadable images
        have no masks.
    """
    packed, small, image, concept, area, errors = [], [], [], [], [], []
    for masks, names, i, error in zip(batch["masks"], batch["concepts"], batch["index"].tolist(), batch["errors"]):
        errors.append("" if error is None else str(error))
        if error is not None or len(names) == 0:
            continue
        full = masks.bool().numpy()
        flat = full.reshape(len(names), -1)
        packed.append(np.packbits(flat, axis=1))
        small.append(pool_masks(full, map_size))
        image += [i - offset] * len(names)
        concept += list(names)
        area += np.count_nonzero(flat, axis=1).tolist()
    s = batch["images"].shape[-1]
    valid = batch["valid"].numpy() if "valid" in batch else np.ones((len(errors), s, s), bool)
    cells = pool_masks(valid, map_size) > CELL_SHARE
    cells[np.asarray(errors) != ""] = False
    return dict(
        packed=np.concatenate(packed) if packed else np.zeros((0, (s * s + 7) // 8), np.uint8),
        small=np.concatenate(small).astype(np.float32) if small else np.zeros((0, *map_size), np.float32),
        image=np.asarray(image, np.int64), concept=np.asarray(concept, dtype=str),
        area=np.asarray(area, np.int64), index=batch["index"].numpy() - offset,
        errors=np.asarray(errors, dtype=str), cells=cells,
    )


class StoreCollate:
    """DataLoader collate for building: also packs and area-averages the masks.

    This work then runs in the loader's worker processes, beside the forward pass, not
    after it. The batch gets ``part`` (:func:`mask_part`) and loses its full-size ``masks``
    and ``valid``.
    """

    def __init__(self, map_size, offset: int = 0):
        self.map_size = tuple(int(v) for v in map_size)
        self.offset = offset

    def __call__(self, samples: list) -> dict:
        batch = collate_samples(samples)
        batch["part"] = mask_part(batch, self.map_size, self.offset)
        del batch["masks"], batch["valid"]
        return batch


def part_cells(files: list, map_size) -> np.ndarray:
    """The ``cells`` of a build's part files, concatenated: (n, h, w) bool.

    Parts written before cells were recorded (only centre crops then) count every cell of a
    readable image.
    """
    blocks = []
    for f in files:
        with np.load(f) as data:
            if "cells" in data.files:
                blocks.append(data["cells"])
            else:
                readable = data["errors"] == ""
                blocks.append(np.broadcast_to(readable[:, None, None], (len(readable), *map_size)))
    h, w = (int(v) for v in map_size)
    return np.concatenate(blocks).astype(bool) if blocks else np.zeros((0, h, w), bool)


def load_valid_cells(folder: Path, valid: np.ndarray, map_size) -> np.ndarray:
    """A store's (N, h, w) bool map cells that show its images, the cells thresholds are taken over.

    Parameters
    ----------
    folder : pathlib.Path
        A store (or shard) folder; one written before ``valid_cells.npy`` existed (centre
        crops only) counts every cell of its valid images.
    valid : numpy.ndarray
        (N,) bool, the store's readable images (``index["valid"]``).
    map_size : (h, w)
    """
    valid = np.asarray(valid, dtype=bool)
    file = Path(folder) / VALID_CELLS
    if file.is_file():
        return np.load(file, mmap_mode="r") & valid[:, None, None]
    return np.broadcast_to(valid[:, None, None], (len(valid), *(int(v) for v in map_size)))
