"""StampScenes: the embedded default reference dataset, composed from Tux Paint photos.

Debian's ``tuxpaint-stamps-default`` ships PNG stamps with an alpha channel;
the photographs among them (listed and named by hand in the package's
``data/stamps.csv``) are pasted onto background photos from ``tuxpaint-data``
(named in ``data/backgrounds.csv``). The alpha channel gives every pasted object an exact
mask, so the scenes form a segmentation dataset in COCO format with no manual
labelling. The images are GPL-2 and are fetched at run time with ``apt-get``;
only the two tables are part of this package.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import hashlib
import io
import json
import multiprocessing
import os
import shutil
import tempfile
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from ._utils.cache import cache_dir
from ._utils.debian import fetch_deb
from ._utils.progress import progress
from .store.locks import store_lock
from .config import check_float, check_int

__all__ = ["SCENE_WORKERS", "SceneSettings", "fetch_tuxpaint", "build_stamp_scenes", "stamp_scenes",
           "split_scene_options", "stamp_table", "background_table", "usable_rows"]

PACKAGES = ("tuxpaint-stamps-default", "tuxpaint-data")
_SHARE = Path("usr") / "share" / "tuxpaint"
_BUILD_VERSION = 1
_MIN_VISIBLE = 0.01
_RESERVED_FIELDS = {"id", "file_name", "width", "height"}


# ----------------------------------------------------------------------------- tables


def _read_table(name: str) -> pd.DataFrame:
    """A table shipped in the package's ``data/`` (readable from a wheel, a zip or a source checkout)."""
    data = (resources.files("lavise_nb") / "data" / name).read_bytes()
    return pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)


def stamp_table() -> pd.DataFrame:
    """The committed table of Tux Paint stamps (the package's ``data/stamps.csv``).

    Returns
    -------
    pandas.DataFrame
        One row per stamp PNG with columns ``path`` (relative to ``stamps/``),
        ``category`` (top-level Tux Paint folder), ``caption`` (English),
        ``kind`` (``photo`` or ``clipart``), ``concept`` (GloVe word(s) naming a
        usable photo, else empty) and ``reason`` (why the stamp is not used,
        empty when it is).
    """
    return _read_table("stamps.csv")


def background_table() -> pd.DataFrame:
    """The committed table of Tux Paint template photos (the package's ``data/backgrounds.csv``).

    Returns
    -------
    pandas.DataFrame
        One row per template JPEG with columns ``file``, ``concept`` (a GloVe
        word naming the visible scene, empty when unused) and ``reason`` (why
        it is not used, empty when it is).
    """
    return _read_table("backgrounds.csv")


def usable_rows(table: pd.DataFrame, photos_only: bool) -> pd.DataFrame:
    """The rows of a stamp or background table that name a concept and have no exclusion reason.

    Parameters
    ----------
    table : pandas.DataFrame
        :func:`stamp_table` or :func:`background_table` (or rows of one).
    photos_only : bool
        Also require ``kind == "photo"`` (stamp tables only).

    Returns
    -------
    pandas.DataFrame
        The kept rows, re-indexed from 0.
    """
    keep = (table["concept"] != "") & (table["reason"] == "")
    if photos_only:
        keep &= table["kind"] == "photo"
    return table[keep].reset_index(drop=True)


# ----------------------------------------------------------------------------- settings


def _check_pair(name: str, value, check, rule: str) -> tuple:
    try:
        low, high = value
        ok = check(low, high)
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"{name} must be (low, high) with {rule}, got {value!r}")
    return tuple(value)


def _check_weights(name: str, weights) -> dict | None:
    if weights is None:
        return None
    if not isinstance(weights, dict):
        raise ValueError(f"{name} must be a dict of sampling multipliers or None, not {weights!r}")
    for key, value in weights.items():
        check_float(f"{name}[{key!r}]", value, 0)
    return dict(weights)


