"""Reference datasets: images with named object masks, plus unlabeled images.

Every dataset here yields the same sample, a dict with

``image``
    (3, S, S) float32, the image after :class:`~lavise_nb.transform.Preprocess`.
``masks``
    (K, S, S) bool, one mask per concept present in the image, aligned with
    ``image`` (indexed row, column).
``concepts``
    list of K concept names (str), ``concepts[k]`` names ``masks[k]``.
``index``
    int, the sample's position in the dataset.
``error``
    None, or a str saying why the image could not be used. A missing or
    unreadable image gives an all-zero image, K = 0 masks and an error message;
    no dataset raises for one bad file.

Each dataset also has ``preprocess``, ``dataset_id`` (stable for the same
inputs), ``records`` (one row per image: ``image_id``, ``path``, ``width``,
``height`` and metadata columns), ``concepts`` (sorted names) and ``report()``
(a DataFrame of skipped or suspicious annotations and images).

All instances of one concept in one image are merged into one mask (their
union), as in the LaViSE paper, unless ``merge_instances=False``. Masks with no
pixels left after preprocessing are dropped and reported. Images are converted
to RGB; images with transparency (RGBA, LA, palette with a transparent colour)
are composited on white.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

from .transform import Preprocess

__all__ = [
    "CocoDataset",
    "VisualGenomeDataset",
    "ImageFolderDataset",
    "ShapesWorld",
    "collate_samples",
    "normalize_concept",
]

_REPORT_COLUMNS = ["image_id", "concept", "problem"]


# ----------------------------------------------------------------------------- helpers


def normalize_concept(name: str) -> str:
    """Canonical form of a concept name.

    Lowercase, stripped, with ``_``, ``-`` and runs of whitespace turned into a
    single space: ``"heron_greatblue" -> "heron greatblue"``,
    ``"Traffic Light" -> "traffic light"``.
    """
    return re.sub(r"[\s_\-]+", " ", str(name).lower()).strip()


def _synset_head(synset: str) -> str:
    """``"traffic_light.n.01" -> "traffic light"``."""
    parts = synset.rsplit(".", 2)
    return normalize_concept(parts[0] if len(parts) == 3 else synset)


def _file_hash(*paths: Path) -> str:
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
    return digest.hexdigest()


def _make_id(kind: str, content_hash: str, params: dict, preprocess: Preprocess) -> str:
    payload = json.dumps(
        {"content": content_hash, "params": params, "preprocess": preprocess.describe()},
        sort_keys=True,
        default=str,
    )
    return f"{kind}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"


def _require_file(path, what: str, fix: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}. {fix}")
    return path


def _require_dir(path, what: str, fix: str) -> Path:
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


def _load_rgb(path) -> tuple[Image.Image | None, str | None]:
    """Open ``path`` as RGB; ``(image, None)`` or ``(None, error message)``."""
    try:
        with Image.open(path) as image:
            image.load()
            return _to_rgb(image), None
    except FileNotFoundError:
        return None, f"missing image: {path}"
    except Exception as exc:  # PIL raises many types for broken files
        return None, f"unreadable image: {path}: {type(exc).__name__}: {exc}"


def _box_bounds(x: float, y: float, w: float, h: float, width: int, height: int) -> tuple[int, int, int, int]:
    """Box ``(x, y, w, h)`` (x = column) clipped to the image: ``(row0, row1, col0, col1)``."""
    c0, r0 = max(int(round(x)), 0), max(int(round(y)), 0)
    c1, r1 = min(int(round(x + w)), width), min(int(round(y + h)), height)
    return r0, r1, c0, c1


def _box_mask(x: float, y: float, w: float, h: float, width: int, height: int) -> np.ndarray:
    """Filled box ``(x, y, w, h)`` as a (height, width) bool mask: rows ``y:y+h``, columns ``x:x+w``."""
    mask = np.zeros((height, width), dtype=bool)
    r0, r1, c0, c1 = _box_bounds(x, y, w, h, width, height)
    if r1 > r0 and c1 > c0:
        mask[r0:r1, c0:c1] = True
    return mask


def _box_is_empty(x, y, w, h, width: int, height: int) -> bool:
    r0, r1, c0, c1 = _box_bounds(x, y, w, h, width, height)
    return r1 <= r0 or c1 <= c0


def _merge(instances: list[tuple[str, np.ndarray]], merge: bool) -> tuple[list[str], list[np.ndarray]]:
    """Union the masks of equal concept names (first-appearance order)."""
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
        tensors; ``concepts`` list of B lists of names; ``index`` (B,) int64;
        ``errors`` list of B (None or str).
    """
    return {
        "images": torch.stack([s["image"] for s in batch]),
        "masks": [s["masks"] for s in batch],
        "concepts": [list(s["concepts"]) for s in batch],
        "index": torch.tensor([s["index"] for s in batch], dtype=torch.long),
        "errors": [s["error"] for s in batch],
    }


