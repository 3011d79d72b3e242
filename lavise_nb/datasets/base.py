"""The shared base of every dataset: sample assembly, image loading, box masks and dataset ids.

:class:`ImageDataset` turns a subclass's ``records`` and per-image instances
into the sample contract of :mod:`lavise_nb.datasets`; the helpers are shared
by the concrete datasets.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageOps
from torch.utils.data import Dataset

from ..transform import Preprocess

__all__ = ["ImageDataset", "collate_samples", "normalize_concept", "merge_masks", "box_mask", "box_is_empty",
           "make_id", "file_hash", "require_file", "require_dir", "image_suffixes", "displayed_size"]

_REPORT_COLUMNS = ["image_id", "file", "concept", "problem"]
_TURNED = (5, 6, 7, 8)      # EXIF orientations that turn the image by 90 degrees
_IDENTIFIED_ONLY = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF"}     # Pillow names these files but decodes no pixels


# ----------------------------------------------------------------------------- helpers


def normalize_concept(name: str) -> str:
    """Canonical form of a concept name.

    Lowercase, stripped, with ``_``, ``-`` and runs of whitespace turned into a
    single space: ``"heron_greatblue" -> "heron greatblue"``,
    ``"Traffic Light" -> "traffic light"``.
    """
    return re.sub(r"[\s_\-]+", " ", str(name).lower()).strip()


def file_hash(*paths: Path) -> str:
    """SHA-256 hex digest of the files' bytes, one after another."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def make_id(kind: str, content_hash: str, params: dict, preprocess: Preprocess) -> str:
    """A ``dataset_id``, ``"<kind>-<16 hex digits>"``, from the content, parameters and preprocessing."""
    payload = json.dumps(
        {"content": content_hash, "params": params, "preprocess": preprocess.describe()},
        sort_keys=True,
        default=str,
    )
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def require_file(path, what: str, fix: str) -> Path:
    """``path`` as a Path; a FileNotFoundError naming ``what`` and the ``fix`` when it is not a file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {fix}")
    return path


def require_dir(path, what: str, fix: str) -> Path:
    """``path`` as a Path; a FileNotFoundError naming ``what`` and the ``fix`` when it is not a folder."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found or not a folder: {path}. {fix}")
    return path


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL mode to RGB; transparency is composited on white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        array = np.asarray(image, dtype=np.float64)
        top = 65535.0 if array.max(initial=0) > 255 else 255.0
        array = np.clip(array / top * 255.0, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    return image.convert("RGB")


def image_suffixes() -> tuple[str, ...]:
    """Lower-case file suffixes of every format this Pillow reads pixels from (``".jpg"``, ``".gif"``, ...), sorted."""
    readers = set(Image.OPEN) | {"MPO"}      # multi-picture JPEGs open through the JPEG reader
    return tuple(sorted(ext for ext, fmt in Image.registered_extensions().items()
                        if fmt in readers and fmt not in _IDENTIFIED_ONLY))


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """``(width, height)`` as displayed: swapped when the EXIF orientation turns the image by 90 degrees."""
    width, height = image.size
    try:
        orientation = image.getexif().get(0x0112, 1)
    except Exception:  # unreadable EXIF: as stored
        orientation = 1
    return (height, width) if orientation in _TURNED else (width, height)


def _load_rgb(path) -> tuple[Image.Image | None, str | None]:
    """Open ``path`` (its first frame) as RGB, turned as its EXIF orientation says;
    ``(image, None)`` or ``(None, error message)``."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(ImageOps.exif_transpose(image)), None
    except FileNotFoundError:
        return None, f"missing image: {path}"
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"unreadable image: {path}: {type(exc).__name__}: {exc}"


def _box_bounds(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Box ``(x, y, w, h)`` (x = column) clipped to the image: ``(row0, row1, col0, col1)``."""
    c0, r0 = max(int(round(x)), 0), max(int(round(y)), 0)
    c1, r1 = min(int(round(x + w)), width), min(int(round(y + h)), height)
    return r0, r1, c0, c1


def box_mask(x: float, y: float, w: float, h: float, width: int, height: int) -> np.ndarray:
    """Filled box ``(x, y, w, h)`` as a (height, width) bool mask: rows ``y:y+h``, columns ``x:x+w``."""
    mask = np.zeros((height, width), dtype=bool)
    r0, r1, c0, c1 = _box_bounds(x, y, w, h, width, height)
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = True
    return mask


def box_is_empty(x, y, w, h, width: int, height: int) -> bool:
    """Whether box ``(x, y, w, h)`` covers no pixel of a (height, width) image."""
    r0, r1, c0, c1 = _box_bounds(x, y, w, h, width, height)
    return r1 <= r0 or c1 <= c0


def merge_masks(instances: list[tuple[str, np.ndarray]], merge: bool) -> tuple[list[str], list[np.ndarray]]:
    """Union the (H, W) masks of equal concept names (first-appearance order) when ``merge``."""
    if not merge:
        return [n for n, _ in instances], [m for _, m in instances]
    merged: dict[str, np.ndarray] = {}
    for name, mask in instances:
        merged[name] = merged[name] | mask if name in merged else mask.astype(bool)
    return list(merged), list(merged.values())


def collate_samples(batch: list[dict]) -> dict:
    """Collate samples for a ``torch.utils.data.DataLoader``.

    Returns
    -------
    dict
        ``images`` (B, 3, S, S) float32; ``masks`` list of B (K_b, S, S) bool
        tensors; ``valid`` (B, S, S) bool, the real (not padding) pixels (a
        sample without ``"valid"`` counts as all real, or none when it has an
        error); ``concepts`` list of B lists of names; ``index`` (B,) int64;
        ``errors`` list of B (None or str).
    """
    images = torch.stack([s["image"] for s in batch])
    side = images.shape[-2:]
    return {
        "images": images,
        "masks": [s["masks"] for s in batch],
        "valid": torch.stack([s["valid"] if "valid" in s else torch.full(side, s["error"] is None) for s in batch]),
        "concepts": [list(s["concepts"]) for s in batch],
        "index": torch.tensor([s["index"] for s in batch], dtype=torch.long),
        "errors": [s["error"] for s in batch],
    }


# ----------------------------------------------------------------------------- base


class ImageDataset(Dataset):
    """The sample contract of :mod:`lavise_nb.datasets`, assembled from ``records`` and ``_instances``.

    Subclasses set ``records`` (with ``_set_records``), ``concepts`` and
    ``dataset_id``, and return each image's ``(concept, (H, W) bool mask)``
    instances from ``_instances``; this class opens, resizes, merges,
    preprocesses and reports.

    Parameters
    ----------
    preprocess : Preprocess
    """

    merge_instances = True

    def __init__(self, preprocess: Preprocess):
        if not isinstance(preprocess, Preprocess):
            raise TypeError(f"preprocess must be a lavise_nb.transform.Preprocess; got {type(preprocess).__name__}")
        self.preprocess = preprocess
        self._problems: dict[tuple, None] = {}
        self.records = pd.DataFrame(columns=["image_id", "path", "width", "height"])
        self.concepts: list[str] = []
        self.supercategories: dict[str, str] = {}
        self.dataset_id = ""

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(n_images={len(self)}, n_concepts={len(self.concepts)}, "
                f"dataset_id={self.dataset_id!r})")

    def report(self) -> pd.DataFrame:
        """Recorded problems, one row each: ``image_id``, ``file``, ``concept``, ``problem``.

        ``file`` is the image's path (None for problems of a concept or of an
        annotation without an image). Covers what construction found plus what
        ``__getitem__`` found in this process (problems met inside DataLoader
        worker processes show up in the batch's ``errors`` instead).
        """
        paths = dict(zip(self.records["image_id"], self.records["path"]))
        rows = [(image_id, file if file is not None else paths.get(image_id) or None, concept, problem)
                for image_id, concept, problem, file in self._problems]
        return pd.DataFrame(rows, columns=_REPORT_COLUMNS)

    def _note(self, image_id, concept, problem: str, file=None) -> None:
        self._problems.setdefault((image_id, concept, problem, None if file is None else str(file)), None)

    def _set_records(self, rows: list[dict]) -> None:
        self.records = pd.DataFrame(rows, columns=_ordered_columns(rows))
        self._ids = self.records["image_id"].tolist()
        self._paths = self.records["path"].tolist()
        self._sizes = [
            (None if pd.isna(w) else int(w), None if pd.isna(h) else int(h))
            for w, h in zip(self.records["width"], self.records["height"])
        ]

    def _index(self, i) -> int:
        i = int(i)
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {type(self).__name__} with {n} images")
        return i % n

    def _open(self, i: int) -> tuple[Image.Image | None, str | None]:
        return _load_rgb(self._paths[i])

    def _instances(self, i: int, width: int, height: int) -> list[tuple[str, np.ndarray]]:
        """(concept, (height, width) bool mask) per annotated instance."""
        return []

    def raw_masks(self, i) -> tuple[list[str], np.ndarray]:
        """Image ``i``'s masks before preprocessing, at the size its annotation gives.

        Instances are merged as in the samples, and masks that preprocessing
        empties (e.g. outside a centre crop) are kept.

        Returns
        -------
        names : list of str
            n concept names.
        masks : numpy.ndarray
            (n, H, W) bool, indexed (row, column); H, W are ``records``'
            ``height`` and ``width`` (the displayed image's, when records have none).

        Raises
        ------
        ValueError
            The records have no size for the image and it cannot be read.
        """
        i = self._index(i)
        width, height = self._sizes[i]
        if width is None or height is None:
            image, error = self._open(i)
            if error is not None:
                raise ValueError(f"image {i} has no size in the records and cannot be read ({error})")
            width, height = image.size
        names, masks = merge_masks(self._instances(i, width, height), self.merge_instances)
        return names, np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)

    def _failed(self, i: int, error: str) -> dict:
        s = self.preprocess.size
        return {
            "image": torch.zeros(3, s, s, dtype=torch.float32),
            "masks": torch.zeros(0, s, s, dtype=torch.bool),
            "valid": torch.zeros(s, s, dtype=torch.bool),
            "concepts": [],
            "index": i,
            "error": error,
        }

    def __getitem__(self, i) -> dict:
        i = self._index(i)
        image_id = self._ids[i]
        image, error = self._open(i)
        if error is not None:
            self._note(image_id, None, error.split(":")[0])
            return self._failed(i, error)
        width, height = self._sizes[i]
        if width is None or height is None:
            width, height = image.size
        elif image.size != (width, height):
            self._note(image_id, None, f"image size {image.size} differs from annotation {(width, height)}; resized")
            image = image.resize((width, height), Image.BILINEAR)
        names, masks = self._masks(i, image_id, width, height)
        return {"image": self.preprocess.image(image), "masks": masks,
                "valid": self.preprocess.valid_mask(width, height), "concepts": names, "index": i, "error": None}

    def _masks(self, i: int, image_id, width: int, height: int) -> tuple[list[str], torch.Tensor]:
        s = self.preprocess.size
        names, raw = merge_masks(self._instances(i, width, height), self.merge_instances)
        if not names:
            return [], torch.zeros(0, s, s, dtype=torch.bool)
        masks = self.preprocess.masks(np.stack(raw), width, height)
        keep = masks.flatten(1).any(1)
        for name, before, kept in zip(names, raw, keep.tolist()):
            if not kept:
                self._note(image_id, name, "empty mask" if not before.any() else "empty mask after preprocessing")
        return [n for n, k in zip(names, keep.tolist()) if k], masks[keep]


def _ordered_columns(rows: list[dict]) -> list[str]:
    columns = ["image_id", "path", "width", "height"]
    for row in rows:
        columns.extend(c for c in row if c not in columns)
    return columns