@dataclass(frozen=True)
class SceneSettings:
    """How StampScenes images are composed; the values hashed into the build's cache key.

    Parameters
    ----------
    n_images : int
        Number of images (>= 1).
    seed : int
        Same settings and seed give a byte-identical ``annotations.json`` (>= 0).
    size : int
        Side of the square images in pixels (>= 1).
    objects : (int, int)
        Inclusive range of the number of stamps per image, 1 <= low <= high.
    scale : (float, float)
        Range of a stamp's longest side as a fraction of ``size``, 0 < low <= high <= 1.
    object_weights : dict, optional
        Sampling weight multipliers (>= 0) keyed by concept (``"dog"``) or stamp
        category (``"animals"``), default 1; use them to plant group differences.
    background_weights : dict, optional
        Multipliers keyed by background concept or template file name.
    """

    n_images: int = 2000
    seed: int = 0
    size: int = 224
    objects: tuple = (1, 4)
    scale: tuple = (0.25, 0.7)
    object_weights: dict | None = None
    background_weights: dict | None = None

    def __post_init__(self):
        check_int("n_images", self.n_images)
        check_int("seed", self.seed, 0)
        check_int("size", self.size)
        object.__setattr__(self, "objects", _check_pair(
            "objects", self.objects, lambda lo, hi: 1 <= check_int("objects", lo) <= check_int("objects", hi),
            "integers 1 <= low <= high"))
        object.__setattr__(self, "scale", _check_pair(
            "scale", self.scale, lambda lo, hi: 0 < check_float("scale", lo) <= check_float("scale", hi) <= 1,
            "0 < low <= high <= 1"))
        object.__setattr__(self, "object_weights", _check_weights("object_weights", self.object_weights))
        object.__setattr__(self, "background_weights", _check_weights("background_weights", self.background_weights))


def split_scene_options(options: dict, **values) -> tuple[SceneSettings, dict]:
    """Split keyword options into :class:`SceneSettings` (with ``values``) and the other build arguments.

    Parameters
    ----------
    options : dict
        Keyword arguments mixing :class:`SceneSettings` fields (``objects``,
        ``object_weights``, ...) and :func:`build_stamp_scenes` arguments
        (``image_fields``, ``stamps_dir``, ...).
    **values
        Further :class:`SceneSettings` fields, e.g. ``n_images`` and ``seed``.

    Returns
    -------
    (SceneSettings, dict)
        The settings and the remaining keyword arguments for :func:`build_stamp_scenes`.
    """
    names = {f.name for f in dataclasses.fields(SceneSettings)}
    fields = {k: v for k, v in options.items() if k in names}
    return SceneSettings(**values, **fields), {k: v for k, v in options.items() if k not in names}


# ----------------------------------------------------------------------------- fetching


def _fetch_complete(target: Path) -> bool:
    return (target / "stamps").is_dir() and (target / "templates").is_dir()


def _manual_hint() -> str:
    return ("Alternatively download by hand the upstream tuxpaint-stamps tarball (its stamps/ folder) and "
            "the tuxpaint source tarball (its templates/ folder) from https://tuxpaint.org/download/, "
            "extract them and call build_stamp_scenes(stamps_dir=..., templates_dir=...).")


def fetch_tuxpaint(cache=None) -> Path:
    """Fetch the Tux Paint stamps and templates with ``apt-get download``.

    Parameters
    ----------
    cache : str or Path, optional
        Folder to hold ``stamps/`` and ``templates/``; default
        ``cache_dir("tuxpaint")``.

    Returns
    -------
    pathlib.Path
        The folder holding ``stamps/`` and ``templates/``. Returned at once if
        both are already there.

    Raises
    ------
    RuntimeError
        When ``apt-get`` or ``dpkg-deb`` is missing or the download fails; the
        message says how to pass a manual extraction instead.

    Notes
    -----
    The packages are extracted into a temporary folder inside ``cache`` and
    moved into place, ``templates/`` last, so an interrupted fetch never
    leaves a folder that looks complete.
    """
    target = Path(cache) if cache is not None else cache_dir("tuxpaint")
    if _fetch_complete(target):
        return target
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target, prefix=".fetch-") as tmp:
        root = fetch_deb(PACKAGES, Path(tmp) / "root", needs=[str(_SHARE / "stamps"), str(_SHARE / "templates")],
                         purpose="StampScenes (GPL-2 Tux Paint stamps and templates)", fix=_manual_hint())
        share = root / _SHARE
        for name in ("stamps", "templates"):
            if (target / name).exists():
                shutil.rmtree(target / name)
            (share / name).rename(target / name)
    return target


# ----------------------------------------------------------------------------- sampling


