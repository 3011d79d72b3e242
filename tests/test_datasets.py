"""Tests for lavise_nb.datasets: exact masks after preprocessing, naming, reports."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from lavise_nb.datasets import (
    CocoDataset,
    ImageFolderDataset,
    ShapesWorld,
    VisualGenomeDataset,
    collate_samples,
    normalize_concept,
)
from lavise_nb.transform import Preprocess

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

RAW = Preprocess(size=20, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def _box(rows, cols, height, width):
    mask = np.zeros((height, width), dtype=bool)
    mask[rows[0]:rows[1] + 1, cols[0]:cols[1] + 1] = True
    return mask


def _uncompressed_rle(mask):
    flat = mask.flatten(order="F").astype(np.uint8)
    counts, value, run = [], 0, 0
    for v in flat:
        if v == value:
            run += 1
        else:
            counts.append(run)
            value, run = v, 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def _by_name(sample):
    return {name: sample["masks"][k].numpy() for k, name in enumerate(sample["concepts"])}


# ----------------------------------------------------------------------------- COCO

POLYGON = [2, 2, 12, 2, 12, 10, 2, 10]


@pytest.fixture
def coco_files(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    wide = np.zeros((20, 30, 3), dtype=np.uint8)
    wide[:, :, 1] = np.arange(30, dtype=np.uint8)[None, :] * 8  # green ramp along columns
    Image.fromarray(wide).save(images / "wide.png")
    Image.new("L", (20, 20), 100).save(images / "gray.png")
    Image.new("CMYK", (20, 20), (0, 255, 255, 0)).save(images / "cmyk.jpg", quality=95)
    rgba = np.zeros((20, 20, 4), dtype=np.uint8)
    rgba[:, 10:] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(images / "rgba.png")

    dog_rle = mask_utils.encode(np.asfortranarray(_box((12, 15), (20, 27), 20, 30).astype(np.uint8)))
    dog_rle["counts"] = dog_rle["counts"].decode()
    crowd = _uncompressed_rle(_box((0, 3), (10, 14), 20, 30))
    data = {
        "images": [
            {"id": 1, "file_name": "wide.png", "width": 30, "height": 20, "group": "a"},
            {"id": 2, "file_name": "missing.png", "width": 20, "height": 20, "group": "b"},
            {"id": 3, "file_name": "gray.png", "width": 20, "height": 20, "group": "a"},
            {"id": 4, "file_name": "cmyk.jpg", "width": 20, "height": 20, "group": "b"},
            {"id": 5, "file_name": "rgba.png", "width": 20, "height": 20, "group": "b"},
        ],
        "categories": [
            {"id": 1, "name": "Traffic_Light"},
            {"id": 2, "name": "dog"},
            {"id": 3, "name": "person"},
            {"id": 4, "name": "cat"},
            {"id": 5, "name": "Fire-Hydrant"},
        ],
        "annotations": [
            {"id": 1, "image_id": 1, "category_id": 1, "segmentation": [POLYGON], "iscrowd": 0},
            {"id": 2, "image_id": 1, "category_id": 2, "segmentation": dog_rle, "iscrowd": 0},
            {"id": 3, "image_id": 1, "category_id": 2, "bbox": [8, 3, 4, 6], "iscrowd": 0},
            {"id": 4, "image_id": 1, "category_id": 3, "segmentation": crowd, "iscrowd": 1},
            {"id": 5, "image_id": 1, "category_id": 4, "bbox": [1, 1, 0, 5], "iscrowd": 0},
            {"id": 6, "image_id": 1, "category_id": 4, "bbox": [0, 15, 3, 3], "segmentation": [], "iscrowd": 0},
            {"id": 7, "image_id": 2, "category_id": 2, "bbox": [0, 0, 5, 5], "iscrowd": 0},
            {"id": 8, "image_id": 3, "category_id": 4, "bbox": [0, 0, 5, 5], "iscrowd": 0},
        ],
    }
    ann = tmp_path / "instances.json"
    ann.write_text(json.dumps(data))
    return ann, images


def test_normalize_concept():
    assert normalize_concept("heron_greatblue") == "heron greatblue"
    assert normalize_concept("Traffic Light") == "traffic light"
    assert normalize_concept("  Fire-Hydrant__big   one ") == "fire hydrant big one"


def test_coco_masks_exact_after_crop(coco_files):
    ann, images = coco_files
    ds = CocoDataset(ann, images, RAW)
    assert len(ds) == 5
    assert ds.concepts == ["cat", "dog", "person", "traffic light"]
    sample = ds[0]
    assert sample["error"] is None and sample["index"] == 0
    assert sample["image"].shape == (3, 20, 20) and sample["image"].dtype == torch.float32
    assert sample["masks"].dtype == torch.bool and sample["masks"].shape == (3, 20, 20)
    assert sample["concepts"] == ["traffic light", "dog", "person"]
    masks = _by_name(sample)
    # the 30x20 image is centre-cropped to columns 5..24
    dog = _box((12, 15), (15, 19), 20, 20) | _box((3, 8), (3, 6), 20, 20)
    np.testing.assert_array_equal(masks["dog"], dog)
    np.testing.assert_array_equal(masks["person"], _box((0, 3), (5, 9), 20, 20))
    polygon = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([POLYGON], 20, 30))).astype(bool)
    np.testing.assert_array_equal(masks["traffic light"], polygon[:, 5:25])
    assert masks["traffic light"].any() and not masks["traffic light"][11:].any()
    # crop geometry of the image itself: green ramp starts at original column 5
    np.testing.assert_allclose(sample["image"][1, 0].numpy(), np.arange(5, 25) * 8 / 255, atol=1e-6)


def test_coco_report_and_records(coco_files):
    ann, images = coco_files
    ds = CocoDataset(ann, images, RAW)
    ds[0]
    report = ds.report()
    assert list(report.columns) == ["image_id", "file", "concept", "problem"]
    problems = set(zip(report.image_id, report.concept.fillna(""), report.problem))
    assert set(report[report.image_id == 2].file) == {str(images / "missing.png")}
    assert set(report[report.image_id == 1].file) == {str(images / "wide.png")}
    assert (1, "cat", "zero-area box") in problems
    assert (1, "person", "crowd annotation kept") in problems
    assert (2, "", "missing image") in problems
    assert (1, "cat", "empty mask after preprocessing") in problems
    assert list(ds.records.columns[:4]) == ["image_id", "path", "width", "height"]
    assert ds.records["group"].tolist() == ["a", "b", "a", "b", "b"]
    assert ds.records["image_id"].tolist() == [1, 2, 3, 4, 5]


def test_coco_bad_images_and_modes(coco_files):
    ann, images = coco_files
    ds = CocoDataset(ann, images, RAW)
    missing = ds[1]
    assert missing["error"].startswith("missing image")
    assert missing["masks"].shape == (0, 20, 20) and missing["concepts"] == []
    assert torch.equal(missing["image"], torch.zeros(3, 20, 20))
    gray = ds[2]
    np.testing.assert_allclose(gray["image"].numpy(), 100 / 255, atol=1e-6)
    np.testing.assert_array_equal(_by_name(gray)["cat"], _box((0, 4), (0, 4), 20, 20))
    red = ds[3]["image"].mean((1, 2))
    assert red[0] > 0.9 and red[1] < 0.1 and red[2] < 0.1
    rgba = ds[4]["image"]
    assert torch.allclose(rgba[:, :, :10], torch.ones(3, 20, 10))  # transparent -> white
    assert torch.allclose(rgba[:, :, 10:], torch.tensor([0.0, 0.0, 1.0]).view(3, 1, 1).expand(3, 20, 10))


def test_coco_options(coco_files):
    ann, images = coco_files
    no_crowd = CocoDataset(ann, images, RAW, include_crowd=False)
    assert "person" not in no_crowd[0]["concepts"]
    assert "crowd annotation dropped" in set(no_crowd.report().problem)
    separate = CocoDataset(ann, images, RAW, merge_instances=False)
    assert separate[0]["concepts"].count("dog") == 2
    only_dog = CocoDataset(ann, images, RAW, categories=["Dog"])
    assert only_dog.concepts == ["dog"] and only_dog[0]["concepts"] == ["dog"]
    with pytest.raises(ValueError, match="unicorn"):
        CocoDataset(ann, images, RAW, categories=["unicorn"])
    with pytest.raises(FileNotFoundError, match="annotation file"):
        CocoDataset(ann.parent / "nope.json", images, RAW)


def test_dataset_id_stable(coco_files):
    ann, images = coco_files
    a, b = CocoDataset(ann, images, RAW), CocoDataset(ann, images, RAW)
    assert a.dataset_id == b.dataset_id
    assert CocoDataset(ann, images, Preprocess(size=16)).dataset_id != a.dataset_id
    assert CocoDataset(ann, images, RAW, include_crowd=False).dataset_id != a.dataset_id


def test_collate_with_dataloader(coco_files):
    ann, images = coco_files
    ds = CocoDataset(ann, images, RAW)
    batches = list(DataLoader(ds, batch_size=2, collate_fn=collate_samples, num_workers=0))
    assert len(batches) == 3
    first = batches[0]
    assert first["images"].shape == (2, 3, 20, 20)
    assert first["index"].tolist() == [0, 1] and first["index"].dtype == torch.long
    assert [m.shape[0] for m in first["masks"]] == [3, 0]
    assert first["concepts"][1] == [] and first["errors"][0] is None
    assert first["errors"][1].startswith("missing image")


# ----------------------------------------------------------------------------- Visual Genome


@pytest.fixture
def vg_files(tmp_path):
    images = tmp_path / "vg"
    images.mkdir()
    for image_id, size in [(1, (40, 20)), (2, (20, 20))]:
        Image.new("RGB", size, (10, 20, 30)).save(images / f"{image_id}.jpg")

    def obj(oid, x, y, w, h, names, synsets=()):
        return {"object_id": oid, "x": x, "y": y, "w": w, "h": h, "names": names, "synsets": list(synsets)}

    objects = [
        {"image_id": 1, "objects": [
            obj(1, 10, 4, 10, 8, ["Dog"], ["dog.n.01"]),
            obj(2, 20, 14, 4, 6, ["puppy"], ["dog.n.01"]),
            obj(3, 0, 0, 4, 4, ["stoplight"], ["traffic_light.n.01"]),
            obj(4, 5, 5, 0, 3, ["Dog"], ["dog.n.01"]),
            obj(5, 24, 0, 6, 4, ["Fire_Hydrant"]),
        ]},
        {"image_id": 2, "objects": [obj(6, 0, 0, 4, 4, ["dog"], ["dog.n.01"]),
                                    obj(7, 10, 10, 4, 4, ["fire hydrant"])]},
        {"image_id": 3, "objects": [obj(8, 0, 0, 4, 4, ["dog"], ["dog.n.01"])]},
        {"image_id": 4, "objects": [obj(9, 0, 0, 4, 4, ["dog"], ["dog.n.01"])]},
    ]
    image_data = [
        {"image_id": 1, "width": 40, "height": 20, "url": "http://x/1.jpg"},
        {"image_id": 2, "width": 20, "height": 20, "url": "http://x/2.jpg"},
        {"image_id": 3, "width": 20, "height": 20, "url": "http://x/3.jpg"},
    ]
    (tmp_path / "objects.json").write_text(json.dumps(objects))
    (tmp_path / "image_data.json").write_text(json.dumps(image_data))
    return tmp_path / "objects.json", tmp_path / "image_data.json", images


def test_vg_box_masks_after_resize_and_crop(vg_files):
    ds = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=2)
    assert len(ds) == 3
    assert ds.records["url"].tolist()[0] == "http://x/1.jpg"
    sample = ds[0]
    masks = _by_name(sample)
    # 40x20 -> 20x10 (nearest samples source pixel 2j+1), columns 5..14 kept
    expected = np.zeros((10, 10), dtype=bool)
    expected[2:6, 0:5] = True    # box x=10 y=4 w=10 h=8
    expected[7:10, 5:7] = True   # box x=20 y=14 w=4 h=6, merged (same synset)
    np.testing.assert_array_equal(masks["dog"], expected)
    expected_hydrant = np.zeros((10, 10), dtype=bool)
    expected_hydrant[0:2, 7:10] = True  # box x=24 y=0 w=6 h=4 -> columns 12..14 -> 7..9
    np.testing.assert_array_equal(masks["fire hydrant"], expected_hydrant)
    assert sorted(sample["concepts"]) == ["dog", "fire hydrant"]


def test_vg_naming_filtering_and_report(vg_files):
    ds = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=2)
    assert ds.concepts == ["dog", "fire hydrant"]
    report = ds.report()
    rows = set(zip(report.image_id.astype(object).where(report.image_id.notna(), None),
                   report.concept.fillna(""), report.problem))
    assert (None, "traffic light", "in 1 images < min_images=2; dropped") in rows
    assert (1, "dog", "zero-area box") in rows
    assert (4, "", "no entry in image_data.json; image skipped") in rows
    assert (3, "", "missing image") in rows
    assert ds[2]["error"].startswith("missing image")

    low = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=1)
    assert low.concepts == ["dog", "fire hydrant", "traffic light"]
    names = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=1, use_synsets=False)
    assert names.concepts == ["dog", "fire hydrant", "puppy", "stoplight"]
    separate = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=1, merge_instances=False)
    assert separate[0]["concepts"].count("dog") == 2


# ----------------------------------------------------------------------------- image folder


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "photos"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.new("RGB", (10, 8), (255, 0, 0)).save(root / "a" / "x.png")
    Image.new("RGB", (6, 6), (0, 255, 0)).save(root / "b" / "y.PNG")
    Image.new("P", (5, 5), 0).save(root / "top.png")
    (root / "notes.txt").write_text("not an image")
    (root / "bad.jpg").write_bytes(b"definitely not a jpeg")
    return root


def test_image_folder_scan(folder):
    ds = ImageFolderDataset(folder, Preprocess(size=8))
    assert ds.records["image_id"].tolist() == ["a/x.png", "b/y.PNG", "bad.jpg", "top.png"]
    assert ds.records["folder"].tolist() == ["a", "b", "", ""]
    assert ds.records["width"].tolist()[:2] == [10, 6]
    sample = ds[0]
    assert sample["masks"].shape == (0, 8, 8) and sample["concepts"] == [] and sample["error"] is None
    assert ds[2]["error"].startswith("unreadable image")
    assert "unreadable image" in ds.report().problem.iloc[0]
    assert ds.concepts == []


def test_image_folder_csv(folder, tmp_path):
    csv = tmp_path / "meta.csv"
    pd.DataFrame({"file": ["b/y.PNG", "missing.png", "a/x.png"], "gender": ["f", "m", "m"]}).to_csv(csv, index=False)
    ds = ImageFolderDataset(folder, Preprocess(size=8), metadata_csv=csv, path_column="file")
    assert len(ds) == 3
    assert ds.records["gender"].tolist() == ["f", "m", "m"]
    assert ds.records["file"].tolist() == ["b/y.PNG", "missing.png", "a/x.png"]
    assert ds.report().problem.tolist() == ["missing image"]
    bad = ds[1]
    assert bad["error"].startswith("missing image") and torch.equal(bad["image"], torch.zeros(3, 8, 8))
    assert ds[0]["error"] is None
    with pytest.raises(ValueError, match="path_column"):
        ImageFolderDataset(folder, Preprocess(size=8), metadata_csv=csv)


# ----------------------------------------------------------------------------- ShapesWorld


def test_shapes_world_deterministic():
    a, b = ShapesWorld(20, seed=3), ShapesWorld(20, seed=3)
    assert a.dataset_id == b.dataset_id and len(a) == 20
    for i in (0, 7, 19):
        sa, sb = a[i], b[i]
        assert torch.equal(sa["image"], sb["image"]) and torch.equal(sa["masks"], sb["masks"])
        assert sa["concepts"] == sb["concepts"] and a.layout(i) == b.layout(i)
    assert not torch.equal(ShapesWorld(20, seed=4)[0]["image"], a[0]["image"])
    assert a[0]["image"].shape == (3, 64, 64)
    assert ShapesWorld(3, size=32)[0]["masks"].shape[1:] == (32, 32)


def test_shapes_world_needs_an_image_and_keeps_its_id():
    with pytest.raises(ValueError, match="n_images must be >= 1"):
        ShapesWorld(0)
    assert ShapesWorld(20, seed=3).dataset_id == "shapes-9598794507519c54"  # part of existing store keys


def test_shapes_world_masks_cover_planted_pixels():
    ds = ShapesWorld(60, seed=0)
    colours = {"red": (1, 0, 0), "green": (0, 1, 0), "blue": (0, 0, 1), "yellow": (1, 1, 0)}
    seen = set()
    for i in range(len(ds)):
        sample, layout = ds[i], ds.layout(i)
        masks = _by_name(sample)
        rgb = ds.preprocess.denormalize(sample["image"]).numpy()
        shapes = layout["shapes"]
        assert layout["texture"] in masks
        union = np.zeros((64, 64), dtype=bool)
        for shape in shapes:
            colour, kind = shape["colour"], shape["shape"]
            assert colour in masks and kind in masks
            pixels = rgb[:, masks[colour]]
            for channel, on in enumerate(colours[colour]):
                assert (pixels[channel] > 0.6).all() if on else (pixels[channel] < 0.3).all()
            union |= masks[colour]
            seen.add(colour)
        if len(shapes) == 1:
            np.testing.assert_array_equal(masks[shapes[0]["colour"]], masks[shapes[0]["shape"]])
            radius = shapes[0]["radius"]
            if shapes[0]["shape"] == "circle":
                assert abs(masks["circle"].sum() - np.pi * radius ** 2) < 0.1 * np.pi * radius ** 2
        np.testing.assert_array_equal(masks[layout["texture"]], ~union)
        background = rgb[:, ~union]
        assert np.abs(background[0] - background[1]).max() < 0.2  # grey
    assert seen == set(colours)
    assert set(ds.concepts) == {"red", "green", "blue", "yellow", "circle", "square", "triangle",
                                "stripes", "dots", "checkers", "plain"}


def test_coco_bad_annotations_never_raise(tmp_path):
    Image.new("RGB", (10, 10)).save(tmp_path / "img.png")
    wrong_size = _uncompressed_rle(np.ones((4, 4), dtype=bool))
    data = {
        "images": [{"id": 7, "file_name": "img.png", "width": 10, "height": 10}],
        "categories": [{"id": 1, "name": "dog"}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[1, 1, 3, 3]], "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 1, "segmentation": wrong_size, "iscrowd": 0},
        ],
    }
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "ann.json", tmp_path, Preprocess(size=10))
    sample = ds[0]
    assert sample["error"] is None and sample["concepts"] == []
    problems = " | ".join(ds.report().problem)
    assert "degenerate polygon" in problems and "segmentation size" in problems


# ----------------------------------------------------------------------------- crop modes, raw masks


@pytest.fixture
def corner_files(tmp_path):
    """A 60x20 image with a dog box in the far right corner (rows 0-5, columns 52-59), blue on grey."""
    rgb = np.full((20, 60, 3), 128, np.uint8)
    rgb[0:6, 52:60] = (0, 0, 255)
    Image.fromarray(rgb).save(tmp_path / "wide.png")
    data = {"images": [{"id": 1, "file_name": "wide.png", "width": 60, "height": 20}],
            "categories": [{"id": 1, "name": "dog"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [52, 0, 8, 6], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    return tmp_path / "ann.json", tmp_path


@pytest.mark.parametrize("mode, kept", [("center_crop", False), ("resize", True), ("letterbox", True)])
def test_far_corner_box_survives_resize_and_letterbox_only(corner_files, mode, kept):
    ds = CocoDataset(*corner_files, Preprocess(20, mode=mode, mean=(0, 0, 0), std=(1, 1, 1)))
    sample = ds[0]
    assert (sample["concepts"] == ["dog"]) is kept
    lost = (1, "dog", "empty mask after preprocessing") in set(zip(ds.report().image_id, ds.report().concept,
                                                                     ds.report().problem))
    assert lost is not kept
    valid = sample["valid"]
    assert valid.shape == (20, 20) and valid.dtype == torch.bool
    assert bool(valid.all()) is (mode != "letterbox")
    for mask in sample["masks"]:
        assert not (mask & ~valid).any()
        assert (sample["image"][2][mask] > 0.5).all()
    names, raw = ds.raw_masks(0)     # before preprocessing: the box, whatever the mode
    expected = np.zeros((20, 60), bool)
    expected[0:6, 52:60] = True
    assert names == ["dog"] and raw.shape == (1, 20, 60) and raw.dtype == bool
    np.testing.assert_array_equal(raw[0], expected)


def test_letterbox_valid_mask_in_samples_and_batches(corner_files):
    ds = CocoDataset(*corner_files, Preprocess(30, mode="letterbox"))
    sample = ds[0]
    assert sample["valid"][10:20].all() and not sample["valid"][:10].any() and not sample["valid"][20:].any()
    assert (sample["image"][:, ~sample["valid"]] == 0).all()
    batch = collate_samples([sample, sample])
    assert batch["valid"].shape == (2, 30, 30) and torch.equal(batch["valid"][1], sample["valid"])
    legacy = {k: v for k, v in sample.items() if k != "valid"}          # a dataset written before "valid"
    assert collate_samples([legacy])["valid"].all()
    assert not collate_samples([{**legacy, "error": "missing image"}])["valid"].any()


def test_raw_masks_of_the_other_datasets(vg_files, folder):
    vg = VisualGenomeDataset(*vg_files, Preprocess(size=10), min_images=2)
    names, raw = vg.raw_masks(0)
    assert names == ["dog", "fire hydrant"] and raw.shape == (2, 20, 40)
    assert raw[0, 4:12, 10:20].all() and raw[0].sum() == 10 * 8 + 4 * 6
    world = ShapesWorld(3, seed=0)
    names, raw = world.raw_masks(1)
    _, render_names, render_masks = world.render(1)
    assert names == render_names and np.array_equal(raw, render_masks)
    photos = ImageFolderDataset(folder, Preprocess(size=8))
    assert photos.raw_masks(0)[1].shape == (0, 8, 10)
    with pytest.raises(ValueError, match="cannot be read"):
        photos.raw_masks(2)
    assert ShapesWorld(2)[0]["valid"].all()


# ----------------------------------------------------------------------------- reading images


def _exif_jpeg(path, rgb, orientation):
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(rgb).save(path, quality=95, exif=exif)


def test_exif_orientation_is_applied_and_masks_stay_aligned(tmp_path):
    stored = np.full((16, 32, 3), (0, 0, 220), np.uint8)     # stored 32 wide, 16 tall, blue
    stored[0:8, 0:8] = (230, 20, 20)                           # a red block in the stored top-left corner
    _exif_jpeg(tmp_path / "phone.jpg", stored, 6)              # 6: turn 90 degrees clockwise to display
    shown = np.asarray(Image.fromarray(stored).transpose(Image.Transpose.ROTATE_270))
    assert shown.shape[:2] == (32, 16)                         # displayed 16 wide, 32 tall; red at top right
    data = {"images": [{"id": 1, "file_name": "phone.jpg", "width": 16, "height": 32}],
            "categories": [{"id": 1, "name": "apple"}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [8, 0, 8, 8], "iscrowd": 0}]}
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = CocoDataset(tmp_path / "ann.json", tmp_path, Preprocess(32, mode="letterbox", mean=(0, 0, 0), std=(1, 1, 1)))
    sample = ds[0]
    assert "differs from annotation" not in " ".join(ds.report().problem)
    red = (sample["image"][0] > 0.5) & (sample["image"][2] < 0.5)
    apple = sample["masks"][0]
    assert apple.sum() == 64 and (red == apple).float().mean() > 0.98   # 8x8 box, columns 8+8..15+8 after padding
    assert apple[0:8, 16:24].all()
    folder_ds = ImageFolderDataset(tmp_path, Preprocess(8))
    assert folder_ds.records[["width", "height"]].values.tolist() == [[16, 32]]
    assert folder_ds[0]["error"] is None and "differs" not in " ".join(folder_ds.report().problem)


def test_gif_and_other_pillow_formats_are_read_and_other_files_reported(tmp_path):
    frames = [Image.new("RGB", (12, 12), colour) for colour in [(255, 0, 0), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:], duration=50)
    Image.new("RGB", (12, 12), (0, 0, 255)).save(tmp_path / "scan.tif")
    Image.new("RGB", (12, 12), (0, 0, 255)).save(tmp_path / "photo.jpg")
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(tmp_path, Preprocess(8, mean=(0, 0, 0), std=(1, 1, 1)))
    assert ds.records["image_id"].tolist() == ["anim.gif", "photo.jpg", "scan.tif"]
    first = ds[0]["image"].mean((1, 2))
    assert first[0] > 0.9 and first[1] < 0.1                    # the first frame, red
    assert ds[2]["error"] is None
    report = ds.report()
    assert report.values.tolist() == [[None, str(tmp_path / "notes.txt"), None, "skipped: not a format Pillow reads"]]
    jpg_only = ImageFolderDataset(tmp_path, Preprocess(8), extensions=(".jpg",))
    skipped = dict(zip(jpg_only.report().file, jpg_only.report().problem))
    assert skipped[str(tmp_path / "anim.gif")] == "skipped: .gif is not in extensions"
    assert skipped[str(tmp_path / "scan.tif")] == "skipped: .tif is not in extensions"
    with pytest.raises(ValueError, match="none of its 4 files ends in .png"):
        ImageFolderDataset(tmp_path, Preprocess(8), extensions=(".png",))


def test_image_folder_default_keeps_its_dataset_id(folder):
    first_default = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
    assert ImageFolderDataset(folder, Preprocess(8)).dataset_id == \
        ImageFolderDataset(folder, Preprocess(8), extensions=first_default).dataset_id
    Image.new("RGB", (6, 6)).save(folder / "new.gif")
    assert ImageFolderDataset(folder, Preprocess(8)).dataset_id != \
        ImageFolderDataset(folder, Preprocess(8), extensions=first_default).dataset_id


def test_unreadable_image_report_names_the_file(folder):
    ds = ImageFolderDataset(folder, Preprocess(size=8))
    row = ds.report().iloc[0]
    assert row.file == str(folder / "bad.jpg") and row.problem.startswith("unreadable image")


def test_vg_smaller_than_min_images_says_why_and_how_to_fix(vg_files):
    with pytest.raises(ValueError, match=r"min_images=100 of these 3 Visual Genome images \(the most frequent, "
                                         r"'dog', is in 3\).*min_images=3\)"):
        VisualGenomeDataset(*vg_files, Preprocess(size=10))
    objects, image_data, images = vg_files
    objects.write_text(json.dumps([{"image_id": 1, "objects": []}]))
    with pytest.raises(ValueError, match="no object of the 1 Visual Genome images"):
        VisualGenomeDataset(objects, image_data, images, Preprocess(size=10), min_images=1)
