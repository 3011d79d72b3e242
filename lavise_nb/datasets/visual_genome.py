"""Visual Genome objects as box masks, named by their synsets."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from ..transform import Preprocess
from .base import (ImageDataset, box_is_empty, box_mask, file_hash, make_id, normalize_concept, require_dir,
                   require_file)

__all__ = ["VisualGenomeDataset"]


class VisualGenomeDataset(ImageDataset):
    """Visual Genome objects as box masks.

    Each object's box ``(x, y, w, h)`` becomes a filled mask (rows ``y:y+h``,
    columns ``x:x+w``). Its concept is the head word of its first synset
    (``"traffic_light.n.01" -> "traffic light"``) when ``use_synsets`` and it
    has one, else ``normalize_concept(names[0])``. Concepts present in fewer
    than ``min_images`` images are dropped and reported; when that leaves none,
    a ValueError gives the counts.

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

    Raises
    ------
    ValueError
        No concept is in ``min_images`` images (a small set: lower ``min_images``),
        or no object has a usable box.
    """

    def __init__(self, objects_json, image_data_json, image_dir, preprocess: Preprocess, min_images: int = 100,
                 merge_instances: bool = True, use_synsets: bool = True):
        super().__init__(preprocess)
        fix = "Download it from the Visual Genome site (https://homes.cs.washington.edu/~ranjay/visualgenome/)."
        objects_path = require_file(objects_json, "Visual Genome objects.json", fix)
        meta_path = require_file(image_data_json, "Visual Genome image_data.json", fix)
        self.image_dir = require_dir(image_dir, "Visual Genome image folder",
                                     "Pass the folder of {image_id}.jpg files.")
        self.merge_instances = merge_instances
        self.min_images = int(min_images)
        self.use_synsets = use_synsets
        meta = {_vg_id(m): m for m in _read_json_list(meta_path, "image_data.json")}
        boxes, rows = self._read_objects(_read_json_list(objects_path, "objects.json"), meta)
        self.concepts = self._filter_rare(boxes)
        self._boxes = boxes
        self._set_records(rows)
        self.dataset_id = make_id("vg", file_hash(objects_path, meta_path),
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
                self._note(image_id, None, "no entry in image_data.json; image skipped",
                           file=self._image_path(image_id, note=False))
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
            elif box_is_empty(obj["x"], obj["y"], obj["w"], obj["h"], width, height):
                self._note(image_id, name, "zero-area box")
            else:
                out.append((name, obj["x"], obj["y"], obj["w"], obj["h"]))
        return out

    def _image_path(self, image_id, note: bool = True) -> Path:
        name = f"{image_id}.jpg"
        for folder in (self.image_dir, self.image_dir / "VG_100K", self.image_dir / "VG_100K_2"):
            if (folder / name).is_file():
                return folder / name
        if note:
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
        if not counts:
            raise ValueError(f"no object of the {len(boxes)} Visual Genome images has a name and a box inside its "
                             "image; check objects.json (each object needs x, y, w, h and names or synsets) and "
                             "that image_data.json lists its images")
        if len(rare) == len(counts):
            top = max(sorted(counts), key=counts.get)
            raise ValueError(f"no concept is in at least min_images={self.min_images} of these {len(boxes)} Visual "
                             f"Genome images (the most frequent, {top!r}, is in {counts[top]}), so none would be "
                             f"kept. Lower min_images, e.g. VisualGenomeDataset(..., min_images={counts[top]})")
        for k, image_boxes in enumerate(boxes):
            boxes[k] = [b for b in image_boxes if b[0] not in rare]
        return sorted(set(counts) - rare)

    def _instances(self, i: int, width: int, height: int) -> list[tuple[str, np.ndarray]]:
        return [(name, box_mask(x, y, w, h, width, height)) for name, x, y, w, h in self._boxes[i]]


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


def _synset_head(synset: str) -> str:
    """``"traffic_light.n.01" -> "traffic light"``."""
    parts = synset.rsplit(".", 2)
    return normalize_concept(parts[0] if len(parts) == 3 else synset)
