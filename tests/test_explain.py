import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from lavise_nb.calibration import Calibration
from lavise_nb.explain import EXPLANATION_COLUMNS, FilterExplainer
from tests.conftest import COLOUR_FILTERS
from lavise_nb.config import ExplainSettings



@pytest.mark.parametrize("method,attention", [("attention", "soft_mask"), ("activation_masking", "paper")])
def test_planted_colour_filters_are_named_by_their_colour(tiny_store, mapper, space, method, attention):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(method=method, attention=attention, p=10, s=3))
    table = explainer.explain(filters=list(COLOUR_FILTERS.values()))
    assert list(table.columns) == EXPLANATION_COLUMNS
    first = table[table["rank"] == 1].set_index("filter")["word"]
    hits = sum(first[f] == colour for colour, f in COLOUR_FILTERS.items())
    assert hits >= 3, first.to_dict()
    assert first[COLOUR_FILTERS["red"]] == "red"
    votes = table[table["filter"] == 0]["votes"].to_numpy()
    assert np.all(np.diff(votes) <= 0) and votes.dtype.kind == "f"


def test_image_masking_runs_the_model_batched(tiny_store, mapper, space, tiny_model, shapes):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(method="image_masking", p=8, s=3), model=tiny_model, dataset=shapes)
    table = explainer.explain(filters=[COLOUR_FILTERS["red"]])
    assert table.iloc[0]["word"] == "red"
    with pytest.raises(ValueError, match="model="):
        FilterExplainer(tiny_store, mapper, space, None, ExplainSettings(method="image_masking"))


def test_all_filters_at_once_equals_per_filter_computation(tiny_store, mapper, space):
    for attention in ("paper", "code", "soft_mask"):
        explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(attention=attention, p=4))
        pairs = explainer.pairs()
        batched = explainer.pair_features(pairs)
        for row, (f, i) in enumerate(zip(pairs["filter"].head(12), pairs["image"].head(12))):
            maps = torch.from_numpy(np.asarray(tiny_store.activations[i], dtype=np.float32))
            own = maps[f]
            if attention == "paper":
                weights = torch.stack([F.cosine_similarity(own.flatten(), maps[k].flatten(), dim=0)
                                       for k in range(maps.shape[0])])
                expected = torch.stack([(weights[k] * maps[k]).mean() for k in range(maps.shape[0])])
            elif attention == "code":
                expected = torch.stack([(maps[k] * own / own.norm()).mean() for k in range(maps.shape[0])])
            else:
                soft = own.clamp_min(0)
                expected = torch.stack([(maps[k] * soft).sum() / soft.sum() for k in range(maps.shape[0])])
            assert torch.allclose(batched[row], expected, atol=1e-5)


def test_kinds_and_zero_shot_words(tiny_store, mapper, space):
    explainer = FilterExplainer(tiny_store, mapper, space, ["dog", "car", "purple"], ExplainSettings(p=5, top_words=20))
    table = explainer.explain(filters=[0])
    assert set(table["kind"]) <= {"seen", "unseen", "zero-shot"}
    kinds = dict(zip(explainer.words, explainer.kinds))
    assert kinds["red"] == "seen" and kinds["triangle"] == "unseen" and kinds["dog"] == "zero-shot"
    assert len(explainer.words) == 3 + 11


def test_calibration_lowers_seen_scores(tiny_store, mapper, space):
    raw = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False))
    calibrated = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=0.3))
    raw, calibrated = raw.image_words([0]), calibrated.image_words([0])
    merged = raw.merge(calibrated, on=["filter", "image", "word"], suffixes=("_raw", "_cal"))
    seen = merged[merged["kind_raw"] == "seen"]
    assert np.allclose(seen["score_raw"] - 0.3, seen["score_cal"], atol=1e-5)


