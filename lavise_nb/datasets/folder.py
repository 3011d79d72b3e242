"""Unlabeled images from a folder, optionally listed with metadata in a CSV."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from PIL import Image

from ..transform import Preprocess
from .base import ImageDataset, displayed_size, file_hash, image_suffixes, make_id, require_dir, require_file

__all__ = ["ImageFolderDataset"]

FIRST_DEFAULT = (".jpg", ".jpeg", ".png", ".bmp", ".webp")   # the default extensions before every format was read


class ImageFolderDataset(ImageDataset):
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
        column, the sub-folder relative to ``root`` (``""`` at the top); the
        other files are reported as skipped.
    path_column : str
    extensions : tuple of str, optional
        File suffixes (case-insensitive) counted as images without a CSV;
        default: every format this Pillow opens (``.jpg``, ``.png``, ``.gif``,
        ``.tif``, ``.webp``, ...; animations give their first frame).
    """

    def __init__(self, root, preprocess: Preprocess, metadata_csv=None, path_column: str = "path",
                 extensions=None):
        super().__init__(preprocess)
        self.root = require_dir(root, "image folder", "Pass the folder that holds the images.")
        self.extensions = image_suffixes() if extensions is None else tuple(e.lower() for e in extensions)
        if metadata_csv is None:
            rows, content = self._scan()
            csv_hash = None
        else:
            csv_path = require_file(metadata_csv, "metadata CSV", "Pass an existing CSV or leave metadata_csv=None.")
            rows, content = self._from_csv(csv_path, path_column)
            csv_hash = file_hash(csv_path)
        self._set_records(rows)
        # ``content`` names every file read, so the default keeps the id it had with its first extensions
        named = FIRST_DEFAULT if extensions is None else self.extensions
        self.dataset_id = make_id("folder", hashlib.sha256(json.dumps([csv_hash, content]).encode()).hexdigest(),
                                  {"path_column": path_column, "extensions": list(named)}, preprocess)

    def _scan(self) -> tuple[list[dict], list]:
        found = sorted((p for p in self.root.rglob("*") if p.is_file()),
                       key=lambda p: p.relative_to(self.root).as_posix())
        files = [p for p in found if p.suffix.lower() in self.extensions]
        if not files:
            shown = ", ".join(self.extensions[:8]) + (", ..." if len(self.extensions) > 8 else "")
            raise ValueError(f"no images under {self.root}: none of its {len(found)} files ends in {shown}; "
                             "check the folder or pass extensions=...")
        rows, content = [], []
        for path in files:
            rel = path.relative_to(self.root)
            folder = rel.parent.as_posix()
            rows.append({"image_id": rel.as_posix(), **self._header(path, rel.as_posix()),
                         "folder": "" if folder == "." else folder})
            content.append([rel.as_posix(), path.stat().st_size])
        readable = image_suffixes()
        for path in found:
            suffix = path.suffix.lower()
            if suffix not in self.extensions:
                why = f"{suffix} is not in extensions" if suffix in readable else "not a format Pillow reads"
                self._note(None, None, f"skipped: {why}", file=path)
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
                row["width"], row["height"] = displayed_size(image)
        except FileNotFoundError:
            self._note(image_id, None, "missing image", file=path)
        except Exception as exc:
            self._note(image_id, None, f"unreadable image: {type(exc).__name__}: {exc}", file=path)
        return row

    def _set_records(self, rows: list[dict]) -> None:
        super()._set_records(rows)
        self.records["width"] = self.records["width"].astype("Int64")
        self.records["height"] = self.records["height"].astype("Int64")
