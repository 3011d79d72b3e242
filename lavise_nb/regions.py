"""A filter's region in an image, and crops around regions: one rule for every module.

Filter u's region in image i is its activation map A_ui, upsampled bilinearly to
the input size, above the filter's threshold T_u (:attr:`ActivationStore.thresholds`).
Explaining (image masking), evaluation (IoU ground truth, Network Dissection), the
class prior, the filter card and the bias gallery all call :func:`filter_regions`,
so recall and figures always agree on where a filter fires.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["filter_maps", "filter_regions", "upsample", "masks_at", "region_box", "crop_around"]


def upsample(maps: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear upsampling of maps (..., h, w) to (..., size, size), float32."""
    lead, (h, w) = maps.shape[:-2], maps.shape[-2:]
    flat = maps.reshape(-1, 1, h, w).float()
    up = F.interpolate(flat, size=(size, size), mode="bilinear", align_corners=False)
    return up.reshape(*lead, size, size)


def filter_maps(store, images, filters=None, size: int | None = None) -> torch.Tensor:
    """Upsampled activation maps.

    Parameters
    ----------
    store : ActivationStore
    images : array-like of int
        P image rows of the store.
    filters : array-like of int, optional
        P filters, one per image (pairs). None: every filter of each image.
    size : int, optional
        Output side (default: the store's input size).

    Returns
    -------
    torch.Tensor
        (P, size, size) float32 for pairs, (P, C, size, size) with ``filters=None``.
    """
    images = np.asarray(images, dtype=np.int64).reshape(-1)
    size = size or store.image_size
    maps = store.features(images)
    if filters is not None:
        filters = torch.from_numpy(np.array(filters, dtype=np.int64).reshape(-1))
        maps = maps[torch.arange(len(images)), filters]
    return upsample(maps, size)


def filter_regions(store, images, filters=None, size: int | None = None, thresholds=None) -> torch.Tensor:
    """Where each filter fires: its upsampled map above its threshold.

    Parameters
    ----------
    store : ActivationStore
    images, filters, size :
        As in :func:`filter_maps`.
    thresholds : array-like of float, optional
        (C,) per-filter thresholds (default: ``store.thresholds``; the bias analysis
        passes the reference store's).

    Returns
    -------
    torch.Tensor
        (P, size, size) bool for pairs, (P, C, size, size) with ``filters=None``.
    """
    maps = filter_maps(store, images, filters, size)
    limits = torch.as_tensor(np.asarray(store.thresholds if thresholds is None else thresholds, dtype=np.float32))
    if filters is None:
        return maps > limits[None, :, None, None]
    chosen = limits[torch.from_numpy(np.array(filters, dtype=np.int64).reshape(-1))]
    return maps > chosen[:, None, None]


def masks_at(store, objects, size: int) -> torch.Tensor:
    """Object masks at ``size x size``: area-averaged, kept where they cover more than half a cell; (n, size, size) bool."""
    full = store.object_masks(np.asarray(objects, dtype=np.int64)).float()[:, None]
    return F.adaptive_avg_pool2d(full, (size, size))[:, 0] > 0.5


def region_box(mask: torch.Tensor, context: float = 0.15, min_side: int = 16) -> tuple[int, int, int, int]:
    """The crop box around a region: its bounding box plus a margin, grown to ``min_side``.

    Parameters
    ----------
    mask : torch.Tensor
        (H, W) bool region; an empty one gives the whole picture.
    context : float
        Margin added on each side, as a share of the box's side.
    min_side : int
        Boxes grow to at least this many pixels a side.

    Returns
    -------
    (y0, y1, x0, x1) : int
        Rows ``y0:y1`` and columns ``x0:x1``, inside the picture.
    """
    height, width = mask.shape
    ys, xs = torch.nonzero(mask, as_tuple=True)
    if len(ys) == 0:
        return 0, height, 0, width
    y0, y1, x0, x1 = ys.min().item(), ys.max().item() + 1, xs.min().item(), xs.max().item() + 1
    grow_y = max(context * (y1 - y0), (min_side - (y1 - y0)) / 2, 0)
    grow_x = max(context * (x1 - x0), (min_side - (x1 - x0)) / 2, 0)
    return (max(0, int(y0 - grow_y)), min(height, int(math.ceil(y1 + grow_y))),
            max(0, int(x0 - grow_x)), min(width, int(math.ceil(x1 + grow_x))))


def crop_around(picture: torch.Tensor, mask: torch.Tensor, context: float = 0.15, min_side: int = 16,
                size: int | None = None) -> torch.Tensor:
    """A crop of the picture around a region's box (:func:`region_box`), resized to a square.

    Parameters
    ----------
    picture : torch.Tensor
        (3, H, W) model input.
    mask : torch.Tensor
        (H, W) bool region; an empty one returns the whole picture, resized.
    context, min_side :
        As in :func:`region_box`.
    size : int, optional
        Output side (default: H).

    Returns
    -------
    torch.Tensor
        (3, size, size).
    """
    size = size or picture.shape[1]
    y0, y1, x0, x1 = region_box(mask, context, min_side)
    window = picture[:, y0:y1, x0:x1]
    if window.shape[1:] == (size, size):
        return window
    return F.interpolate(window[None], size=(size, size), mode="bilinear", align_corners=False)[0]
