"""Planted groups: StampScenes datasets with a known bias, and checking it was recovered.

:func:`planted_groups` builds target datasets whose groups come from the same
scene generator with some concepts up-weighted in one group (:data:`PLANTED` by
default); :func:`null_groups` builds groups with no difference at all. Compare
them with :class:`~lavise_nb.bias.GroupComparison`, then :func:`planted_recovery`
checks its best-ranked filters against the planted truth and
:func:`describe_planted` says in words what was planted.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from ._utils.cache import cache_dir
from .scenes import background_table, build_stamp_scenes, split_scene_options, stamp_table, usable_rows

__all__ = ["PLANTED", "describe_planted", "planted_groups", "null_groups", "planted_recovery"]

#: The default planted difference of :func:`planted_groups` (StampScenes weights).
PLANTED = {
    "A": {"object_weights": {"animals": 3.0}, "background_weights": {"forest": 8.0}},
    "B": {"object_weights": {"vehicles": 10.0}, "background_weights": {"ocean": 4.0, "water": 4.0}},
}


def describe_planted(planted: dict, n_per_group: int) -> str:
    """The planted difference in words, e.g. "group A: animals x3, forest backgrounds x8; ..." (``PLANTED`` form)."""
    parts = []
    for group, weights in planted.items():
        terms = [f"{k} x{v:g}" for k, v in (weights.get("object_weights") or {}).items()]
        terms += [f"{k} backgrounds x{v:g}" for k, v in (weights.get("background_weights") or {}).items()]
        parts.append(f"group {group}: {', '.join(terms) or 'no reweighting'}")
    return "; ".join(parts) + f" ({n_per_group} images each)"


def _image_contents(folder: Path) -> pd.DataFrame:
    coco = json.loads((folder / "annotations.json").read_text())
    names = {c["id"]: (c["name"], c["supercategory"]) for c in coco["categories"]}
    objects: dict[int, list] = {}
    for ann in coco["annotations"]:
        name, kind = names[ann["category_id"]]
        if kind == "object":
            objects.setdefault(ann["image_id"], []).append(name)
    return pd.DataFrame([{"file_name": im["file_name"], "background": im.get("background", ""),
                          "objects": ";".join(sorted(set(objects.get(im["id"], []))))}
                         for im in coco["images"]])


def _planted_concepts(weights: dict) -> list[str]:
    stamps = usable_rows(stamp_table(), photos_only=True)
    backgrounds = usable_rows(background_table(), photos_only=False)
    up = {k for k, v in (weights.get("object_weights") or {}).items() if v > 1}
    bg_up = {k for k, v in (weights.get("background_weights") or {}).items() if v > 1}
    objects = stamps[stamps["concept"].isin(up) | stamps["category"].isin(up)]["concept"]
    scenes = backgrounds[backgrounds["concept"].isin(bg_up) | backgrounds["file"].isin(bg_up)]["concept"]
    return sorted(set(objects) | set(scenes))


def _group_folder(out_dir) -> Path:
    return Path(out_dir) if out_dir is not None else cache_dir("bias")


def planted_groups(n_per_group: int = 300, seed: int = 0, out_dir=None, planted: dict | None = None,
                   show_progress: bool = True, **build_options) -> tuple[Path, Path, dict]:
    """Two StampScenes groups from the same generator with a known, planted difference.

    By default (:data:`PLANTED`) group A has animals weighted x3 and forest
    backgrounds x8, group B vehicles x10 and sea (ocean, water) backgrounds x4.

    Parameters
    ----------
    n_per_group : int
    seed : int
        Group A is built with ``seed``, group B with ``seed + 1``.
    out_dir : path, optional
        Default: ``cache_dir("bias", "planted-<n>-<seed>")``.
    planted : dict, optional
        ``{group: {"object_weights": ..., "background_weights": ...}}`` (any
        number of groups, see :class:`~lavise_nb.scenes.SceneSettings`).
    **build_options
        :class:`~lavise_nb.scenes.SceneSettings` fields (``size``, ``objects``, ``scale``) and
        :func:`~lavise_nb.scenes.build_stamp_scenes` arguments (``stamps_dir``, ``templates_dir``...).

    Returns
    -------
    (root, csv_path, truth)
        ``root`` holds ``A/images/...`` etc; ``csv_path`` a metadata CSV with
        columns ``path`` (relative to ``root``), ``group``, ``background``,
        ``objects`` (";"-joined object concepts of the image); ``truth`` maps
        each group to its weights and ``concepts`` (the up-weighted concept names).
        Load with ``ImageFolderDataset(root, preprocess, metadata_csv=csv_path)``.
    """
    planted = PLANTED if planted is None else planted
    root = _group_folder(out_dir) if out_dir is not None else _group_folder(None) / f"planted-{n_per_group}-{seed}"
    return _build_groups(root, n_per_group, seed, planted, show_progress, build_options)


def _build_groups(root: Path, n_per_group: int, seed: int, planted: dict, show_progress: bool,
                  build_options: dict) -> tuple[Path, Path, dict]:
    if n_per_group < 1:
        raise ValueError(f"n_per_group must be >= 1; got {n_per_group}")
    root.mkdir(parents=True, exist_ok=True)
    tables, truth = [], {}
    for i, (group, weights) in enumerate(planted.items()):
        settings, sources = split_scene_options(build_options, n_images=n_per_group, seed=seed + i,
                                                object_weights=weights.get("object_weights"),
                                                background_weights=weights.get("background_weights"))
        folder = build_stamp_scenes(root / str(group), settings, image_fields={"group": str(group)},
                                    show_progress=show_progress, **sources)
        contents = _image_contents(folder)
        contents.insert(0, "path", [f"{group}/images/{name}" for name in contents.pop("file_name")])
        contents.insert(1, "group", str(group))
        tables.append(contents)
        truth[str(group)] = {**weights, "concepts": _planted_concepts(weights)}
    csv_path = root / "metadata.csv"
    pd.concat(tables, ignore_index=True).to_csv(csv_path, index=False)
    return root, csv_path, truth


def null_groups(n_per_group: int = 300, seed: int = 0, out_dir=None, show_progress: bool = True,
                **build_options) -> tuple[Path, Path, dict]:
    """Two groups from the same distribution: one StampScenes build split at random.

    Same return values as :func:`planted_groups`; ``truth`` is
    ``{"A": {"concepts": []}, "B": {"concepts": []}}``: any "significant"
    filter is a false discovery.
    """
    root = _group_folder(out_dir) if out_dir is not None else _group_folder(None) / f"null-{n_per_group}-{seed}"
    root, csv_path, _ = _build_groups(root, 2 * n_per_group, seed, {"all": {}}, show_progress, build_options)
    table = pd.read_csv(csv_path, keep_default_na=False)
    labels = np.array(["A"] * n_per_group + ["B"] * n_per_group)
    table["group"] = np.random.default_rng(seed).permutation(labels)
    table.to_csv(csv_path, index=False)
    return root, csv_path, {"A": {"concepts": []}, "B": {"concepts": []}}


def planted_recovery(comparison, truth: dict, space=None, top: int = 10,
                     min_similarity: float = 0.6, pool=None) -> pd.DataFrame:
    """Check the best-ranked significant filters against the planted truth.

    A filter is a *hit* when it is over-represented in a group and one of its
    ``top_words`` is a planted concept of that group, or (given a word
    ``space``) has a planted concept of that group as its nearest planted
    concept of any group with cosine similarity >= ``min_similarity``
    (reported as ``~concept``).

    ``pool``, the candidate words the names were drawn from (e.g. the reference
    store's concepts for Network Dissection labels), adds a ``chance`` column:
    the probability that as many words drawn at random from the pool contain
    an exact planted concept of the group. Compare ``hit`` rates with it: with
    many planted concepts (e.g. all animals) a random name hits often.

    Parameters
    ----------
    comparison : GroupComparison
        A comparison of :func:`planted_groups` (or :func:`null_groups`) data.
    truth : dict
        Their ``truth``: ``{group: {"concepts": [...], ...}}``.
    space : WordSpace, optional
        For near matches (``~concept``).
    top : int
        Best-ranked significant filters checked.
    min_similarity : float
    pool : iterable of str, optional

    Returns
    -------
    pandas.DataFrame
        One row per filter: ``filter, rank, over_in, difference, q_value, top_words, hit, matched``
        (and ``chance`` given ``pool``).
    """
    from math import comb
    pool = None if pool is None else sorted(set(pool))
    per_filter = comparison.filters_table()
    per_filter = per_filter[per_filter["significant"]].head(top)
    rows = []
    for row in per_filter.itertuples():
        words = [w.strip() for w in str(row.top_words).split(",") if w.strip()]
        own = set(truth.get(str(row.over_in), {}).get("concepts", []))
        others = set().union(*[set(v.get("concepts", [])) for g, v in truth.items() if g != str(row.over_in)])
        matched = next((w for w in words if w in own), "")
        if not matched and space is not None and own:
            matched = next((m for m in (_nearest_group_word(space, w, own, others, min_similarity) for w in words)
                            if m), "")
        record = dict(filter=row.filter, rank=row.rank, over_in=row.over_in, difference=row.difference,
                      q_value=row.q_value, top_words=row.top_words, hit=bool(matched), matched=matched)
        if pool is not None:
            n, m, k = len(pool), len(own & set(pool)), min(len(words), len(pool))
            record["chance"] = 1.0 - comb(n - m, k) / comb(n, k) if n else np.nan
        rows.append(record)
    columns = ["filter", "rank", "over_in", "difference", "q_value", "top_words", "hit", "matched"]
    return pd.DataFrame(rows, columns=columns + (["chance"] if pool is not None else []))


def _nearest_group_word(space, word: str, own: set, others: set, min_similarity: float) -> str:
    target = space.embed([word], missing="skip")
    emb = space.embed(sorted(own | others), missing="skip")
    if len(target) == 0 or len(emb) == 0:
        return ""
    sims = np.asarray(emb.vectors, dtype=np.float32) @ np.asarray(target.vectors[0], dtype=np.float32)
    best = int(np.argmax(sims))
    name = emb.names[best]
    return f"~{name}" if name in own and sims[best] >= min_similarity else ""