def _weights(table: pd.DataFrame, weights: dict | None, keys: tuple[str, ...], what: str) -> np.ndarray:
    weights = dict(weights or {})
    known = set().union(*(set(table[k]) for k in keys))
    unknown = set(weights) - known
    if unknown:
        raise ValueError(f"{what} keys {sorted(unknown)} are neither {keys[0]} nor {keys[1]} values of the table")
    mult = np.ones(len(table))
    for key in keys:
        mult *= table[key].map(lambda v: float(weights.get(v, 1.0))).to_numpy()
    per_concept = table.groupby("concept")["concept"].transform("size").to_numpy()
    p = mult / per_concept
    if (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"{what} must be non-negative and leave something to sample")
    return p / p.sum()


def _trim_dark_borders(image: Image.Image, threshold: float = 16.0) -> Image.Image:
    gray = np.asarray(image.convert("L"), dtype=np.float32)
    rows = np.flatnonzero(gray.mean(1) >= threshold)
    cols = np.flatnonzero(gray.mean(0) >= threshold)
    if len(rows) == 0 or len(cols) == 0:
        return image
    return image.crop((cols[0], rows[0], cols[-1] + 1, rows[-1] + 1))


def _load_stamp(path: Path, max_side: int) -> Image.Image:
    image = Image.open(path).convert("RGBA")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.LANCZOS)
    return image


class _Sources:
    """Lazily opened stamps and backgrounds, kept in memory for the build."""

    def __init__(self, stamps_dir: Path, templates_dir: Path, size: int):
        self.stamps_dir, self.templates_dir, self.size = stamps_dir, templates_dir, size
        self._stamps: dict = {}
        self._backgrounds: dict = {}

    def stamp(self, path: str) -> Image.Image:
        if path not in self._stamps:
            self._stamps[path] = _load_stamp(self.stamps_dir / path, 2 * self.size)
        return self._stamps[path]

    def background(self, file: str) -> Image.Image:
        if file not in self._backgrounds:
            self._backgrounds[file] = _trim_dark_borders(Image.open(self.templates_dir / file).convert("RGB"))
        return self._backgrounds[file]


def _background_crop(image: Image.Image, rng: np.random.Generator, size: int) -> np.ndarray:
    width, height = image.size
    side = rng.uniform(0.5, 1.0) * min(width, height)
    x0 = rng.uniform(0, width - side)
    y0 = rng.uniform(0, height - side)
    crop = image.resize((size, size), Image.BILINEAR, box=(x0, y0, x0 + side, y0 + side), reducing_gap=2.0)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32)


def _placed_stamp(stamp: Image.Image, rng: np.random.Generator, size: int, scale: tuple) -> tuple:
    longest = max(1, round(rng.uniform(*scale) * size))
    ratio = longest / max(stamp.size)
    w, h = max(1, round(stamp.width * ratio)), max(1, round(stamp.height * ratio))
    patch = stamp.resize((w, h), Image.LANCZOS)
    if rng.random() < 0.5:
        patch = patch.transpose(Image.FLIP_LEFT_RIGHT)
    x = int(rng.integers(0, size - w + 1))
    y = int(rng.integers(0, size - h + 1))
    return np.asarray(patch, dtype=np.float32), x, y


def _paste(canvas: np.ndarray, owner: np.ndarray, patch: np.ndarray, x: int, y: int, index: int) -> None:
    h, w = patch.shape[:2]
    alpha = patch[..., 3:] / 255.0
    region = canvas[y:y + h, x:x + w]
    region[:] = alpha * patch[..., :3] + (1.0 - alpha) * region
    owner[y:y + h, x:x + w][patch[..., 3] > 127] = index


# ----------------------------------------------------------------------------- COCO output


def _rle(mask: np.ndarray) -> dict:
    from pycocotools import mask as mask_utils

    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _annotation(mask: np.ndarray, image_id: int, category_id: int, source: str) -> dict:
    ys, xs = np.nonzero(mask)
    bbox = [int(xs.min()), int(ys.min()), int(xs.max() - xs.min() + 1), int(ys.max() - ys.min() + 1)]
    return {"image_id": image_id, "category_id": category_id, "segmentation": _rle(mask),
            "area": int(mask.sum()), "bbox": bbox, "iscrowd": 0, "source": source}


