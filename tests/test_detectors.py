"""Planted detectors on the tiny model: probes, planting, firing, and naming with the concepts seen."""
import copy

import numpy as np
import pandas as pd
import pytest
import torch

from lavise_nb.config import ExplainSettings, TrainingConfig
from lavise_nb.detectors import (Probes, ProbeSettings, auc_score, concept_cells, firing_auc, fit_probes, plant,
                                 planted_ranks)
from lavise_nb.explain import FilterExplainer
from lavise_nb.mapper import ExplainerTrainer
from lavise_nb.probe import LayerProbe, wrap_model
from lavise_nb.store import ActivationStore, BuildSettings

LAYER = "features.5"  # 12 channels at 8 x 8, after the tiny model's 3x3 conv
CONCEPTS = ["red", "blue", "checkers"]
N_NOISE = 6
# the shapes share their pixels with the colours (one mask each), so they are left out of training:
# with them seen, a colour region's vector lands between the colour and the shape words
SEEN = ["red", "green", "blue", "yellow", "stripes", "dots", "checkers", "plain"]


@pytest.fixture(scope="module")
def base_store(tmp_path_factory, tiny_model, shapes):
    root = tmp_path_factory.mktemp("detector_stores")
    return ActivationStore.build(tiny_model, LAYER, shapes, root, BuildSettings(batch_size=32, num_workers=0),
                                 show_progress=False)


@pytest.fixture(scope="module")
def probes(base_store):
    return fit_probes(base_store, CONCEPTS, ProbeSettings(n_noise=N_NOISE, seed=0))


@pytest.fixture(scope="module")
def planted(tiny_model, probes):
    return plant(tiny_model, LAYER, probes)


@pytest.fixture(scope="module")
def planted_store(planted, shapes, base_store):
    return ActivationStore.build(planted.model, planted.layer, shapes, base_store.path.parent,
                                 BuildSettings(batch_size=32, num_workers=0), show_progress=False)


def test_auc_score_counts_ties_half():
    # positives 2, 1; negatives 1, 0: pairs (2>1), (2>0), (1=1: half), (1>0) -> 3.5 / 4
    assert auc_score([2.0, 1.0, 1.0, 0.0], [True, True, False, False]) == pytest.approx(0.875)
    assert np.isnan(auc_score([1.0, 2.0], [True, True]))


def test_concept_cells_are_the_masks_at_map_size(base_store):
    cells = concept_cells(base_store, ["red"], images=[0, 1, 2])
    assert cells.shape == (3, 1, *base_store.shape[2:])
    assert 0 <= float(cells.min()) and float(cells.max()) <= 1
    with pytest.raises(ValueError, match="without masks"):
        concept_cells(base_store, ["giraffe"])


def test_probes_separate_the_concepts_cells_on_held_out_images(probes, base_store):
    table = probes.table
    assert list(table["kind"]) == ["not-imagenet", "not-imagenet", "not-object"] + ["noise"] * N_NOISE
    assert probes.concepts == CONCEPTS
    assert (table["auc"].iloc[:3] > 0.9).all(), table
    assert probes.weight.shape == (len(CONCEPTS) + N_NOISE, base_store.shape[1])
    assert 0.15 <= len(probes.test_images) / base_store.shape[0] <= 0.25
    # seeded: a second fit gives the same weights (so the planted model's store key is stable)
    again = fit_probes(base_store, CONCEPTS, ProbeSettings(n_noise=N_NOISE, seed=0))
    assert torch.equal(again.weight, probes.weight) and np.array_equal(again.test_images, probes.test_images)


def test_probes_save_and_load(probes, tmp_path):
    loaded = Probes.load(probes.save(tmp_path / "probes.pt"))
    assert torch.equal(loaded.weight, probes.weight) and torch.equal(loaded.bias, probes.bias)
    assert loaded.concepts == probes.concepts and loaded.settings == probes.settings
    pd.testing.assert_frame_equal(loaded.table, probes.table, check_dtype=False)


