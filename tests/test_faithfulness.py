"""Faithfulness scores: planted answers, NeuronEval's sanity checks, coverage."""
import numpy as np
import pandas as pd
import pytest
import torch

from lavise_nb.coherence import RandomDirections
from lavise_nb.config import ExplainSettings
from lavise_nb.explain import FilterExplainer
from lavise_nb.faithfulness import (PRESENCE_COLUMNS, PresenceScore, ProbeScenes, against_random_directions,
                                    attach_dissection, attach_faithfulness, coverage, first_words, presence_scores,
                                    sanity_checks)
from tests.conftest import COLOUR_FILTERS


def test_presence_scores_on_a_hand_made_unit():
    presence = np.array([1, 1, 0, 0, 0, 0], dtype=bool)
    perfect = presence_scores(np.array([5.0, 4.0, 1.0, 0.5, 0.2, 0.0]), presence)
    assert perfect["auc"] == 1.0 and perfect["auprc"] == 1.0 and perfect["auprc_chance"] == pytest.approx(1 / 3)
    assert perfect["correlation"] == pytest.approx(np.corrcoef([5, 4, 1, 0.5, 0.2, 0], presence)[0, 1])
    assert perfect["auc_p"] < 0.1
    inverted = presence_scores(np.array([0.0, 0.1, 1.0, 2.0, 3.0, 4.0]), presence)
    assert inverted["auc"] == 0.0 and inverted["correlation"] < 0
    assert np.isnan(presence_scores(np.arange(3.0), np.zeros(3, bool))["auc"])


@pytest.mark.parametrize("rate", [0.02, 0.2])
def test_sanity_checks_drop_for_correlation_and_auprc(rate):
    rng = np.random.default_rng(0)
    presence = rng.random(2000) < rate
    activation = presence * 2.0 + rng.normal(0, 0.5, 2000)  # a unit that detects the concept
    table = sanity_checks(activation, presence, seed=1).set_index("score")
    assert table.loc["correlation", "passes"] and table.loc["auprc", "passes"]
    assert (table["extra_labels"] < table["true"]).all()
    # recall as overlap-counting metrics use it, "share of the unit's firing covered by the label", rises
    # when random labels are added: it cannot tell a true label from a padded one
    overlap = {"overlap_recall": lambda a, p: float(p[a > 1.0].mean())}
    recall_like = sanity_checks(activation, presence, overlap, seed=1).iloc[0]
    assert recall_like["extra_labels"] > recall_like["true"]
    assert not recall_like["passes"]


def test_presence_names_the_planted_colour_filters(tiny_store):
    pairs = pd.DataFrame({"filter": [COLOUR_FILTERS["red"], COLOUR_FILTERS["red"], COLOUR_FILTERS["blue"], 0],
                          "word": ["red", "blue", "blue", "dog"]})
    table = PresenceScore(tiny_store, pixel_negatives=40).score(pairs)
    assert list(table.columns) == PRESENCE_COLUMNS
    red, wrong, blue, dog = (table.iloc[i] for i in range(4))
    assert red["auc"] > 0.9 and red["auprc"] > 3 * red["auprc_chance"] and red["correlation"] > 0.5
    assert red["pixel_auprc"] > 5 * red["pixel_chance"]
    assert wrong["auc"] < 0.7 and wrong["auprc"] < red["auprc"] and wrong["pixel_auprc"] < red["pixel_auprc"]
    assert blue["auc"] > 0.9
    assert not dog["testable"] and np.isnan(dog["auc"])
    assert coverage(table) == "2 of 2 filters testable (100%)"
    assert coverage(table, n_filters=8) == "2 of 8 filters testable (25%)"


def test_probe_scores_use_the_probes_and_drop_controls_that_hold_the_concept(monkeypatch):
    probe = object.__new__(ProbeScenes)
    probe.objects, probe.backgrounds, probe.show_progress = {"tiger", "dog"}, {"forest"}, False
    controls = (np.array([[0.0, 1.0], [0.1, 1.0], [9.0, 1.0], [0.2, 1.0]]),
                np.array([{"dog"}, {"forest"}, {"tiger"}, set()], dtype=object))
    tigers = (np.array([[3.0, 1.0], [4.0, 1.0], [0.0, 1.0]]), np.array([True, True, False]))
    monkeypatch.setattr(probe, "activations", lambda word, directions=None: controls if word is None else tigers,
                        raising=False)
    table = probe.score(pd.DataFrame({"filter": [0, 1, 0], "word": ["tiger", "tiger", "sofa"]}))
    first = table.iloc[0]
    assert (first["n_probe"], first["n_control"]) == (2, 3)  # the control with a tiger is dropped
    assert first["auc"] == 1.0 and first["mad"] == pytest.approx((3.5 - 0.1) / np.std([0.0, 0.1, 0.2]))
    assert table.iloc[1]["auc"] == 0.5 and np.isnan(table.iloc[1]["mad"])  # constant activations
    assert not table.iloc[2]["testable"]