# ----------------------------------------------------------------------------- base


class _ImageDataset(Dataset):
    """Shared sample assembly; subclasses fill ``records`` and ``_instances``."""

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
        """Recorded problems, one row each: ``image_id``, ``concept``, ``problem``.

        Covers what construction found plus what ``__getitem__`` found in this
        process (problems met inside DataLoader worker processes show up in the
        batch's ``errors`` instead).
        """
        return pd.DataFrame(list(self._problems), columns=_REPORT_COLUMNS)

    def _note(self, image_id, concept, problem: str) -> None:
        self._problems.setdefault((image_id, concept, problem), None)

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

    def _failed(self, i: int, error: str) -> dict:
        s = self.preprocess.size
        return {
            "image": torch.zeros(3, s, s, dtype=torch.float32),
            "masks": torch.zeros(0, s, s, dtype=torch.bool),
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
        return {"image": self.preprocess.image(image), "masks": masks, "concepts": names,
                "index": i, "error": None}

    def _masks(self, i: int, image_id, width: int, height: int) -> tuple[list[str], torch.Tensor]:
        s = self.preprocess.size
        names, raw = _merge(self._instances(i, width, height), self.merge_instances)
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


# ----------------------------------------------------------------------------- COCO


class CocoDataset(_ImageDataset):
    """A COCO-format dataset (instances JSON + image folder).

    Masks come from pycocotools ``COCO.annToMask`` (polygons, RLE and crowd
    RLE). Annotations without a segmentation become filled box masks; boxes
    with zero area are skipped and reported. Category names go through
    :func:`normalize_concept`. Extra fields of ``images`` entries (e.g.
    ``group``) become columns of ``records``.

    Parameters
    ----------
    annotation_file : str or Path
        COCO instances JSON, e.g. ``annotations/instances_val2017.json``.
    image_dir : str or Path
        Folder holding the images named by ``file_name``.
    preprocess : Preprocess
    merge_instances : bool
        Union all instances of one category per image into one mask.
    include_crowd : bool
        Keep ``iscrowd=1`` annotations (each one is reported as kept or dropped).
    categories : list of str or int, optional
        Keep only these categories (names, compared after normalisation, or ids).

    Attributes
    ----------
    coco : pycocotools.coco.COCO
    concepts : list of str
        Sorted names of the kept categories with at least one usable annotation.
    """

    def __init__(self, annotation_file, image_dir, preprocess: Preprocess, merge_instances: bool = True,
                 include_crowd: bool = True, categories=None):
        super().__init__(preprocess)
        from pycocotools.coco import COCO

        path = _require_file(annotation_file, "COCO annotation file",
                             "Pass the instances JSON, e.g. annotations/instances_val2017.json.")
        self.image_dir = _require_dir(image_dir, "COCO image folder", "Pass the folder holding the image files.")
        self.merge_instances = merge_instances
        self.include_crowd = include_crowd
        raw = path.read_bytes()
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"COCO annotation file {path} is not valid JSON: {exc}") from exc
        if not isinstance(data, dict) or "images" not in data:
            raise ValueError(f"COCO annotation file {path} has no 'images' list; is it a COCO instances JSON?")
        data.setdefault("annotations", [])
        data.setdefault("categories", [])
        self.coco = COCO()
        self.coco.dataset = data
        with contextlib.redirect_stdout(io.StringIO()):
            self.coco.createIndex()
        self._names = self._category_names(categories)
        self._anns = self._usable_annotations()
        self.concepts = sorted({self._names[a["category_id"]] for anns in self._anns.values() for a in anns})
        self.supercategories = {self._names[cat_id]: str(cat.get("supercategory", ""))
                                for cat_id, cat in self.coco.cats.items() if cat_id in self._names}
        self._set_records(self._rows())
        cat_key = None if categories is None else sorted(map(str, categories))
        self.dataset_id = _make_id("coco", hashlib.sha256(raw).hexdigest(),
                                   {"merge_instances": merge_instances, "include_crowd": include_crowd,
                                    "categories": cat_key}, preprocess)

    def _category_names(self, categories) -> dict[int, str]:
        names = {cat_id: normalize_concept(cat["name"]) for cat_id, cat in self.coco.cats.items()}
        if categories is None:
            return names
        wanted_names = {normalize_concept(c) for c in categories if isinstance(c, str)}
        wanted_ids = {int(c) for c in categories if not isinstance(c, str)}
        unknown = wanted_names - set(names.values())
        if unknown:
            raise ValueError(f"categories {sorted(unknown)} are not in the annotation file; "
                             f"known: {sorted(set(names.values()))}")
        return {i: n for i, n in names.items() if n in wanted_names or i in wanted_ids}

    def _usable_annotations(self) -> dict:
        usable: dict = {}
        for image_id, anns in self.coco.imgToAnns.items():
            image = self.coco.imgs.get(image_id)
            if image is None:
                self._note(image_id, None, "annotation for an image not in 'images'")
                continue
            kept = [a for a in anns if self._keep(a, image)]
            if kept:
                usable[image_id] = kept
        return usable

    def _keep(self, ann: dict, image: dict) -> bool:
        name = self._names.get(ann.get("category_id"))
        if name is None:
            if ann.get("category_id") not in self.coco.cats:
                self._note(ann["image_id"], None, f"unknown category_id {ann.get('category_id')}")
            return False
        if ann.get("iscrowd", 0):
            self._note(ann["image_id"], name, f"crowd annotation {'kept' if self.include_crowd else 'dropped'}")
            if not self.include_crowd:
                return False
        if not ann.get("segmentation"):
            if "bbox" not in ann:
                self._note(ann["image_id"], name, "annotation has neither segmentation nor bbox")
                return False
            if _box_is_empty(*ann["bbox"], image["width"], image["height"]):
                self._note(ann["image_id"], name, "zero-area box")
                return False
        return True

    def _rows(self) -> list[dict]:
        rows = []
        for image in self.coco.dataset["images"]:
            extra = {k: v for k, v in image.items() if k not in ("id", "width", "height")}
            path = self.image_dir / image["file_name"]
            if not path.is_file():
                self._note(image["id"], None, "missing image")
            rows.append({"image_id": image["id"], "path": str(path), "width": image["width"],
                         "height": image["height"], **extra})
        return rows

    def _instances(self, i: int, width: int, height: int) -> list[tuple[str, np.ndarray]]:
        out = []
        image_id = self._ids[i]
        for ann in self._anns.get(image_id, []):
            name = self._names[ann["category_id"]]
            mask = self._ann_mask(ann, width, height)
            if mask is not None:
                out.append((name, mask))
        return out

    def _ann_mask(self, ann: dict, width: int, height: int) -> np.ndarray | None:
        segmentation = ann.get("segmentation")
        if not segmentation:
            return _box_mask(*ann["bbox"], width, height)
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if len(p) >= 6]
            if len(polygons) < len(segmentation):
                self._note(ann["image_id"], self._names[ann["category_id"]], "degenerate polygon skipped")
            if not polygons:
                return None
            ann = {**ann, "segmentation": polygons}
        name = self._names[ann["category_id"]]
        try:
            mask = self.coco.annToMask(ann).astype(bool)
        except Exception as exc:
            self._note(ann["image_id"], name, f"bad segmentation: {type(exc).__name__}: {exc}")
            return None
        if mask.shape != (height, width):
            self._note(ann["image_id"], name, f"segmentation size {mask.shape} is not the image's {(height, width)}")
            return None
        return mask


