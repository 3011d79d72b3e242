"""ShapesWorld: a tiny procedural dataset of coloured shapes on textures, for fast tests."""
from __future__ import annotations

import numpy as np
import pandas as pd
from PIL import Image

from ..config import check_int
from ..transform import Preprocess
from .base import ImageDataset, make_id, merge_masks

__all__ = ["ShapesWorld"]


class ShapesWorld(ImageDataset):
    """A tiny procedural dataset for fast tests, with no external data.

    Each image has a textured grey background (``stripes``, ``dots``,
    ``checkers`` or ``plain``) and 1-2 coloured shapes (``circle``, ``square``,
    ``triangle``; ``red``, ``green``, ``blue``, ``yellow``, near-pure colours
    plus mild noise). Each shape gives two concept masks with the same pixels,
    its colour and its shape; the visible background gives its texture. Shapes
    may overlap; masks hold visible pixels only. Everything is derived from
    ``(seed, index)``, nothing is stored.

    Parameters
    ----------
    n_images : int
        At least 1.
    preprocess : Preprocess, optional
        Default ``Preprocess(size=size or 64, mean=(0.5,)*3, std=(0.25,)*3)``.
    seed : int
    size : int, optional
        Side of the rendered square image; default ``preprocess.size`` (then
        preprocessing does no resampling and masks are exact).

    Attributes
    ----------
    concepts : list of str
        The whole vocabulary (colours, shapes, textures), sorted.
    """

    TEXTURES = ("stripes", "dots", "checkers", "plain")
    SHAPES = ("circle", "square", "triangle")
    COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.1, 0.9),
               "yellow": (0.9, 0.9, 0.1)}
    NOISE = 0.03
    _VERSION = 1

    def __init__(self, n_images: int = 200, preprocess: Preprocess | None = None, seed: int = 0,
                 size: int | None = None):
        if preprocess is None:
            preprocess = Preprocess(size=size or 64, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
        super().__init__(preprocess)
        self.n_images, self.seed = check_int("n_images", n_images), int(seed)
        self.size = int(size or preprocess.size)
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels to draw shapes; got {self.size}")
        self.concepts = sorted([*self.COLOURS, *self.SHAPES, *self.TEXTURES])
        self.supercategories = {**{c: "colour" for c in self.COLOURS}, **{c: "shape" for c in self.SHAPES},
                                **{c: "background" for c in self.TEXTURES}}
        self.records = pd.DataFrame({"image_id": np.arange(self.n_images), "path": "", "width": self.size,
                                     "height": self.size})
        self._ids = list(range(self.n_images))
        self.dataset_id = make_id("shapes", f"v{self._VERSION}",
                                  {"n_images": self.n_images, "seed": self.seed, "size": self.size}, preprocess)

    def __len__(self) -> int:
        return self.n_images

    def layout(self, i: int) -> dict:
        """The planted truth of image ``i``.

        Returns
        -------
        dict
            ``texture`` (str), ``size`` (int) and ``shapes``: list of dicts with
            ``shape``, ``colour``, ``cx``, ``cy`` (centre column, row) and
            ``radius`` in pixels, drawn in order (later ones on top).
        """
        i = self._index(i)
        rng = self._rng(i, 0)
        texture = self.TEXTURES[rng.integers(len(self.TEXTURES))]
        shapes = []
        for _ in range(int(rng.integers(1, 3))):
            radius = float(rng.uniform(0.12, 0.22) * self.size)
            cx, cy = self._place(rng, radius, shapes)
            shapes.append({"shape": self.SHAPES[rng.integers(len(self.SHAPES))],
                           "colour": list(self.COLOURS)[rng.integers(len(self.COLOURS))],
                           "cx": cx, "cy": cy, "radius": radius})
        return {"texture": texture, "size": self.size, "shapes": shapes}

    def _rng(self, i: int, stream: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, i, stream])

    def _place(self, rng: np.random.Generator, radius: float, placed: list) -> tuple[float, float]:
        low, high = radius + 1, self.size - radius - 1
        for _ in range(20):
            cx, cy = (float(v) for v in rng.uniform(low, high, size=2))
            if all(np.hypot(cx - s["cx"], cy - s["cy"]) > radius + s["radius"] for s in placed):
                break
        return cx, cy

    def _shape_mask(self, shape: dict) -> np.ndarray:
        rows, cols = np.mgrid[0:self.size, 0:self.size] + 0.5
        dx, dy, r = cols - shape["cx"], rows - shape["cy"], shape["radius"]
        if shape["shape"] == "circle":
            return dx ** 2 + dy ** 2 <= r ** 2
        if shape["shape"] == "square":
            half = r * 0.85
            return (np.abs(dx) <= half) & (np.abs(dy) <= half)
        # upward triangle: apex at top, inside three half-planes
        top, bottom = -r, r * 0.75
        slope = (bottom - top) / (r * 0.95)
        return (dy <= bottom) & (dy >= top + slope * np.abs(dx))

    def _background(self, texture: str) -> np.ndarray:
        """(size, size) grey levels in [0.3, 0.7]."""
        rows, cols = np.mgrid[0:self.size, 0:self.size]
        period = max(self.size // 8, 2)
        if texture == "stripes":
            pattern = ((rows + cols) // (period // 2 + 1)) % 2 == 0
        elif texture == "checkers":
            pattern = ((rows // period) + (cols // period)) % 2 == 0
        elif texture == "dots":
            ry, rx = rows % period - period / 2 + 0.5, cols % period - period / 2 + 0.5
            pattern = ry ** 2 + rx ** 2 <= (period / 3) ** 2
        else:
            pattern = np.zeros((self.size, self.size), dtype=bool)
        return np.where(pattern, 0.3, 0.6)

    def render(self, i: int) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Draw image ``i`` at its native size.

        Returns
        -------
        image : numpy.ndarray
            (size, size, 3) uint8 RGB.
        concepts : list of str
            Names of the masks, merged per name, in first-appearance order.
        masks : numpy.ndarray
            (K, size, size) bool, visible pixels only.
        """
        layout = self.layout(i)
        rgb = np.repeat(self._background(layout["texture"])[..., None], 3, axis=2)
        covered = np.zeros((self.size, self.size), dtype=bool)
        visible = []
        for shape in layout["shapes"]:
            mask = self._shape_mask(shape)
            rgb[mask] = self.COLOURS[shape["colour"]]
            visible = [(s, m & ~mask) for s, m in visible] + [(shape, mask)]
            covered |= mask
        rgb = rgb + self._rng(i, 1).normal(0.0, self.NOISE, rgb.shape)
        image = (np.clip(rgb, 0, 1) * 255).round().astype(np.uint8)
        instances = [(n, m) for s, m in visible for n in (s["colour"], s["shape"])]
        instances.append((layout["texture"], ~covered))
        names, masks = merge_masks(instances, merge=True)
        return image, names, np.stack(masks)

    def raw_masks(self, i) -> tuple[list[str], np.ndarray]:
        """Image ``i``'s masks before preprocessing: the ``concepts`` and ``masks`` of :meth:`render`."""
        _, names, masks = self.render(i)
        return names, masks

    def __getitem__(self, i) -> dict:
        i = self._index(i)
        image, names, raw = self.render(i)
        masks = self.preprocess.masks(raw, self.size, self.size)
        keep = masks.flatten(1).any(1)
        for name, kept in zip(names, keep.tolist()):
            if not kept:
                self._note(i, name, "empty mask")
        return {"image": self.preprocess.image(Image.fromarray(image, "RGB")), "masks": masks[keep],
                "valid": self.preprocess.valid_mask(self.size, self.size),
                "concepts": [n for n, k in zip(names, keep.tolist()) if k], "index": i, "error": None}
