"""Sharded stores: building in shards and merging equals one build; the concatenating view."""
import numpy as np
import pytest
import torch

from lavise_nb.datasets import ShapesWorld
from lavise_nb.explain import FilterExplainer
from lavise_nb.mapper import ExplainerTrainer, mask_table, pooled_masks
from lavise_nb.store import ActivationStore, BuildSettings, ConcatRows
from lavise_nb.store.thresholds import TailHistogram, histogram_quantiles
from tests.helpers import shapes_space
from lavise_nb.config import ExplainSettings, TrainingConfig


@pytest.fixture(scope="module")
def data():
    return ShapesWorld(70, seed=5)


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_model, data):
    # one image per forward pass, here and in the shards: a convolution's float rounding can depend on the
    # batch size and thread count, and the shards' batches would otherwise hold other images
    root = tmp_path_factory.mktemp("single")
    return ActivationStore.build(tiny_model, "features.1", data, root, BuildSettings(batch_size=1, num_workers=0),
                                 show_progress=False)


@pytest.fixture(scope="module", params=[2, 3])
def merged(request, tmp_path_factory, tiny_model, data):
    root = tmp_path_factory.mktemp("shards")
    count = request.param
    settings = BuildSettings(batch_size=1, num_workers=0)
    shards = [ActivationStore.build(tiny_model, "features.1", data, root, settings, shard=(i, count),
                                    show_progress=False) for i in range(count)]
    return ActivationStore.merge([s.path for s in reversed(shards)], root / "merged")


def test_shards_hold_contiguous_ranges(tmp_path, tiny_model, data):
    settings = BuildSettings(batch_size=16, num_workers=0)
    a = ActivationStore.build(tiny_model, "features.1", data, tmp_path, settings, shard=(0, 2), show_progress=False)
    b = ActivationStore.build(tiny_model, "features.1", data, tmp_path, settings, shard=(1, 2), show_progress=False)
    assert a.path != b.path and a.manifest["key"] == b.manifest["key"]
    assert (a.shape[0], b.shape[0]) == (35, 35)
    assert a.manifest["shard"]["start"] == 0 and b.manifest["shard"]["start"] == 35
    assert list(b.index["image_id"]) == list(data.records["image_id"][35:])
    again = ActivationStore.build(tiny_model, "features.1", data, tmp_path, BuildSettings(num_workers=0),
                                  shard=(1, 2), show_progress=False)
    assert again.path == b.path
    with pytest.raises(ValueError, match="contiguous"):
        ActivationStore.merge([a.path], tmp_path / "broken")


def test_merged_store_equals_a_single_build(single, merged):
    assert merged.shape == single.shape
    assert isinstance(merged.activations, ConcatRows)
    np.testing.assert_array_equal(np.asarray(merged.activations), np.asarray(single.activations))
    np.testing.assert_array_equal(np.asarray(merged.maxima), np.asarray(single.maxima))
    assert single.logits is not None and single.logits.shape == (single.shape[0], 4)
    np.testing.assert_array_equal(np.asarray(merged.logits), np.asarray(single.logits))
    np.testing.assert_array_equal(merged.thresholds, single.thresholds)
    np.testing.assert_array_equal(merged.null_directions, single.null_directions)
    np.testing.assert_allclose(np.asarray(merged.null_maxima), np.asarray(single.null_maxima), rtol=1e-6)
    assert merged.objects.equals(single.objects)
    assert merged.index.equals(single.index)
    np.testing.assert_array_equal(merged.top_indices(p=10), single.top_indices(p=10))
    np.testing.assert_array_equal(np.asarray(merged.packed_masks), np.asarray(single.packed_masks))
    np.testing.assert_array_equal(np.asarray(merged.packed_masks_small), np.asarray(single.packed_masks_small))
    rows = np.array([69, 0, 36, 35, 34, 12, 36])
    np.testing.assert_array_equal(merged.activations[rows], single.activations[rows])
    np.testing.assert_array_equal(merged.activations[rows, 2:5], single.activations[rows, 2:5])
    np.testing.assert_array_equal(merged.activations[30:50], single.activations[30:50])
    assert merged.activations[40, 3].tolist() == single.activations[40, 3].tolist()
    objs = merged.objects["object"].to_numpy()[::7]
    assert torch.equal(merged.object_masks(objs), single.object_masks(objs))
    assert torch.equal(merged.object_masks_small(objs), single.object_masks_small(objs))
    assert torch.equal(merged.activation_map(50, 1), single.activation_map(50, 1))
    reopened = ActivationStore.open(merged.path)
    np.testing.assert_array_equal(reopened.thresholds, single.thresholds)


def test_mapper_and_explainer_work_on_a_merged_store(single, merged):
    assert mask_table(merged).equals(mask_table(single))
    assert torch.equal(pooled_masks(merged, mask_table(merged)), pooled_masks(single, mask_table(single)))
    space = shapes_space()
    mapper = ExplainerTrainer(single, space, TrainingConfig(seed=0, max_epochs=2), show_progress=False).fit()
    a = FilterExplainer(single, mapper, space, "concepts", ExplainSettings(p=5, s=2)).explain()
    b = FilterExplainer(merged, mapper, space, "concepts", ExplainSettings(p=5, s=2)).explain()
    assert a.equals(b)


def test_float32_shards_merge_by_an_exact_pass(tmp_path, tiny_model, data):
    settings = BuildSettings(batch_size=16, num_workers=0, dtype="float32")
    shards = [ActivationStore.build(tiny_model, "features.1", data, tmp_path, settings, shard=(i, 2),
                                    show_progress=False) for i in range(2)]
    merged = ActivationStore.merge([s.path for s in shards], tmp_path / "merged")
    acts = np.asarray(merged.activations)
    expected = np.quantile(acts.transpose(1, 0, 2, 3).reshape(acts.shape[1], -1), 0.995, axis=1)
    np.testing.assert_allclose(merged.thresholds, expected, rtol=1e-6)


def test_tail_histogram_quantiles_are_exact_and_fall_back_below_the_floor():
    rng = np.random.default_rng(0)
    first = torch.from_numpy(rng.normal(0, 1, (8, 5, 4, 4)).astype(np.float16))
    later = torch.from_numpy(rng.normal(0, 1, (400, 5, 4, 4)).astype(np.float16))
    first[:, 4] += 6                      # channel 4: the first batch sets a floor far too high
    hist = TailHistogram(5, "cpu")
    hist.add(first, 0.995)
    hist.add(later, 0.995)
    state = hist.state()
    values, unresolved = histogram_quantiles(state["floors"], state["below"], state["counts"].astype(np.int64),
                                             0.995)
    channel, bins = np.nonzero(state["counts"])
    sparse = (channel, bins.astype(np.uint16), state["counts"][channel, bins])
    again, _ = histogram_quantiles(state["floors"], state["below"], sparse, 0.995)
    np.testing.assert_array_equal(values, again)
    allv = torch.cat([first, later]).float().numpy().transpose(1, 0, 2, 3).reshape(5, -1)
    expected = np.quantile(allv, 0.995, axis=1)
    np.testing.assert_allclose(values[:4], expected[:4], rtol=1e-6)
    assert 4 in unresolved.tolist()