def test_planting_leaves_the_logits_and_the_original_model_unchanged(tiny_model, planted, probes, shapes):
    images = torch.stack([shapes[i]["image"] for i in range(16)])
    with torch.no_grad():
        assert torch.equal(planted.model.module(images), tiny_model.module(images))
    assert not tiny_model.resolve(LAYER)._forward_hooks  # the hook lives on the copy only
    assert planted.model.fingerprint != tiny_model.fingerprint
    with LayerProbe(planted.model, planted.layer) as probe:
        out = probe(images)
    with LayerProbe(tiny_model, LAYER) as probe:
        base = probe(images)
    channels = base.shape[1]
    assert out.shape == (16, channels + len(CONCEPTS) + N_NOISE, *base.shape[2:])
    assert torch.equal(out[:, :channels], base)
    expected = torch.einsum("bchw,pc->bphw", base, probes.weight) + probes.bias[None, :, None, None]
    assert torch.allclose(out[:, channels:], expected.clamp_min(0), atol=1e-5)
    assert planted.planted_channels == list(range(channels, channels + len(CONCEPTS) + N_NOISE))
    with torch.no_grad():   # the layers after the planted block read the layer's own channels only
        assert torch.allclose(planted.model.downstream(planted.layer)(out), tiny_model.module(images), atol=1e-6)
    # a deep copy feeds its own head, and the original keeps its own
    twin = wrap_model(copy.deepcopy(planted.model.module), planted.model.preprocess, "twin")
    twin.resolve(planted.layer).bias.fill_(1e3)
    with LayerProbe(twin, planted.layer) as probe:
        assert (probe(images)[:, channels:] > 900).all()
    with LayerProbe(planted.model, planted.layer) as probe:
        assert torch.equal(probe(images), out)
    with pytest.raises(ValueError, match="fitted on layer"):
        plant(tiny_model, "features.2", probes)


def test_planted_channels_fire_on_the_images_with_their_concept(planted_store, planted, probes):
    held_out = firing_auc(planted_store, planted.channels, probes.test_images)
    assert list(held_out["concept"]) == CONCEPTS
    assert (held_out["image_auc"] > 0.9).all(), held_out
    assert (held_out["mean_with"] > held_out["mean_without"]).all()


def test_seen_planted_concepts_are_named_first_and_noise_no_more_than_chance(planted_store, planted, space):
    config = TrainingConfig(seen=SEEN, margin=0.1, dropout=0.1, max_epochs=40)
    mapper = ExplainerTrainer(planted_store, space, config, show_progress=False).fit()
    explainer = FilterExplainer(planted_store, mapper, space, "concepts", ExplainSettings(top_words=20,
                                                                                         calibrated=False))
    ranks = planted_ranks(explainer, planted.channels)
    concepts = ranks[ranks["kind"] != "noise"]
    assert (concepts["rank"] == 1).all(), concepts
    assert concepts["top_share"].between(0, 1).all()
    # chance: how often the network's own filters (other directions of the same features) are named by a
    # planted concept first
    own = explainer.explain(filters=np.arange(planted_store.shape[1] - len(planted.channels)))
    chance = own.loc[own["rank"] == 1, "word"].isin(CONCEPTS).mean()
    noise = ranks[ranks["kind"] == "noise"]
    assert noise["rank"].isna().all()
    assert noise["top_is_planted"].mean() <= chance + 1 / N_NOISE, (noise, chance)


def test_planted_ranks_reads_a_table():
    channels = pd.DataFrame({"channel": [5, 6], "concept": ["tiger", None], "kind": ["imagenet", "noise"],
                             "auc": [0.99, np.nan]})
    table = pd.DataFrame({"filter": [5, 5, 5, 6, 6], "rank": [1, 2, 3, 1, 2],
                          "word": ["cat", "tiger", "lion", "tiger", "dog"], "votes": [3.0, 1.0, 1.0, 2.0, 2.0]})
    out = planted_ranks(table, channels).set_index("channel")
    assert out.loc[5, "rank"] == 2 and out.loc[5, "top_share"] == pytest.approx(0.6)
    assert out.loc[5, "words"] == "cat, tiger, lion" and not out.loc[5, "top_is_planted"]
    assert np.isnan(out.loc[6, "rank"]) and out.loc[6, "top_is_planted"] and out.loc[6, "top_share"] == 0.5
    out = planted_ranks(table.assign(support=0.9, word=["cat", "dog", "lion", "tiger", "dog"]), channels)
    assert np.isnan(out["rank"].iloc[0]) and out["top_share"].iloc[0] == 0.9
