"""Per-filter thresholds: exact quantiles of a store's activations over all spatial positions
of its valid images (or, given the (N, h, w) cells that show the images, over those cells only:
letterbox padding stays out).

float16 stores get them in the build's single pass from a :class:`TailHistogram`
(saved as ``histogram.npz``; shards' histograms add up, so merging needs no pass over
the data); float32 stores, and the rare channel a histogram cannot settle, from an
exact second pass (:func:`quantile_by_channel`).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .writers import save_npz

__all__ = ["HALF_BINS", "TailHistogram", "histogram_quantiles", "load_histogram", "merge_histograms",
           "quantile_by_channel", "save_histogram", "store_thresholds"]

HALF_BINS = 1 << 15      # bins: the bit patterns of non-negative float16 values (+0 ... inf, NaN)


def quantile_by_channel(activations, valid: np.ndarray, quantile: float, block_bytes: int = 64 << 20,
                        channels=None) -> np.ndarray:
    """Exact per-channel quantile of activations over the valid images or cells (a second pass).

    Parameters
    ----------
    activations : array-like
        (N, C, h, w), read a block of channels at a time (``block_bytes`` as float32).
    valid : numpy.ndarray
        (N,) bool images, or (N, h, w) bool cells.
    quantile : float
    channels : array-like of int, optional
        Only these channels (default: all).

    Returns
    -------
    numpy.ndarray
        (len(channels),) float32; zeros when no image is valid.
    """
    n, c, h, w = activations.shape
    channels = np.arange(c) if channels is None else np.asarray(channels, dtype=np.int64)
    valid = np.asarray(valid, dtype=bool)
    cells = valid if valid.ndim == 3 else np.broadcast_to(valid[:, None, None], (n, h, w))
    rows = np.flatnonzero(cells.reshape(n, -1).any(1))
    out = np.zeros(len(channels), dtype=np.float32)
    if rows.size == 0 or len(channels) == 0:
        return out
    taken = np.asarray(cells[rows]).reshape(-1) if valid.ndim == 3 else slice(None)
    step = max(1, block_bytes // max(1, rows.size * h * w * 4))
    for start in range(0, len(channels), step):
        wanted = channels[start:start + step]
        lo, hi = int(wanted.min()), int(wanted.max()) + 1
        block = np.asarray(activations[rows, lo:hi], dtype=np.float32)[:, wanted - lo]
        block = block.transpose(1, 0, 2, 3).reshape(block.shape[1], -1)[:, taken]
        out[start:start + step] = np.quantile(block, quantile, axis=1)
    return out


class TailHistogram:
    """Exact per-channel quantiles of float16 values in one streaming pass, in constant memory.

    Every non-negative float16 value has its own bin (its bit pattern, which sorts like the
    value), so quantiles of the stored float16 activations are exact. To keep the per-batch
    cost low, only values at or above a per-channel floor are binned (the floor is a lower
    quantile of the first batch); values below it are only counted. A channel whose
    quantile falls below its floor (rare) is settled by an exact second pass over it.

    Parameters
    ----------
    channels : int
        C.
    device : str or torch.device
    floors : array-like of int, optional
        (C,) floor bit patterns (a resumed build's); default: set from the first batch.

    Attributes
    ----------
    counts : torch.Tensor
        (C * 32768,) int32 counts of the binned values, channel-major.
    below : torch.Tensor
        (C,) int64 counts of the values under the floor.
    floors : torch.Tensor or None
        (C,) int32 floor bit patterns.
    """

    def __init__(self, channels: int, device, floors=None):
        self.device = torch.device(device)
        # int32 counts: 4 bytes x C x 32768 bins (42 MB for 320 channels), whatever the dataset size
        self.counts = torch.zeros(channels * HALF_BINS, dtype=torch.int32, device=self.device)
        self.below = torch.zeros(channels, dtype=torch.int64, device=self.device)
        self.floors = None if floors is None else torch.as_tensor(floors, dtype=torch.int32, device=self.device)
        self._offsets = torch.arange(channels, dtype=torch.int32, device=self.device)[:, None] * HALF_BINS

    @staticmethod
    def keys(half: torch.Tensor) -> torch.Tensor:
        """(B, C, ...) float16 -> (C, B*...) int32 bit patterns; negative values give negative keys."""
        bits = half.view(torch.int16).transpose(0, 1).reshape(half.shape[1], -1)
        return bits.to(torch.int32)

    def set_floors(self, keys: torch.Tensor, quantile: float) -> None:
        """Floors from (C, M) keys: a quantile a little under ``1 - 4 * (1 - quantile)``, at least 0."""
        tail = 1.0 - quantile
        floor_q = max(0.0, 1.0 - 4 * tail - 0.01)
        k = max(1, int(floor_q * keys.shape[1]))
        self.floors = keys.kthvalue(k, dim=1).values.clamp_min(0).to(torch.int32)

    def add(self, half: torch.Tensor, quantile: float, cells: torch.Tensor | None = None) -> None:
        """Add a (B, C, h, w) float16 block: all of it (valid images only), or its (B, h, w) bool ``cells``."""
        if half.shape[0] == 0:
            return
        keys = self.keys(half)
        if cells is not None and not bool(cells.all()):
            keys = keys[:, cells.to(keys.device).reshape(-1)]
        if keys.shape[1] == 0:
            return
        if self.floors is None:
            self.set_floors(keys, quantile)
        take = keys >= self.floors[:, None]
        self.below += (~take).sum(1)
        picked = (keys + self._offsets)[take]
        self.counts.index_put_((picked.long(),), torch.ones_like(picked), accumulate=True)

    def state(self) -> dict:
        """``floors`` (C,) int32, ``below`` (C,) int64 and dense ``counts`` (C, 32768) int32, as numpy."""
        counts = self.counts.view(len(self.below), HALF_BINS).cpu().numpy()
        return {"floors": self.floors.cpu().numpy() if self.floors is not None else np.zeros(len(self.below), np.int32),
                "below": self.below.cpu().numpy(), "counts": counts}

    def save(self, path: Path) -> None:
        """Write ``histogram.npz``: floors, below and the non-zero bins only (small on disk)."""
        save_histogram(path, self.state())


def save_histogram(path: Path, state: dict) -> None:
    """Write a dense histogram state (:meth:`TailHistogram.state`) sparsely to the ``.npz`` file ``path``."""
    counts = np.asarray(state["counts"])
    channel, bins = np.nonzero(counts)
    save_npz(path, dict(floors=np.asarray(state["floors"], np.int32), below=np.asarray(state["below"], np.int64),
                        channel=channel.astype(np.int32), bin=bins.astype(np.uint16),
                        count=counts[channel, bins].astype(np.int64), channels=np.int64(counts.shape[0])))


def load_histogram(folder: Path) -> dict | None:
    """A store's ``histogram.npz`` as ``floors``, ``below`` and sparse ``counts``; None without one.

    ``counts`` is a ``(channel int64, bin uint16, count int64)`` triple sorted by channel then bin.
    """
    if not (folder / "histogram.npz").is_file():
        return None
    with np.load(folder / "histogram.npz") as data:
        return {"floors": data["floors"], "below": data["below"],
                "counts": (data["channel"].astype(np.int64), data["bin"], data["count"])}


def histogram_quantiles(floors: np.ndarray, below: np.ndarray, counts, quantile: float):
    """Quantiles from a tail histogram, linear interpolation as ``np.quantile``.

    Parameters
    ----------
    floors, below : numpy.ndarray
        (C,) floor bit patterns and counts under the floor.
    counts : numpy.ndarray or tuple
        (C, 32768) dense, or a sparse ``(channel, bin, count)`` triple sorted by channel then bin.
    quantile : float

    Returns
    -------
    values : numpy.ndarray
        (C,) float32.
    unresolved : numpy.ndarray
        int64 channels whose quantile fell below the floor (their value is not exact).
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


def merge_histograms(states: list[dict]) -> dict:
    """Sum sparse shard histograms that used different floors: below the highest floor only counts remain."""
    floors = np.max([s["floors"] for s in states], axis=0).astype(np.int64)
    c = len(floors)
    below = np.zeros(c, dtype=np.int64)
    keys, counts = [], []
    for s in states:
        channel, bins, count = s["counts"]
        keep = bins.astype(np.int64) >= floors[channel]
        below += s["below"] + np.bincount(channel[~keep], weights=count[~keep], minlength=c).astype(np.int64)
        keys.append(channel[keep].astype(np.int64) * HALF_BINS + bins[keep])
        counts.append(count[keep])
    keys, inverse = np.unique(np.concatenate(keys), return_inverse=True)
    summed = np.bincount(inverse, weights=np.concatenate(counts), minlength=len(keys)).astype(np.int64)
    return {"floors": floors, "below": below,
            "counts": ((keys // HALF_BINS).astype(np.int64), (keys % HALF_BINS).astype(np.uint16), summed)}


def store_thresholds(activations, valid: np.ndarray, quantile: float, histogram: dict | None) -> np.ndarray:
    """Exact per-channel quantiles: from the histogram when there is one, else a second pass.

    Parameters
    ----------
    activations : array-like
        (N, C, h, w), read only without a histogram or for channels it cannot settle.
    valid : numpy.ndarray
        (N,) bool images, or (N, h, w) bool cells (:func:`~lavise_nb.store.masks.load_valid_cells`).
    quantile : float
    histogram : dict or None
        From :func:`load_histogram` or :func:`merge_histograms`.

    Returns
    -------
    numpy.ndarray
        (C,) float32.
    """
    if histogram is None:
        return quantile_by_channel(activations, valid, quantile)
    thresholds, unresolved = histogram_quantiles(histogram["floors"], histogram["below"],
                                                 histogram["counts"], quantile)
    if unresolved.size:
        thresholds[unresolved] = quantile_by_channel(activations, valid, quantile, channels=unresolved)
    return thresholds