def test_filter_words_and_image_words_use_their_own_gamma(tiny_store, mapper, space):
    tuned = mapper.calibrated(Calibration(gamma=0.0, filter_gamma=0.5))
    explainer = FilterExplainer(tiny_store, tuned, space, "concepts", ExplainSettings(p=6, s=3))
    assert (explainer.gamma, explainer.filter_gamma) == (0.0, 0.5)
    raw = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, s=3, calibrated=False))
    shifted = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, s=3, calibrated=0.5))
    pd.testing.assert_frame_equal(explainer.image_words([0, 1]), raw.image_words([0, 1]))
    pd.testing.assert_frame_equal(explainer.explain([0, 1]), shifted.explain([0, 1]))
    assert not explainer.explain([0, 1])["word"].equals(raw.explain([0, 1])["word"])
    assert FilterExplainer(tiny_store, mapper.calibrated(Calibration(0.0, None)), space).filter_gamma == 0.0
    assert mapper.calibration is None


def test_filter_without_activation_says_so(tiny_store, mapper, space, monkeypatch):
    explainer = FilterExplainer(tiny_store, mapper, space, vocabulary="concepts")
    maxima = np.asarray(tiny_store.maxima).copy()
    maxima[:, 5] = -1.0
    monkeypatch.setattr(tiny_store, "maxima", maxima)
    table = explainer.explain(filters=[4, 5])
    row = table[table["filter"] == 5]
    assert len(row) == 1 and pd.isna(row.iloc[0]["word"]) and "max activation" in row.iloc[0]["note"]
    assert (table[table["filter"] == 4]["rank"] > 0).all()


def test_image_words_and_reverse_lookup(tiny_store, mapper, space):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, s=3, image_k=5))
    words = explainer.image_words(filters=[0, 1])
    assert set(words.groupby(["filter", "image"]).size()) == {5}
    hits = explainer.lookup("red", k=3)
    assert list(hits.columns) == ["query", "rank", "filter", "score", "words"]
    assert hits.iloc[0]["filter"] == COLOUR_FILTERS["red"]
    assert hits["score"].is_monotonic_decreasing


def test_votes_follow_the_voting_rule():
    explainer = object.__new__(FilterExplainer)
    explainer._settings = ExplainSettings(s=2, temperature=0.1, voting="top_s")
    pairs = pd.DataFrame({"filter": [0, 0], "image": [3, 4], "activation": [2.0, 1.0]})
    index_top = torch.tensor([[5, 6, 7], [6, 5, 7]])
    scores_top = torch.tensor([[0.9, 0.8, 0.1], [0.7, 0.7, 0.6]])
    # the paper: each image's s best words, one activation-weighted vote each
    top_s = explainer.votes(pairs, index_top, scores_top).set_index("word")["votes"]
    assert top_s.to_dict() == {5: 3.0, 6: 3.0}
    explainer._settings = ExplainSettings(s=2, temperature=0.1)  # shares of the vote: softmax(score / temperature) over each image's words
    soft = explainer.votes(pairs, index_top, scores_top).set_index("word")["votes"]
    first, second = (scores_top / 0.1).softmax(1).numpy()
    expected = {5: 2 * first[0] + second[1], 6: 2 * first[1] + second[0], 7: 2 * first[2] + second[2]}
    assert soft.index.tolist() == [5, 6, 7]
    assert np.allclose([soft[w] for w in expected], list(expected.values()))
    assert np.isclose(soft.sum(), 3.0)  # each image gives away exactly its activation


