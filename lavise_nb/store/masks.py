"""Object masks for a store: packing them to bits, area-averaging them to the feature map size,
and the build loader's collate that does both in its worker processes."""
from __future__ import annotations

import numpy as np
import torch

from ..datasets import collate_samples

__all__ = ["StoreCollate", "adaptive_weights", "mask_part", "pool_masks", "unpack_masks"]


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
        (``""`` for a readable image); unreadable images have no masks.
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
    return dict(
        packed=np.concatenate(packed) if packed else np.zeros((0, (s * s + 7) // 8), np.uint8),
        small=np.concatenate(small).astype(np.float32) if small else np.zeros((0, *map_size), np.float32),
        image=np.asarray(image, np.int64), concept=np.asarray(concept, dtype=str),
        area=np.asarray(area, np.int64), index=batch["index"].numpy() - offset,
        errors=np.asarray(errors, dtype=str),
    )


class StoreCollate:
    """DataLoader collate for building: also packs and area-averages the masks.

    This work then runs in the loader's worker processes, beside the forward pass, not
    after it. The batch gets ``part`` (:func:`mask_part`) and loses its full-size ``masks``.
    """

    def __init__(self, map_size, offset: int = 0):
        self.map_size = tuple(int(v) for v in map_size)
        self.offset = offset

    def __call__(self, samples: list) -> dict:
        batch = collate_samples(samples)
        batch["part"] = mask_part(batch, self.map_size, self.offset)
        del batch["masks"]
        return batch
