import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from lavise_nb.coherence import RandomDirections, direction_maxima, draw_directions
from lavise_nb.datasets import ImageFolderDataset, ShapesWorld
from lavise_nb.probe import EFFICIENTNET_LITE, LayerProbe, wrap_model
from lavise_nb.store import ActivationStore, BuildInterrupted, BuildSettings
from lavise_nb.store.masks import load_valid_cells
from lavise_nb.transform import Preprocess
from tests.conftest import RED_FILTER, planted_net


@pytest.fixture(scope="module")
def tiny_store(tmp_path_factory, tiny_model, shapes):
    return ActivationStore.build(tiny_model, "features.1", shapes, tmp_path_factory.mktemp("stores"),
                                 BuildSettings(batch_size=32, num_workers=0), show_progress=False)


def _has_red(shapes, i):
    return any(s["colour"] == "red" for s in shapes.layout(i)["shapes"])


def test_planted_red_filter_top_images_are_red(tiny_store, shapes):
    top = tiny_store.top_indices(p=15, filters=[RED_FILTER])[0]
    assert all(_has_red(shapes, int(i)) for i in top)
    n_red = sum(_has_red(shapes, i) for i in range(len(shapes)))
    reds = np.array([_has_red(shapes, i) for i in range(len(shapes))])
    maxima = np.asarray(tiny_store.maxima)[:, RED_FILTER]
    assert maxima[reds].min() > maxima[~reds].max()
    assert n_red > 15


def test_threshold_is_upper_tail_quantile(tiny_store):
    acts = np.asarray(tiny_store.activations, dtype=np.float32)
    n, c, h, w = acts.shape
    for f in range(c):
        values = acts[:, f].reshape(-1)
        expected = np.quantile(values, 0.995)
        assert tiny_store.thresholds[f] == pytest.approx(expected, rel=1e-5, abs=1e-6)
        assert (values > tiny_store.thresholds[f]).mean() <= 0.005 + 1e-9
    assert tiny_store.thresholds[RED_FILTER] > np.median(acts[:, RED_FILTER])


def test_activations_match_a_direct_forward_pass(tiny_store, tiny_model, shapes):
    batch = torch.stack([shapes[i]["image"] for i in range(4)])
    with LayerProbe(tiny_model, "features.1") as probe:
        direct = probe(batch).numpy()
    stored = np.asarray(tiny_store.activations[:4], dtype=np.float32)
    np.testing.assert_allclose(stored, direct, atol=2e-3, rtol=2e-3)
    np.testing.assert_allclose(np.asarray(tiny_store.maxima[:4]), direct.reshape(4, direct.shape[1], -1).max(2),
                               atol=1e-5)


def test_object_masks_round_trip(tiny_store, shapes):
    sample = shapes[3]
    rows = tiny_store.objects[tiny_store.objects["image"] == 3]
    assert list(rows["concept"]) == list(sample["concepts"])
    masks = tiny_store.object_masks(rows["object"].to_numpy())
    assert torch.equal(masks, sample["masks"])
    small = tiny_store.object_masks_small(rows["object"].to_numpy())
    expected = torch.nn.functional.adaptive_avg_pool2d(sample["masks"].float()[None], small.shape[1:])[0]
    assert torch.allclose(small, expected)


def test_manifest_describes_the_store(tiny_store, tiny_model):
    manifest = json.loads((tiny_store.path / "manifest.json").read_text())
    assert manifest["shape"] == list(tiny_store.shape)
    assert manifest["key"]["model"] == tiny_model.fingerprint
    assert manifest["key"]["layer"] == "features.1"
    assert manifest["package_version"]
    assert np.load(tiny_store.path / "activations.npy", mmap_mode="r").dtype == np.float16