def _categories(stamps: pd.DataFrame, backgrounds: pd.DataFrame) -> list[dict]:
    objects, scenes = sorted(set(stamps["concept"])), sorted(set(backgrounds["concept"]))
    clash = set(objects) & set(scenes)
    if clash:
        raise ValueError(f"concepts {sorted(clash)} name both objects and backgrounds")
    names = [(n, "object") for n in objects] + [(n, "background") for n in scenes]
    return [{"id": i, "name": n, "supercategory": s} for i, (n, s) in enumerate(names, start=1)]


def _compose(i: int, settings: SceneSettings, cfg: dict, sources: _Sources, cat_ids: dict) -> tuple:
    rng = np.random.default_rng([settings.seed, i])
    size, stamps, backgrounds = settings.size, cfg["stamps"], cfg["backgrounds"]
    bg = backgrounds.iloc[rng.choice(len(backgrounds), p=cfg["bg_p"])]
    canvas = _background_crop(sources.background(bg["file"]), rng, size)
    owner = np.full((size, size), -1, dtype=np.int32)
    n_objects = int(rng.integers(settings.objects[0], settings.objects[1] + 1))
    rows = list(stamps.iloc[rng.choice(len(stamps), size=n_objects, p=cfg["obj_p"])].itertuples())
    for k, row in enumerate(rows):
        patch, x, y = _placed_stamp(sources.stamp(row.path), rng, size, settings.scale)
        _paste(canvas, owner, patch, x, y, k)
    anns = [_annotation(owner == k, i, cat_ids[row.concept], row.path)
            for k, row in enumerate(rows) if (owner == k).sum() >= _MIN_VISIBLE * size * size]
    if (owner == -1).any():
        anns.append(_annotation(owner == -1, i, cat_ids[bg["concept"]], bg["file"]))
    image = Image.fromarray(np.clip(np.rint(canvas), 0, 255).astype(np.uint8))
    return image, anns, bg["concept"], n_objects


def _key_params(settings: SceneSettings, image_fields: dict) -> dict:
    """The hashed build parameters (unchanged since version 1 of the build, so existing caches are reused)."""
    return {"n_images": settings.n_images, "seed": settings.seed, "size": settings.size,
            "objects": list(settings.objects), "scale": list(settings.scale),
            "object_weights": settings.object_weights, "background_weights": settings.background_weights,
            "image_fields": image_fields}


def _build_key(params: dict, stamps: pd.DataFrame, backgrounds: pd.DataFrame) -> str:
    blob = json.dumps({"version": _BUILD_VERSION, "params": params,
                       "stamps": stamps.to_csv(index=False), "backgrounds": backgrounds.to_csv(index=False)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _complete_build(out_dir: Path, key: str) -> bool:
    summary = out_dir / "summary.json"
    if not (summary.is_file() and (out_dir / "annotations.json").is_file()):
        return False
    try:
        return json.loads(summary.read_text()).get("key") == key
    except (OSError, json.JSONDecodeError):
        return False


def _replace_dir(tmp: Path, out_dir: Path) -> None:
    if out_dir.exists():
        trash = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".old-{out_dir.name}-"))
        out_dir.rename(trash / "old")
        tmp.rename(out_dir)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        tmp.rename(out_dir)