# ----------------------------------------------------------------------------- Visual Genome


class VisualGenomeDataset(_ImageDataset):
    """Visual Genome objects as box masks.

    Each object's box ``(x, y, w, h)`` becomes a filled mask (rows ``y:y+h``,
    columns ``x:x+w``). Its concept is the head word of its first synset
    (``"traffic_light.n.01" -> "traffic light"``) when ``use_synsets`` and it
    has one, else ``normalize_concept(names[0])``. Concepts present in fewer
    than ``min_images`` images are dropped and reported.

    Parameters
    ----------
    objects_json : str or Path
        VG ``objects.json``: list of ``{"image_id", "objects": [{"object_id",
        "x", "y", "w", "h", "names", "synsets"}]}``.
    image_data_json : str or Path
        VG ``image_data.json``: list of ``{"image_id", "width", "height",
        "url", ...}``; fields other than id and size become ``records`` columns.
    image_dir : str or Path
        Folder of ``{image_id}.jpg`` files (``VG_100K/`` and ``VG_100K_2/``
        sub-folders are searched too).
    preprocess : Preprocess
    min_images : int
        Minimum number of images a concept must appear in (the paper used 100).
    merge_instances : bool
    use_synsets : bool
    """

    def __init__(self, objects_json, image_data_json, image_dir, preprocess: Preprocess, min_images: int = 100,
                 merge_instances: bool = True, use_synsets: bool = True):
        super().__init__(preprocess)
        fix = "Download it from the Visual Genome site (https://homes.cs.washington.edu/~ranjay/visualgenome/)."
        objects_path = _require_file(objects_json, "Visual Genome objects.json", fix)
        meta_path = _require_file(image_data_json, "Visual Genome image_data.json", fix)
        self.image_dir = _require_dir(image_dir, "Visual Genome image folder", "Pass the folder of {image_id}.jpg files.")
        self.merge_instances = merge_instances
        self.min_images = int(min_images)
        self.use_synsets = use_synsets
        meta = {_vg_id(m): m for m in _read_json_list(meta_path, "image_data.json")}
        boxes, rows = self._read_objects(_read_json_list(objects_path, "objects.json"), meta)
        self.concepts = self._filter_rare(boxes)
        self._boxes = boxes
        self._set_records(rows)
        self.dataset_id = _make_id("vg", _file_hash(objects_path, meta_path),
                                   {"min_images": self.min_images, "merge_instances": merge_instances,
                                    "use_synsets": use_synsets}, preprocess)

    def _name(self, obj: dict) -> str | None:
        synsets = obj.get("synsets") or []
        if self.use_synsets and synsets:
            return _synset_head(synsets[0])
        names = obj.get("names") or ([obj["name"]] if obj.get("name") else [])
        return normalize_concept(names[0]) if names else None

    def _read_objects(self, entries: list, meta: dict) -> tuple[list, list]:
        boxes, rows = [], []
        for entry in entries:
            image_id = _vg_id(entry)
            info = meta.get(image_id)
            if info is None:
                self._note(image_id, None, "no entry in image_data.json; image skipped")
                continue
            width, height = int(info["width"]), int(info["height"])
            boxes.append(self._image_boxes(image_id, entry.get("objects", []), width, height))
            extra = {k: v for k, v in info.items() if k not in ("id", "image_id", "width", "height")}
            rows.append({"image_id": image_id, "path": str(self._image_path(image_id)), "width": width,
                         "height": height, **extra})
        return boxes, rows

    def _image_boxes(self, image_id, objects: list, width: int, height: int) -> list:
        out = []
        for obj in objects:
            name = self._name(obj)
            if not name:
                self._note(image_id, None, f"object {obj.get('object_id')} has no name")
            elif _box_is_empty(obj["x"], obj["y"], obj["w"], obj["h"], width, height):
                self._note(image_id, name, "zero-area box")
            else:
                out.append((name, obj["x"], obj["y"], obj["w"], obj["h"]))
        return out

    def _image_path(self, image_id) -> Path:
        name = f"{image_id}.jpg"
        for folder in (self.image_dir, self.image_dir / "VG_100K", self.image_dir / "VG_100K_2"):
            if (folder / name).is_file():
                return folder / name
        self._note(image_id, None, "missing image")
        return self.image_dir / name

    def _filter_rare(self, boxes: list) -> list[str]:
        counts: dict[str, int] = {}
        for image_boxes in boxes:
            for name in {b[0] for b in image_boxes}:
                counts[name] = counts.get(name, 0) + 1
        rare = {n for n, c in counts.items() if c < self.min_images}
        for name in sorted(rare):
            self._note(None, name, f"in {counts[name]} images < min_images={self.min_images}; dropped")
        for k, image_boxes in enumerate(boxes):
            boxes[k] = [b for b in image_boxes if b[0] not in rare]
        return sorted(set(counts) - rare)

    def _instances(self, i: int, width: int, height: int) -> list[tuple[str, np.ndarray]]:
        return [(name, _box_mask(x, y, w, h, width, height)) for name, x, y, w, h in self._boxes[i]]