def test_probe_scores_of_one_hot_directions_equal_their_filters(tiny_store, monkeypatch):
    """Scoring random directions goes through the same probes; a channel's one-hot direction scores as it."""
    probe = object.__new__(ProbeScenes)
    probe.objects, probe.backgrounds, probe.show_progress = {"red", "circle"}, set(), False
    probe._stores, probe._contents, probe._maxima = {}, {}, {}
    monkeypatch.setattr(probe, "store", lambda word: tiny_store, raising=False)
    filters = [COLOUR_FILTERS["red"], COLOUR_FILTERS["green"]]
    directions = RandomDirections(tiny_store, n=2)
    directions.directions = torch.zeros(2, tiny_store.shape[1])
    directions.directions[[0, 1], filters[::-1]] = 1.0   # direction 0 is the green filter, 1 the red one
    pairs = pd.DataFrame({"filter": filters, "word": ["red", "circle"]})
    real = probe.score(pairs)
    virtual = probe.score(pairs.assign(filter=[1, 0]), directions=directions)
    assert real["auc"].notna().all() and real.loc[0, "auc"] > 0.9   # the planted red filter
    pd.testing.assert_frame_equal(virtual.drop(columns="filter"), real.drop(columns="filter"), rtol=1e-3)
    other = RandomDirections(tiny_store, n=2, seed=1)
    assert other.fingerprint != directions.fingerprint
    assert not probe.score(pairs.assign(filter=[0, 1]), directions=other)["auc"].equals(real["auc"])


def test_against_random_directions_scores_filters_and_directions_alike(tiny_store, mapper, space, monkeypatch):
    probe = object.__new__(ProbeScenes)
    probe.objects, probe.backgrounds, probe.show_progress = set(tiny_store.concepts), set(), False
    probe._stores, probe._contents, probe._maxima = {}, {}, {}
    monkeypatch.setattr(probe, "store", lambda word: tiny_store, raising=False)
    explainer = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, null_directions=0))
    table = against_random_directions(explainer, probe, n=5, seed=2)
    filters, random = table[table["unit"] == "filter"], table[table["unit"] == "random direction"]
    assert len(filters) == tiny_store.shape[1] and 0 < len(random) <= 5
    assert filters.set_index("filter").loc[COLOUR_FILTERS["red"], "auc"] > 0.9
    assert table.loc[table["testable"], "auc"].between(0, 1).all()
    explainer.prior = object()
    with pytest.raises(ValueError, match="prior=None"):
        against_random_directions(explainer, probe)


def test_faithfulness_column_joins_where_testable():
    explanations = pd.DataFrame({"filter": [0, 0, 1], "rank": [1, 2, 1], "word": ["red", "dog", "sky"]})
    scores = pd.DataFrame({"filter": [0, 1], "word": ["red", "sky"], "testable": [True, False], "auc": [0.9, np.nan]})
    joined = attach_faithfulness(explanations, scores)
    assert joined["faithfulness"].iloc[0] == 0.9 and joined["faithfulness"].iloc[1:].isna().all()
    assert first_words(explanations).to_dict("list") == {"filter": [0, 1], "word": ["red", "sky"], "rank": [1, 1]}


def test_dissection_check_sits_beside_the_words_of_the_planted_filters(tiny_store):
    from lavise_nb.evaluate import network_dissection

    checks = network_dissection(tiny_store, top_words=1)
    red, blue = COLOUR_FILTERS["red"], COLOUR_FILTERS["blue"]
    explanations = pd.DataFrame({"filter": [red, red, blue, blue], "rank": [1, 2, 1, 2],
                                 "word": ["red", "dog", "sky", "blue"]})
    scores = pd.DataFrame({"filter": [red, blue], "word": ["red", "blue"], "testable": [True, False],
                           "auc": [0.97, np.nan]})
    table = attach_dissection(explanations, checks, scores)
    assert list(table["dissection_word"]) == ["red", "red", "blue", "blue"]
    iou = checks[checks["rank"] == 1].set_index("filter")["iou"]
    assert np.allclose(table["dissection_iou"], iou[[red, red, blue, blue]].to_numpy()) and (iou[[red, blue]] > 0).all()
    assert list(table["agrees"]) == [True, True, False, False]  # blue's first word is "sky", not its label
    assert table["dissection_faithfulness"].iloc[0] == 0.97 and table["dissection_faithfulness"].iloc[2:].isna().all()
    again = attach_dissection(table, checks)  # attaching twice replaces the columns
    assert list(again.columns) == list(table.columns) and again["dissection_faithfulness"].isna().all()


def test_invert_labels_find_the_planted_colours_with_the_auc_presence_scores_give(tiny_store):
    from lavise_nb.evaluate import invert_labels

    labels = invert_labels(tiny_store, top_words=3)
    first = labels[labels["rank"] == 1].set_index("filter")
    for colour, f in COLOUR_FILTERS.items():
        assert first.loc[f, "word"] == colour
    again = PresenceScore(tiny_store).score(pd.DataFrame({"filter": [0], "word": [first.loc[0, "word"]]}))
    assert again["auc"].iloc[0] == pytest.approx(first.loc[0, "auc"])


