"""COCO-format datasets: an instances JSON and an image folder, masks from pycocotools."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json

import numpy as np

from ..transform import Preprocess
from .base import ImageDataset, box_is_empty, box_mask, make_id, normalize_concept, require_dir, require_file

__all__ = ["CocoDataset"]


class CocoDataset(ImageDataset):
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

        path = require_file(annotation_file, "COCO annotation file",
                            "Pass the instances JSON, e.g. annotations/instances_val2017.json.")
        self.image_dir = require_dir(image_dir, "COCO image folder", "Pass the folder holding the image files.")
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
        self.dataset_id = make_id("coco", hashlib.sha256(raw).hexdigest(),
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
            if box_is_empty(*ann["bbox"], image["width"], image["height"]):
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
            return box_mask(*ann["bbox"], width, height)
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