def _vg_id(entry: dict):
    if "image_id" in entry:
        return entry["image_id"]
    if "id" in entry:
        return entry["id"]
    raise ValueError(f"Visual Genome entry has neither 'image_id' nor 'id': {str(entry)[:200]}")


def _read_json_list(path: Path, what: str) -> list:
    with open(path, "rb") as f:
        data = json.load(f)
    if not isinstance(data, list):
        raise ValueError(f"{path} should hold a JSON list (the Visual Genome {what} format); got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------- plain images


class ImageFolderDataset(_ImageDataset):
    """Unlabeled images (K = 0 masks), e.g. for bias analysis.

    Parameters
    ----------
    root : str or Path
        Folder of images.
    preprocess : Preprocess
    metadata_csv : str or Path, optional
        With it, one sample per CSV row; ``path_column`` holds paths relative to
        ``root`` and every column becomes a ``records`` column (``path`` is the
        full path; an ``image_id`` column is used as id, else the relative
        path). Listed files that are missing are reported, not fatal. Without
        it, every image under ``root`` (recursive, sorted) with a ``folder``
        column, the sub-folder relative to ``root`` (``""`` at the top).
    path_column : str
    extensions : tuple of str
        File suffixes (case-insensitive) counted as images without a CSV.
    """

    def __init__(self, root, preprocess: Preprocess, metadata_csv=None, path_column: str = "path",
                 extensions=(".jpg", ".jpeg", ".png", ".bmp", ".webp")):
        super().__init__(preprocess)
        self.root = _require_dir(root, "image folder", "Pass the folder that holds the images.")
        self.extensions = tuple(e.lower() for e in extensions)
        if metadata_csv is None:
            rows, content = self._scan()
            csv_hash = None
        else:
            csv_path = _require_file(metadata_csv, "metadata CSV", "Pass an existing CSV or leave metadata_csv=None.")
            rows, content = self._from_csv(csv_path, path_column)
            csv_hash = _file_hash(csv_path)
        self._set_records(rows)
        self.dataset_id = _make_id("folder", hashlib.sha256(json.dumps([csv_hash, content]).encode()).hexdigest(),
                                   {"path_column": path_column, "extensions": list(self.extensions)}, preprocess)

    def _scan(self) -> tuple[list[dict], list]:
        files = sorted((p for p in self.root.rglob("*") if p.is_file() and p.suffix.lower() in self.extensions),
                       key=lambda p: p.relative_to(self.root).as_posix())
        if not files:
            raise ValueError(f"no images with extensions {self.extensions} under {self.root}; "
                             "check the folder or pass extensions=...")
        rows, content = [], []
        for path in files:
            rel = path.relative_to(self.root)
            folder = rel.parent.as_posix()
            rows.append({"image_id": rel.as_posix(), **self._header(path, rel.as_posix()),
                         "folder": "" if folder == "." else folder})
            content.append([rel.as_posix(), path.stat().st_size])
        return rows, content

    def _from_csv(self, csv_path: Path, path_column: str) -> tuple[list[dict], list]:
        table = pd.read_csv(csv_path)
        if path_column not in table.columns:
            raise ValueError(f"{csv_path} has no column {path_column!r}; columns are {list(table.columns)}. "
                             "Pass path_column=<the column with image paths relative to root>.")
        rows, content = [], []
        for record in table.to_dict("records"):
            rel = str(record[path_column])
            image_id = record.get("image_id", rel)
            header = self._header(self.root / rel, image_id)
            rows.append({**record, "image_id": image_id, **header})
            full = Path(header["path"])
            content.append([rel, full.stat().st_size if full.is_file() else None])
        return rows, content

    def _header(self, path: Path, image_id) -> dict:
        row = {"path": str(path), "width": None, "height": None}
        try:
            with Image.open(path) as image:
                row["width"], row["height"] = image.size
        except FileNotFoundError:
            self._note(image_id, None, "missing image")
        except Exception as exc:
            self._note(image_id, None, f"unreadable image: {type(exc).__name__}: {exc}")
        return row

    def _set_records(self, rows: list[dict]) -> None:
        super()._set_records(rows)
        self.records["width"] = self.records["width"].astype("Int64")
        self.records["height"] = self.records["height"].astype("Int64")


# ----------------------------------------------------------------------------- ShapesWorld


class ShapesWorld(_ImageDataset):
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
        if n_images < 0:
            raise ValueError(f"n_images must be >= 0; got {n_images}")
        self.n_images, self.seed = int(n_images), int(seed)
        self.size = int(size or preprocess.size)
        if self.size < 16:
            raise ValueError(f"size must be >= 16 pixels to draw shapes; got {self.size}")
        self.concepts = sorted([*self.COLOURS, *self.SHAPES, *self.TEXTURES])
        self.supercategories = {**{c: "colour" for c in self.COLOURS}, **{c: "shape" for c in self.SHAPES},
                                **{c: "background" for c in self.TEXTURES}}
        self.records = pd.DataFrame({"image_id": np.arange(self.n_images), "path": "", "width": self.size,
                                     "height": self.size})
        self._ids = list(range(self.n_images))
        self.dataset_id = _make_id("shapes", f"v{self._VERSION}",
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
        names, masks = _merge(instances, merge=True)
        return image, names, np.stack(masks)

    def __getitem__(self, i) -> dict:
        i = self._index(i)
        image, names, raw = self.render(i)
        masks = self.preprocess.masks(raw, self.size, self.size)
        keep = masks.flatten(1).any(1)
        for name, kept in zip(names, keep.tolist()):
            if not kept:
                self._note(i, name, "empty mask")
        return {"image": self.preprocess.image(Image.fromarray(image, "RGB")), "masks": masks[keep],
                "concepts": [n for n, k in zip(names, keep.tolist()) if k], "index": i, "error": None}