def _check_sources(stamps: pd.DataFrame, backgrounds: pd.DataFrame, stamps_dir: Path, templates_dir: Path) -> None:
    missing = [p for p in stamps["path"] if not (stamps_dir / p).is_file()]
    missing += [f for f in backgrounds["file"] if not (templates_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{len(missing)} StampScenes source images are missing under {stamps_dir} / "
                                f"{templates_dir}, e.g. {missing[:3]}")


def _source_dirs(stamps_dir, templates_dir) -> tuple[Path, Path]:
    if stamps_dir is None or templates_dir is None:
        root = fetch_tuxpaint()
        stamps_dir = root / "stamps" if stamps_dir is None else stamps_dir
        templates_dir = root / "templates" if templates_dir is None else templates_dir
    return Path(stamps_dir), Path(templates_dir)


SCENE_WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
_CHUNK = 25        # images a worker composes per task
_job: dict = {}    # what a forked worker composes from (set before the fork, read in the worker)


def _compose_chunk(indices: range) -> list:
    """Compose and save images ``indices`` into ``_job["folder"]``; their (record, annotations, planted) rows."""
    settings, cfg, sources, cat_ids = _job["settings"], _job["cfg"], _job["sources"], _job["cat_ids"]
    rows = []
    for i in indices:
        image, anns, bg_concept, n_planted = _compose(i, settings, cfg, sources, cat_ids)
        name = f"{i:06d}.jpg"
        image.save(_job["folder"] / name, quality=95)
        rows.append(({"id": i, "file_name": name, "width": settings.size, "height": settings.size,
                      "background": bg_concept, **_job["image_fields"]}, anns, n_planted))
    return rows


def _composed(chunks: list, show_progress: bool):
    """Each chunk's rows in order: in :data:`SCENE_WORKERS` forked processes, or here (one worker, no fork)."""
    bar = progress(total=sum(len(c) for c in chunks), enabled=show_progress, desc="StampScenes")
    context = multiprocessing.get_context("fork") if "fork" in multiprocessing.get_all_start_methods() else None
    workers = min(SCENE_WORKERS, len(chunks))
    try:
        if workers <= 1 or context is None:
            for chunk in chunks:
                yield _compose_chunk(chunk)
                bar.update(len(chunk))
            return
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
            for chunk, rows in zip(chunks, pool.map(_compose_chunk, chunks)):
                yield rows
                bar.update(len(chunk))
    finally:
        bar.close()


def _write_scenes(tmp: Path, settings: SceneSettings, cfg: dict, sources: _Sources, categories: list,
                  image_fields: dict, show_progress: bool) -> dict:
    (tmp / "images").mkdir()
    cat_ids = {c["name"]: c["id"] for c in categories}
    _job.update(folder=tmp / "images", settings=settings, cfg=cfg, sources=sources, cat_ids=cat_ids,
                image_fields=image_fields)
    chunks = [range(start, min(start + _CHUNK, settings.n_images)) for start in range(0, settings.n_images, _CHUNK)]
    images, annotations, planted = [], [], 0
    try:
        for rows in _composed(chunks, show_progress):
            for record, anns, n_planted in rows:
                images.append(record)
                annotations.extend(anns)
                planted += n_planted
    finally:
        _job.clear()
    for ann_id, ann in enumerate(annotations, start=1):
        ann["id"] = ann_id
    coco = {"images": images, "annotations": annotations, "categories": categories}
    (tmp / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")))
    return {"planted": planted, "annotations": annotations, "categories": categories}


def _summary(key: str, cfg: dict, written: dict, n_images: int) -> dict:
    kinds = {c["id"]: c["supercategory"] for c in written["categories"]}
    objects = [a for a in written["annotations"] if kinds[a["category_id"]] == "object"]
    return {"key": key, "photo_stamps": len(cfg["stamps"]), "object_concepts": cfg["stamps"]["concept"].nunique(),
            "background_photos": len(cfg["backgrounds"]),
            "background_concepts": cfg["backgrounds"]["concept"].nunique(), "images": n_images,
            "objects": len(objects), "objects_dropped": written["planted"] - len(objects),
            "object_concepts_seen": len({a["category_id"] for a in objects})}


def build_stamp_scenes(out_dir=None, settings: SceneSettings | None = None, *, image_fields: dict | None = None,
                       stamps_dir=None, templates_dir=None, stamp_table: pd.DataFrame | None = None,
                       background_table: pd.DataFrame | None = None, show_progress: bool = True) -> Path:
    """Compose StampScenes: photo stamps pasted on background photos, in COCO format.

    Each image is a random square crop of a background photo (resized to
    ``settings.size``, randomly flipped) with 1..4 photo stamps pasted at random
    scale, position and horizontal flip. Every object gets an exact mask (alpha > 127,
    minus what later stamps cover); the visible background gets a mask named
    by its background concept. Objects with less than 1% of the image visible
    are dropped. Concepts are sampled uniformly (then a stamp of that concept),
    times the optional weights.

    Parameters
    ----------
    out_dir : str or Path, optional
        Output folder; default ``cache_dir("stampscenes", <hash of the
        settings, image fields and tables>)``. A complete build made with the
        same arguments is returned at once.
    settings : SceneSettings, optional
        Number of images, seed, size, stamps per image, scale and sampling
        weights (default ``SceneSettings()``).
    image_fields : dict, optional
        Extra JSON fields copied into every image record, e.g.
        ``{"group": "A"}``.
    stamps_dir, templates_dir : str or Path, optional
        Extracted Tux Paint ``stamps/`` and ``templates/`` folders; default
        from :func:`fetch_tuxpaint`.
    stamp_table, background_table : pandas.DataFrame, optional
        Replace the committed tables (see :func:`stamp_table`).
    show_progress : bool

    Returns
    -------
    pathlib.Path
        Folder with ``images/000000.jpg ...``, ``annotations.json`` (COCO; the
        ``file_name`` of each image is relative to ``images/``, annotations
        carry RLE masks) and ``summary.json`` (counts). Load it with
        ``CocoDataset(out / "annotations.json", out / "images", ...)``.

    Examples
    --------
    >>> a = build_stamp_scenes(settings=SceneSettings(n_images=500, object_weights={"animals": 3.0}),
    ...                        image_fields={"group": "A"})  # doctest: +SKIP
    """
    settings = SceneSettings() if settings is None else settings
    image_fields = dict(image_fields or {})
    reserved = _RESERVED_FIELDS & set(image_fields)
    if reserved:
        raise ValueError(f"image_fields may not set {sorted(reserved)}")
    stamps = _read_table("stamps.csv") if stamp_table is None else stamp_table
    backgrounds = _read_table("backgrounds.csv") if background_table is None else background_table
    stamps, backgrounds = usable_rows(stamps, photos_only=True), usable_rows(backgrounds, photos_only=False)
    key = _build_key(_key_params(settings, image_fields), stamps, backgrounds)
    out_dir = Path(out_dir) if out_dir is not None else cache_dir("stampscenes", key)
    if _complete_build(out_dir, key):
        return out_dir
    cfg = {"stamps": stamps, "backgrounds": backgrounds,
           "obj_p": _weights(stamps, settings.object_weights, ("concept", "category"), "object_weights"),
           "bg_p": _weights(backgrounds, settings.background_weights, ("concept", "file"), "background_weights")}
    categories = _categories(stamps, backgrounds)
    stamps_dir, templates_dir = _source_dirs(stamps_dir, templates_dir)
    _check_sources(stamps, backgrounds, stamps_dir, templates_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with store_lock(out_dir):  # one builder per folder; a second one waits, then finds the build done
        if _complete_build(out_dir, key):
            return out_dir
        for stale in [*out_dir.parent.glob(f".build-{out_dir.name}-*"), *out_dir.parent.glob(f".old-{out_dir.name}-*")]:
            shutil.rmtree(stale, ignore_errors=True)  # a killed builder's leftovers: the lock says none is alive
        tmp = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".build-{out_dir.name}-"))
        try:
            written = _write_scenes(tmp, settings, cfg, _Sources(stamps_dir, templates_dir, settings.size),
                                    categories, image_fields, show_progress)
            (tmp / "summary.json").write_text(json.dumps(_summary(key, cfg, written, settings.n_images), indent=1))
            _replace_dir(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def stamp_scenes(n_images: int = 2000, seed: int = 0, preprocess=None, show_progress: bool = True, **options):
    """The embedded default reference dataset, fetched and built if needed, ready to use.

    Parameters
    ----------
    n_images, seed : int
    preprocess : Preprocess, optional
        The target model's preprocessing (default: 224 px, EfficientNet-Lite's normalisation).
    **options
        :class:`SceneSettings` fields other than ``n_images``, ``seed`` and ``size``
        (``object_weights``, ``objects``, ...) and :func:`build_stamp_scenes` arguments
        (``image_fields``, ``stamps_dir``, ``templates_dir``, ...).

    Returns
    -------
    CocoDataset
    """
    from .datasets import CocoDataset
    from .probe import EFFICIENTNET_LITE

    preprocess = preprocess or EFFICIENTNET_LITE
    settings, build = split_scene_options(options, n_images=n_images, seed=seed, size=preprocess.size)
    folder = build_stamp_scenes(settings=settings, show_progress=show_progress, **build)
    return CocoDataset(folder / "annotations.json", folder / "images", preprocess)
