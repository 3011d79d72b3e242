"""Coherence: do a filter's top images agree on what it shows, more than a random direction's do?

For a filter u with top images i (max activation a_i > 0) and the explainer's own vector of each
(``v_i``, unit, without the class prior), coherence is the resultant length

    c_u = || sum_i a_i v_i || / sum_i a_i,  in [0, 1]

(1: every image maps to the same point of the word space; near 0: they point every way). It
needs no labels, so it exists for every filter. Its null is the same number for random unit
directions w of the layer's channel space, explained the same way (top-p images by max_ij w . F_ij,
the same pooling, the same head): ``null_share`` is (1 + the number of random directions at least
as coherent) / (1 + n). A filter whose images agree no more than those of a random mix of the
layer's channels (``null_share`` > 0.05) is one whose words should not be taken as its meaning.
"""
from __future__ import annotations

import hashlib

import numpy as np
import torch

from ._utils.progress import progress
from .config import ExplainSettings

__all__ = ["weighted_sums", "resultant_length", "RandomDirections", "draw_directions", "direction_maxima",
           "NULL_LEVEL", "NULL_DIRECTIONS"]

NULL_LEVEL = 0.05
NULL_DIRECTIONS = ExplainSettings.null_directions   # the null's directions; a store keeps their maxima from its build
_THRESHOLD_CELLS = 1 << 20


def weighted_sums(vectors: torch.Tensor, weights, groups) -> tuple[np.ndarray, torch.Tensor, torch.Tensor]:
    """Per group, the weighted sum of its vectors and of its weights.

    Parameters
    ----------
    vectors : torch.Tensor
        (P, dim).
    weights : array-like
        (P,) non-negative weights (max activations).
    groups : array-like
        (P,) int group of each vector (filter or direction).

    Returns
    -------
    (groups, sums, totals) : numpy.ndarray (G,) sorted unique groups, torch.Tensor (G, dim), torch.Tensor (G,)
    """
    unique, inverse = np.unique(np.asarray(groups), return_inverse=True)
    inverse = torch.from_numpy(inverse.reshape(-1))
    w = torch.tensor(np.asarray(weights, dtype=np.float32))
    sums = torch.zeros(len(unique), vectors.shape[1]).index_add_(0, inverse, vectors.float() * w[:, None])
    return unique, sums, torch.zeros(len(unique)).index_add_(0, inverse, w)


def resultant_length(vectors: torch.Tensor, weights, groups) -> tuple[np.ndarray, np.ndarray]:
    """Weighted resultant length of unit vectors (P, dim), per group (see :func:`weighted_sums`).

    Returns
    -------
    (groups, lengths) : numpy.ndarray (G,) sorted unique groups, numpy.ndarray (G,) in [0, 1]
    """
    unique, sums, totals = weighted_sums(vectors, weights, groups)
    return unique, (sums.norm(dim=1) / totals.clamp_min(1e-12)).numpy()