def test_lift_ranks_a_filter_s_own_word_above_the_layer_s_hub():
    """Word 9 is every filter's top vote (a hub); word 5 is filter 0's alone: lift puts 5 first, votes put 9."""
    explainer = object.__new__(FilterExplainer)
    explainer._settings = ExplainSettings(temperature=1.0, lift_floor=0.01)
    pairs = pd.DataFrame({"filter": [0, 1, 2], "image": [0, 1, 2], "activation": [1.0, 1.0, 1.0]})
    index_top = torch.tensor([[9, 5], [9, 6], [9, 7]])
    scores_top = torch.tensor([[0.6, 0.4], [0.9, 0.1], [0.9, 0.1]])
    by_votes = explainer.votes(pairs, index_top, scores_top)
    assert by_votes.groupby("filter")["word"].first().tolist() == [9, 9, 9]
    shares = scores_top.softmax(1).numpy()
    base_9 = shares[:, 0].mean()
    row = by_votes.set_index(["filter", "word"])["lift"]
    assert np.isclose(row[0, 9], (shares[0, 0] + 0.01) / (base_9 + 0.01))
    assert np.isclose(row[0, 5], (shares[0, 1] + 0.01) / (shares[0, 1] / 3 + 0.01))
    explainer._settings = ExplainSettings(temperature=1.0, ranking="lift")
    by_lift = explainer.votes(pairs, index_top, scores_top)
    assert by_lift.groupby("filter")["word"].first().tolist() == [5, 6, 7]
    assert by_lift["votes"].sum() == pytest.approx(by_votes["votes"].sum())  # the votes themselves are unchanged


def test_lift_is_against_the_whole_layer_whichever_filters_are_asked_for(tiny_store, mapper, space):
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=10, ranking="lift"))
    every = explainer.explain()
    some = explainer.explain(filters=[COLOUR_FILTERS["red"], COLOUR_FILTERS["blue"]])
    merged = some.merge(every, on=["filter", "rank"], suffixes=("", "_all"))
    assert len(merged) == len(some) and (merged["word"] == merged["word_all"]).all()
    assert np.allclose(merged["lift"], merged["lift_all"])
    first = every[every["rank"] == 1].set_index("filter")
    assert first.loc[COLOUR_FILTERS["red"], "word"] == "red" and first.loc[COLOUR_FILTERS["red"], "lift"] > 1
    assert every.groupby("filter")["lift"].apply(lambda x: x.is_monotonic_decreasing).all()


def test_bad_voting_is_reported(tiny_store, mapper, space):
    with pytest.raises(ValueError, match="voting must be one of"):
        FilterExplainer(tiny_store, mapper, space, None, ExplainSettings(voting="borda"))
    with pytest.raises(ValueError, match="temperature must be > 0"):
        FilterExplainer(tiny_store, mapper, space, None, ExplainSettings(temperature=0))


def test_support_is_the_share_of_the_filters_evidence(tiny_store, mapper, space):
    table = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=10, top_words=50)).explain()
    assert np.allclose(table.groupby("filter")["support"].sum(), 1.0, atol=1e-4)  # softmax: whole votes shared
    first = table[table["rank"] == 1].set_index("filter")
    assert first.loc[COLOUR_FILTERS["red"], "word"] == "red" and first.loc[COLOUR_FILTERS["red"], "support"] > 0.2
    top_s = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=10, voting="top_s", s=3,
                                                                                    top_words=50)).explain()
    assert np.allclose(top_s.groupby("filter")["support"].sum(), 3.0, atol=1e-4)  # s votes per image
    assert top_s["support"].between(0, 1 + 1e-6).all()


@pytest.mark.parametrize("changes,message", [
    (dict(p=-3), "p must be >= 1, not -3"), (dict(p=0), "p must be >= 1"), (dict(s=0), "s must be >= 1"),
    (dict(top_words=-1), "top_words must be >= 1"), (dict(top_words=0), "top_words must be >= 1"),
    (dict(p=2.5), "p must be an integer"), (dict(method="gradcam"), "method must be one of"),
    (dict(hubness="mutual"), "hubness must be one of"), (dict(temperature=-1), "temperature must be > 0"),
    (dict(ranking="lifts"), "ranking must be one of"), (dict(lift_floor=0), "lift_floor must be > 0"),
])
def test_bad_settings_name_the_parameter_and_its_range(changes, message):
    with pytest.raises(ValueError, match=message):
        ExplainSettings(**changes)
