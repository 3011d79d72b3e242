import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from lavise_nb.coherence import RandomDirections, resultant_length
from lavise_nb.config import ExplainSettings
from lavise_nb.explain import FilterExplainer
from tests.conftest import COLOUR_FILTERS


def test_resultant_length_of_planted_vectors():
    east, north = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    vectors = torch.stack([east, east, east, -east, north, north])
    groups, lengths = resultant_length(vectors, [1, 1, 2, 2, 3, 1], [5, 5, 7, 7, 9, 9])
    assert groups.tolist() == [5, 7, 9]
    assert lengths == pytest.approx([1.0, 0.0, 1.0])
    _, mixed = resultant_length(torch.stack([east, north]), [3.0, 1.0], [0, 0])
    assert mixed[0] == pytest.approx(np.hypot(3, 1) / 4)


def test_random_direction_maxima_and_top_images_match_a_direct_computation(tiny_store):
    directions = RandomDirections(tiny_store, n=5, seed=3)
    maps = torch.from_numpy(np.asarray(tiny_store.activations, dtype=np.float32))
    cells = torch.from_numpy(tiny_store.valid_cells).flatten(1)
    response = torch.einsum("bchw,nc->bnhw", maps, directions.directions).flatten(2)
    expected = response.masked_fill(~cells[:, None, :], -np.inf).amax(2).numpy()
    assert np.allclose(directions.maxima(block=7), expected, atol=1e-5)
    assert np.array_equal(directions.top_indices(4)[:, 0], expected.argmax(0))
    assert torch.allclose(directions.directions.norm(dim=1), torch.ones(5))
    again = RandomDirections(tiny_store, n=5, seed=3)
    assert torch.equal(again.directions, directions.directions) and again.fingerprint == directions.fingerprint
    moved = directions.on(tiny_store)
    assert moved.directions is directions.directions and np.array_equal(moved.maxima(), directions.maxima())
    with pytest.raises(ValueError, match="same layer"):
        RandomDirections(tiny_store, directions=torch.ones(2, tiny_store.shape[1] + 1))


@pytest.mark.parametrize("method", ["attention", "activation_masking"])
def test_a_one_hot_direction_is_explained_exactly_as_its_filter(tiny_store, mapper, space, method):
    """The virtual-filter path equals the real one when the direction is a channel."""
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(method=method, p=6))
    f = COLOUR_FILTERS["red"]
    directions = RandomDirections(tiny_store, n=1)
    directions.directions = torch.zeros(1, tiny_store.shape[1])
    directions.directions[0, f] = 1.0
    if method == "activation_masking":
        directions.thresholds = lambda quantile: torch.from_numpy(tiny_store.thresholds[[f]])
    real = explainer.pairs([f])
    top = directions.top_indices(6)[0]
    assert set(top.tolist()) == set(real["image"].tolist())
    virtual = real.assign(filter=0)
    assert torch.allclose(explainer.pair_features(virtual, directions), explainer.pair_features(real), atol=1e-5)


def test_one_hot_directions_are_named_as_their_filters(tiny_store, mapper, space):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, null_directions=8))
    filters = [COLOUR_FILTERS["red"], COLOUR_FILTERS["blue"]]
    directions = RandomDirections(tiny_store, n=2)
    directions.directions = torch.zeros(2, tiny_store.shape[1])
    directions.directions[[0, 1], filters] = 1.0
    named = explainer.explain_directions(directions)
    real = explainer.explain(filters)
    assert named["filter"].tolist() == real["filter"].map({filters[0]: 0, filters[1]: 1}).tolist()
    assert named["word"].tolist() == real["word"].tolist()
    for column in ("votes", "support", "score", "n_images", "coherence", "null_share"):
        assert np.allclose(named[column], real[column], rtol=1e-3), column   # maxima: float16 maps vs the build's
    assert named.loc[0, "word"] == "red"
    shuffled = explainer.explain_directions(RandomDirections(tiny_store, n=3, seed=1))
    assert sorted(shuffled["filter"].unique()) == [0, 1, 2]
    named = shuffled.dropna(subset=["word"])
    assert named["null_share"].between(0, 1).all()
    assert shuffled.loc[shuffled["word"].isna(), "coherence"].isna().all()   # a direction no image responds to


def test_coherence_column_and_its_null(tiny_store, mapper, space):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=8, null_directions=16))
    table = explainer.explain(filters=[0, 1, 2])
    agreement = explainer.coherence([0, 1, 2])
    assert list(agreement.columns) == ["filter", "coherence", "null_share", "coherent"]
    assert agreement["coherence"].between(0, 1).all()
    null = explainer.null_coherence()
    assert len(null) == 16 and np.all((null >= 0) & (null <= 1))
    for row in agreement.itertuples():
        assert row.null_share == pytest.approx((1 + (null >= row.coherence).sum()) / 17)
        assert row.coherent == (row.null_share <= 0.05)
        words = table[table["filter"] == row.filter]
        assert np.allclose(words["coherence"], row.coherence) and np.allclose(words["null_share"], row.null_share)
    # the filter's own coherence, by hand from its pairs' vectors
    pairs, vectors = explainer.explainer_vectors([0])
    weights = torch.tensor(pairs["activation"].to_numpy())[:, None]
    by_hand = float((vectors * weights).sum(0).norm() / weights.sum())
    assert agreement.set_index("filter").loc[0, "coherence"] == pytest.approx(by_hand, rel=1e-5)


def test_no_null_leaves_the_share_empty(tiny_store, mapper, space, tiny_model, shapes):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=5, null_directions=0))
    table = explainer.explain(filters=[0])
    assert table["null_share"].isna().all() and table["coherence"].notna().all()
    masking = FilterExplainer(tiny_store, mapper, space, "concepts",
                              ExplainSettings(method="image_masking", p=3), model=tiny_model, dataset=shapes)
    assert len(masking.null_coherence()) == 0
    with pytest.raises(ValueError, match="image-masking"):
        masking.pair_features(masking.pairs([0]), RandomDirections(tiny_store, n=1))
    with pytest.raises(ValueError, match="null_directions"):
        ExplainSettings(null_directions=-1)