class RandomDirections:
    """Random unit directions of a store's channel space, treated as virtual filters.

    Parameters
    ----------
    store : ActivationStore
    n : int
        Number of directions.
    seed : int
    directions : torch.Tensor, optional
        (n, C) given unit directions instead of drawn ones (``n`` and ``seed`` are then ignored).
    """

    def __init__(self, store, n: int = NULL_DIRECTIONS, seed: int = 0, directions: torch.Tensor | None = None):
        if directions is None:
            directions = draw_directions(store.shape[1], n, seed)
        elif directions.shape[1] != store.shape[1]:
            raise ValueError(f"the directions have {directions.shape[1]} channels, the store {store.shape[1]}: "
                             "use a store of the same layer")
        self.store, self.seed, self.directions = store, seed, directions
        self._maxima = None

    @property
    def fingerprint(self) -> str:
        """A short hash of the directions' values (equal directions, equal fingerprint)."""
        return hashlib.sha1(self.directions.numpy().tobytes()).hexdigest()[:16]

    def on(self, store) -> "RandomDirections":
        """The same directions on another store of the same layer (for example probe scenes)."""
        return RandomDirections(store, seed=self.seed, directions=self.directions)

    def __len__(self) -> int:
        return len(self.directions)

    def responses(self, maps: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) features -> (B, n, h, w) responses w . F_ij of every direction."""
        return _responses(maps, self.directions)

    def maxima(self, block: int = 256, show_progress: bool = False) -> np.ndarray:
        """(N, n) float32 max response of each image over its real cells (-inf for unread images).

        The store's own (``null_maxima.npy``, kept by its build) when it holds these directions;
        else one pass over its activations. Cached on this object.
        """
        if self._maxima is None:
            kept = getattr(self.store, "null_directions", None)
            if kept is not None and kept.shape == self.directions.shape and \
                    torch.equal(torch.from_numpy(np.asarray(kept)), self.directions):
                self._maxima = np.asarray(self.store.null_maxima, dtype=np.float32)
                return self._maxima
            n_images = self.store.shape[0]
            cells = torch.from_numpy(self.store.valid_cells)
            out = np.full((n_images, len(self.directions)), -np.inf, dtype=np.float32)
            for start in progress(range(0, n_images, block), enabled=show_progress, desc="random directions"):
                rows = np.arange(start, min(start + block, n_images))
                out[rows] = direction_maxima(self.store.features(rows), self.directions, cells[rows]).numpy()
            self._maxima = out
        return self._maxima

    def top_indices(self, p: int) -> np.ndarray:
        """(n, p) int64 images with the highest max response per direction, best first."""
        maxima = self.maxima()
        p = min(p, len(maxima))
        return np.argsort(-maxima, axis=0, kind="stable")[:p].T.copy()

    def thresholds(self, quantile: float) -> torch.Tensor:
        """(n,) each direction's ``quantile`` of its responses over (at most about 1M sampled) real cells."""
        rng = np.random.default_rng(self.seed)
        valid_cells = self.store.valid_cells
        valid = valid_cells.reshape(len(valid_cells), -1).any(1)
        rows = np.flatnonzero(valid)
        per_image = int(np.prod(self.store.shape[2:]))
        rows = np.sort(rng.choice(rows, size=min(len(rows), max(1, _THRESHOLD_CELLS // per_image)), replace=False))
        values = []
        for start in range(0, len(rows), 256):
            part = rows[start:start + 256]
            cells = torch.from_numpy(valid_cells[part]).flatten(1)
            values.append(self.responses(self.store.features(part)).flatten(2).permute(1, 0, 2)[:, cells])
        values = torch.cat(values, dim=1).numpy()
        return torch.from_numpy(np.quantile(values, quantile, axis=1).astype(np.float32))


def draw_directions(channels: int, n: int = NULL_DIRECTIONS, seed: int = 0) -> torch.Tensor:
    """(n, channels) random unit directions, the same for the same arguments."""
    directions = torch.randn(n, channels, generator=torch.Generator().manual_seed(seed))
    return directions / directions.norm(dim=1, keepdim=True)


def direction_maxima(maps: torch.Tensor, directions: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
    """Max response of each direction over each image's real cells.

    Parameters
    ----------
    maps : torch.Tensor
        (B, C, h, w) features (float16 values are taken in float32).
    directions : torch.Tensor
        (n, C).
    cells : torch.Tensor
        (B, h, w) bool, the cells that show the image (none: -inf).

    Returns
    -------
    torch.Tensor
        (B, n) float32, on the CPU.
    """
    response = _responses(maps.float(), directions).flatten(2)
    inside = cells.to(maps.device).flatten(1)[:, None, :]
    return response.masked_fill(~inside, -np.inf).amax(dim=2).cpu()


def _responses(maps: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    return torch.einsum("bchw,nc->bnhw", maps, directions.to(maps.device))