class _PlantedProbes:
    """ProbeScenes' interface with planted AUCs: (filter, word) -> auc; words absent are untestable."""

    def __init__(self, seed, aucs):
        self.seed, self.aucs = seed, aucs

    def testable(self, word):
        return any(w == word for _, w in self.aucs)

    def score(self, pairs):
        self.asked = list(zip(pairs["filter"], pairs["word"]))
        return pd.DataFrame({"filter": pairs["filter"].to_numpy(), "word": pairs["word"].to_numpy(),
                             "auc": [self.aucs.get((f, w), np.nan) for f, w in self.asked]})


def test_verification_chooses_on_the_selection_scenes_and_scores_on_the_evaluation_scenes():
    from lavise_nb.faithfulness import VERIFIED_COLUMNS, WordVerification

    explanations = pd.DataFrame({"filter": [0, 0, 0, 1, 1, 2, 3, 3, 4], "rank": [1, 2, 3, 1, 2, 1, 1, 2, 0],
                                 "word": ["tractor", "tire", "road", "sea", "boat", "zebu", "cat", "dog", None]})
    dissection = pd.DataFrame({"filter": [0, 1, 2, 3, 4, 9], "rank": 1,
                               "word": ["wheel", "boat", "grass", "cow", "grass", "x"], "iou": 0.1})
    selection = _PlantedProbes(110_001, {(0, "tire"): 0.7, (0, "road"): 0.9, (0, "wheel"): 0.8, (1, "sea"): 0.6,
                                        (1, "boat"): 0.95, (3, "cat"): 0.8, (3, "dog"): 0.8, (3, "cow"): 0.8,
                                        (9, "x"): 0.99, (4, "grass"): 0.99})
    evaluation = _PlantedProbes(10_000, {(0, "road"): 0.55, (1, "boat"): 0.9, (3, "cat"): 0.7})
    table = WordVerification(evaluation, selection, top=2).verify(explanations, dissection)
    assert list(table.columns) == ["filter", "rank", "word", *VERIFIED_COLUMNS]
    best = table.drop_duplicates("filter").set_index("filter")
    # road is rank 3, outside top=2: the label wheel beats tire; the chosen word is scored on the other scenes
    assert best.loc[0, "verified_word"] == "wheel" and best.loc[0, "verified_from"] == "dissection"
    assert best.loc[0, "verified_selection"] == 0.8 and np.isnan(best.loc[0, "verified_faithfulness"])
    assert best.loc[1, ["verified_word", "verified_from", "verified_faithfulness"]].tolist() == ["boat", "both", 0.9]
    assert best.loc[2, VERIFIED_COLUMNS].isna().all()  # tractor-like untestable words: nothing verified
    assert best.loc[3, "verified_word"] == "cat"  # a tie goes to the explainer's earlier rank
    assert best.loc[4, VERIFIED_COLUMNS].isna().all()  # a filter the explainer left unnamed gets no label either
    assert (0, "tractor") not in selection.asked and (9, "x") not in selection.asked  # filter 9 is not explained
    assert evaluation.asked == [(0, "wheel"), (1, "boat"), (3, "cat")]
    again = WordVerification(evaluation, selection, top=3).verify(table, dissection)
    assert again.shape[1] == table.shape[1]  # verifying again replaces the columns
    assert again.drop_duplicates("filter").set_index("filter").loc[0, "verified_word"] == "road"


def test_verification_refuses_to_choose_and_score_on_the_same_scenes():
    from lavise_nb.faithfulness import WordVerification

    for selection in (10_000, 20_000):  # per-word seeds span SEED_SPAN: 20_000 could meet one of 10_000's words
        with pytest.raises(ValueError, match=f"base seeds {selection} and 10000, less than 100001 apart.*seed 110001"):
            WordVerification(_PlantedProbes(10_000, {}), _PlantedProbes(selection, {}))
    WordVerification(_PlantedProbes(10_000, {}), _PlantedProbes(110_001, {}))
    probes = ProbeScenes(None, "_blocks.15", n_images=7, seed=10_000, weight=50.0)
    chosen = WordVerification(probes).selection  # the default: the same probes on scenes no seed of theirs meets
    assert (chosen.seed, chosen.n_images, chosen.weight, chosen.layer) == (110_001, 7, 50.0, "_blocks.15")


def test_verification_of_a_table_with_nothing_testable_adds_empty_columns():
    from lavise_nb.faithfulness import VERIFIED_COLUMNS, WordVerification

    verification = WordVerification(_PlantedProbes(10_000, {}), _PlantedProbes(110_001, {(0, "red"): 0.9}))
    unnamed = pd.DataFrame({"filter": [0, 1], "rank": [0, 0], "word": [None, None]})
    for table in (unnamed, unnamed.iloc[:0]):
        verified = verification.verify(table)
        assert list(verified.columns) == [*table.columns, *VERIFIED_COLUMNS] and len(verified) == len(table)
        assert verified[VERIFIED_COLUMNS].isna().all().all()