def test_same_key_reuses_without_running_the_model(tiny_store, tiny_model, shapes, monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the model ran")
    monkeypatch.setattr(tiny_model.module, "forward", boom)
    again = ActivationStore.build(tiny_model, "features.1", shapes, tiny_store.path.parent,
                                  BuildSettings(num_workers=0), show_progress=False)
    assert again.path == tiny_store.path


def test_changed_key_builds_a_new_store(tiny_store, tiny_model, shapes):
    other_data = ShapesWorld(40, seed=1)
    other_model = wrap_model(planted_net(seed=3), shapes.preprocess, "planted")
    root = tiny_store.path.parent
    settings = BuildSettings(num_workers=0)
    a = ActivationStore.build(tiny_model, "features.1", other_data, root, settings, show_progress=False)
    b = ActivationStore.build(other_model, "features.1", ShapesWorld(40, seed=0), root, settings,
                              show_progress=False)
    c = ActivationStore.build(tiny_model, "features.4", ShapesWorld(40, seed=0), root, settings,
                              show_progress=False)
    assert len({a.path, b.path, c.path, tiny_store.path}) == 4
    assert a.shape[0] == 40 and c.shape[1] == 12


def test_interrupted_build_resumes_and_equals_a_full_build(tmp_path, tiny_model):
    data = ShapesWorld(50, seed=4)
    settings = BuildSettings(batch_size=8, num_workers=0)
    with pytest.raises(BuildInterrupted) as stopped:
        ActivationStore.build(tiny_model, "features.4", data, tmp_path / "a", settings, show_progress=False,
                              max_batches=3)
    folder = stopped.value.path
    assert folder.parent == tmp_path / "a" and (stopped.value.done, stopped.value.total) == (24, 50)
    assert not (folder / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="not a complete"):
        ActivationStore.open(folder)
    resumed = ActivationStore.build(tiny_model, "features.4", data, tmp_path / "a", settings, show_progress=False)
    full = ActivationStore.build(tiny_model, "features.4", data, tmp_path / "b", settings, show_progress=False)
    np.testing.assert_array_equal(np.asarray(resumed.activations), np.asarray(full.activations))
    np.testing.assert_array_equal(resumed.thresholds, full.thresholds)
    np.testing.assert_array_equal(np.asarray(resumed.logits), np.asarray(full.logits))
    np.testing.assert_array_equal(np.asarray(resumed.null_maxima), np.asarray(full.null_maxima))
    assert resumed.objects.equals(full.objects)


def test_a_build_begun_before_the_null_maxima_resumes_with_them(tmp_path, tiny_model):
    data = ShapesWorld(40, seed=5)
    settings = BuildSettings(batch_size=8, num_workers=0)
    with pytest.raises(BuildInterrupted) as stopped:
        ActivationStore.build(tiny_model, "features.4", data, tmp_path / "a", settings, show_progress=False,
                              max_batches=2)
    for name in ("null_maxima.npy", "null_directions.npy"):      # as an older version left it
        (stopped.value.path / name).unlink()
    resumed = ActivationStore.build(tiny_model, "features.4", data, tmp_path / "a", settings, show_progress=False)
    full = ActivationStore.build(tiny_model, "features.4", data, tmp_path / "b", settings, show_progress=False)
    np.testing.assert_array_equal(resumed.null_directions, full.null_directions)
    np.testing.assert_allclose(np.asarray(resumed.null_maxima), np.asarray(full.null_maxima), rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(resumed.activations), np.asarray(full.activations))


def test_the_build_keeps_the_nulls_maxima_from_the_same_pass(tiny_store, tmp_path, monkeypatch):
    directions = draw_directions(tiny_store.shape[1])
    assert np.array_equal(tiny_store.null_directions, directions.numpy())
    cells = torch.from_numpy(tiny_store.valid_cells)
    direct = direction_maxima(tiny_store.features(np.arange(tiny_store.shape[0])), directions, cells).numpy()
    np.testing.assert_allclose(np.asarray(tiny_store.null_maxima), direct, rtol=1e-5, atol=1e-6)
    old = tmp_path / tiny_store.path.name            # a store from before them: computed from the activations
    shutil.copytree(tiny_store.path, old)
    manifest = json.loads((old / "manifest.json").read_text())
    for name in ("null_maxima.npy", "null_directions.npy"):
        (old / name).unlink()
        del manifest["files"][name]
    (old / "manifest.json").write_text(json.dumps(manifest))
    before = ActivationStore.open(old)
    assert before.verify() and before.null_maxima is None
    np.testing.assert_allclose(RandomDirections(before).maxima(), direct, rtol=1e-5, atol=1e-6)
    monkeypatch.setattr(tiny_store, "features", lambda rows: pytest.fail("read the activations"), raising=False)
    assert np.array_equal(RandomDirections(tiny_store).maxima(), np.asarray(tiny_store.null_maxima))


def test_bad_image_is_recorded_not_fatal(tmp_path, tiny_model):
    from PIL import Image
    from lavise_nb.datasets import ImageFolderDataset
    for i in range(5):
        Image.new("RGB", (80, 60), (255 * (i % 2), 0, 0)).save(tmp_path / f"img{i}.png")
    (tmp_path / "img2.png").write_bytes(b"not a png")
    data = ImageFolderDataset(tmp_path, tiny_model.preprocess)
    store = ActivationStore.build(tiny_model, "features.1", data, tmp_path / "stores",
                                  BuildSettings(batch_size=2, num_workers=0), show_progress=False)
    assert store.index["valid"].tolist() == [True, True, False, True, True]
    assert store.index.loc[2, "error"]
    assert np.isneginf(np.asarray(store.maxima)[2]).all()
    assert 2 not in store.top_indices(p=4)[RED_FILTER]
    logits = np.asarray(store.logits)
    assert np.isnan(logits[2]).all() and np.isfinite(np.delete(logits, 2, axis=0)).all()
    from lavise_nb.labels import model_labels
    labels = model_labels(tiny_model, data, top=2, min_probability=0.0, class_names=list("abcd"), store=store)
    assert sorted(labels["image"].unique()) == [0, 1, 3, 4]      # the unreadable image has no label


def test_activation_map_upsamples_to_image_size(tiny_store):
    amap = tiny_store.activation_map(0, RED_FILTER)
    assert amap.shape == (64, 64)
    assert amap.max() <= float(np.asarray(tiny_store.maxima)[0, RED_FILTER]) + 1e-3


# ----------------------------------------------------------------------------- letterbox padding


LETTERBOX = Preprocess(32, (0.5,) * 3, (0.25,) * 3, mode="letterbox")


def _padding_net():
    """1x1 conv then 4x4 average pooling (32 px -> 8x8 maps). Padding (0 after normalisation) gives filter 0
    its largest value, 1; the bright real pixels give it less. Filter 1 is the pixels' sum (0 on padding)."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.AvgPool2d(4))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[-1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]).view(2, 3, 1, 1))
        net[0].bias.copy_(torch.tensor([1.0, 0.0]))
    return wrap_model(net, Preprocess(32, (0.5,) * 3, (0.25,) * 3), "padding-net")


@pytest.fixture(scope="module")
def letterboxed(tmp_path_factory):
    folder = tmp_path_factory.mktemp("letterboxed")
    rng = np.random.default_rng(0)
    for i, (w, h) in enumerate([(64, 20)] * 8 + [(20, 64)] * 3 + [(40, 40)]):
        Image.fromarray(rng.integers(160, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"img{i:02d}.png")
    return ImageFolderDataset(folder, LETTERBOX)


def _expected_cells(dataset):
    valid = torch.stack([dataset[i]["valid"] for i in range(len(dataset))]).float()
    return (F.adaptive_avg_pool2d(valid[:, None], (8, 8))[:, 0] > 0.5).numpy()


@pytest.mark.parametrize("dtype", ["float16", "float32"])
def test_thresholds_leave_letterbox_padding_out(tmp_path, letterboxed, dtype):
    model = _padding_net()
    settings = BuildSettings(batch_size=5, num_workers=0, dtype=dtype)
    store = ActivationStore.build(model, "1", letterboxed, tmp_path, settings, show_progress=False)
    cells = _expected_cells(letterboxed)
    assert cells[0].tolist() == [[r in (3, 4)] * 8 for r in range(8)]      # rows 11-20 of 32 are real
    assert cells[-1].all() and 0.2 < cells.mean() < 0.5
    acts = np.asarray(store.activations, dtype=np.float32)
    for f in range(2):
        expected = np.quantile(acts[:, f][cells], 0.995)
        assert store.thresholds[f] == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert store.thresholds[0] < 0.5 < np.quantile(acts[:, 0], 0.995)        # padding would have set it to 1
    saved = np.load(store.path / "valid_cells.npy")
    assert saved.dtype == bool and np.array_equal(saved, cells)
    assert store.manifest["files"]["valid_cells.npy"]["shape"] == [12, 8, 8]
    assert load_valid_cells(store.path, store.valid, (8, 8)).shape == (12, 8, 8)
    assert len(store.objects) == 0 and store.packed_masks_small.shape == (0, 8, 8)
    with pytest.raises(BuildInterrupted):
        ActivationStore.build(model, "1", letterboxed, tmp_path / "resumed", settings, show_progress=False,
                              max_batches=1)
    resumed = ActivationStore.build(model, "1", letterboxed, tmp_path / "resumed", settings, show_progress=False)
    np.testing.assert_array_equal(resumed.thresholds, store.thresholds)


def test_a_store_from_before_valid_cells_still_opens(tiny_store, tmp_path):
    old = tmp_path / tiny_store.path.name
    shutil.copytree(tiny_store.path, old)
    (old / "valid_cells.npy").unlink()
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["files"]["valid_cells.npy"]
    (old / "manifest.json").write_text(json.dumps(manifest))
    store = ActivationStore.open(old)
    assert store.verify() and store.shape == tiny_store.shape
    cells = load_valid_cells(old, store.valid, store.shape[2:])
    assert cells.shape == (store.shape[0], *store.shape[2:]) and cells.all()
    del manifest["files"]                       # a store from before manifests listed their files
    (old / "manifest.json").write_text(json.dumps(manifest))
    ActivationStore.open(old)


def test_centre_cropped_store_counts_every_cell(tiny_store):
    assert np.load(tiny_store.path / "valid_cells.npy").all()


def test_build_refuses_a_dataset_preprocessed_for_another_model(tmp_path, shapes):
    lite = wrap_model(planted_net(), EFFICIENTNET_LITE, "efficientnet-lite0")
    with pytest.raises(ValueError, match=r"size=64.*efficientnet-lite0 expects \(size=224.*preprocess=model\."):
        ActivationStore.build(lite, "features.1", ShapesWorld(4, seed=0), tmp_path, show_progress=False)
    assert list(tmp_path.iterdir()) == []
    letterboxed = ShapesWorld(4, seed=0, preprocess=dataclasses.replace(shapes.preprocess, mode="letterbox"))
    model = wrap_model(planted_net(), shapes.preprocess, "planted")
    store = ActivationStore.build(model, "features.1", letterboxed, tmp_path, BuildSettings(num_workers=0),
                                  show_progress=False)
    assert store.manifest["key"]["preprocess"]["mode"] == "letterbox"


def test_the_build_keeps_the_models_logits_from_the_same_pass(tiny_store, tiny_model, shapes, tmp_path):
    from lavise_nb.labels import model_labels
    images = torch.stack([shapes[i]["image"] for i in range(8)])
    with torch.no_grad():
        direct = tiny_model.module(images)
    assert tiny_store.manifest["files"]["logits.npy"]["shape"] == [len(shapes), 4]
    np.testing.assert_allclose(np.asarray(tiny_store.logits[:8]), direct.numpy(), atol=1e-5)
    names = ["w", "x", "y", "z"]
    stored = model_labels(tiny_model, shapes, top=2, min_probability=0.1, class_names=names, store=tiny_store)
    passed = model_labels(tiny_model, shapes, top=2, min_probability=0.1, class_names=names, show_progress=False)
    assert stored[["image", "label"]].equals(passed[["image", "label"]]) and len(stored) > len(shapes)
    np.testing.assert_allclose(stored["probability"], passed["probability"], atol=1e-6)
    with pytest.raises(ValueError, match="3 class names"):
        model_labels(tiny_model, shapes, class_names=names[:3], store=tiny_store)
    other = ShapesWorld(40, seed=9)
    with pytest.raises(ValueError, match="pass the store built from this model and dataset"):
        model_labels(tiny_model, other, class_names=names, store=tiny_store)
    bare = ActivationStore.build(tiny_model, "features.1", shapes, tmp_path, BuildSettings(
        batch_size=32, num_workers=0, logits=False), show_progress=False)
    assert bare.logits is None and not (bare.path / "logits.npy").exists()
    again = model_labels(tiny_model, shapes, top=2, min_probability=0.1, class_names=names, store=bare,
                         show_progress=False)                           # no logits: a pass over the images
    assert again.equals(passed)
    with pytest.raises(ValueError, match="logits must be True or False"):
        BuildSettings(logits=1)
