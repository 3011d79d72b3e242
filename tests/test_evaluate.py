import itertools

import pandas as pd
import pytest
import torch

from lavise_nb.config import ExplainSettings, TrainingConfig
from lavise_nb.evaluate import (RECALL_COLUMNS, RecallEvaluator, frequency_baseline, ground_truth, oracle_words,
                                recall)


def test_recall_on_a_hand_made_case():
    truth = pd.DataFrame({"filter": [0, 0, 0, 1], "image": [5, 5, 6, 7], "concept": ["dog", "grass", "cat", "car"]})
    words = pd.DataFrame({"filter": [0, 0, 0, 1, 1], "rank": [1, 2, 3, 1, 2],
                          "word": ["dog", "tree", "cat", "road", "car"]})
    table = recall(truth, words, ks=(1, 2, 3)).set_index("k")
    # pairs: (0,5) G={dog,grass}; (0,6) G={cat}; (1,7) G={car}
    assert table.loc[1, "recall"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert table.loc[2, "recall"] == pytest.approx((1 / 2 + 0 + 1) / 3)
    assert table.loc[3, "recall"] == pytest.approx((1 / 2 + 1 + 1) / 3)
    assert (table["pairs"] == 3).all()
    per_image = pd.DataFrame({"filter": [0, 0, 0], "image": [5, 6, 6], "rank": [1, 1, 2],
                              "word": ["grass", "dog", "cat"]})
    by_image = recall(truth, per_image, ks=(1, 2), by=("filter", "image")).set_index("k")
    assert by_image.loc[1, "recall"] == pytest.approx((1 / 2 + 0 + 0) / 3)
    assert by_image.loc[2, "recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)


def test_recall_counts_a_repeated_word_or_truth_row_once():
    truth = pd.DataFrame({"filter": [0, 0, 0], "image": [5, 5, 5], "concept": ["dog", "dog", "cat"]})
    words = pd.DataFrame({"filter": [0, 0, 0], "rank": [1, 2, 3], "word": ["dog", "dog", "cat"]})
    table = recall(truth, words, ks=(1, 2, 3)).set_index("k")
    assert table["recall"].tolist() == pytest.approx([1 / 2, 1 / 2, 1.0])
    assert (table["pairs"] == 1).all()
    empty = recall(truth.iloc[:0], words, ks=(1,))
    assert empty["pairs"].iloc[0] == 0 and pd.isna(empty["recall"].iloc[0])


def test_oracle_words_reach_the_best_recall_of_any_list():
    # filter 0: dog is in all three pairs, cat in two, grass and sky in one each
    truth = pd.DataFrame({"filter": [0] * 7 + [1], "image": [1, 1, 2, 2, 3, 3, 3, 4],
                          "concept": ["dog", "grass", "dog", "cat", "dog", "cat", "sky", "car"]})
    best = oracle_words(truth, top_words=2)
    assert best[best["filter"] == 0]["word"].tolist() == ["dog", "cat"]
    assert best[best["filter"] == 1]["word"].tolist() == ["car"]
    got = recall(truth, best, ks=(2,))["recall"].iloc[0]
    assert got == pytest.approx((1 / 2 + 1 + 2 / 3 + 1) / 4)
    concepts = sorted(set(truth["concept"]))
    for pair in itertools.combinations(concepts, 2):
        words = pd.DataFrame({"filter": [0, 0, 1], "rank": [1, 2, 1], "word": [*pair, "car"]})
        assert recall(truth, words, ks=(2,))["recall"].iloc[0] <= got + 1e-12
    assert oracle_words(truth.iloc[:0]).empty


def test_ground_truth_iou_against_a_direct_computation(tiny_store):
    pairs = pd.DataFrame({"filter": [0, 0, 3], "image": [int(i) for i in tiny_store.top_indices(2, [0])[0]] + [4]})
    truth = ground_truth(tiny_store, pairs, iou_threshold=0.0)
    for f, i in zip(pairs["filter"], pairs["image"]):
        region = tiny_store.activation_map(i, f) > float(tiny_store.thresholds[f])
        rows = tiny_store.objects[tiny_store.objects["image"] == i]
        masks = tiny_store.object_masks(rows["object"].to_numpy())
        for concept, mask in zip(rows["concept"], masks):
            inter, union = (region & mask).sum().item(), (region | mask).sum().item()
            iou = inter / max(union, 1)
            got = truth[(truth["filter"] == f) & (truth["image"] == i) & (truth["concept"] == concept)]["iou"]
            if iou > 0:
                assert got.iloc[0] == pytest.approx(iou, rel=1e-5)
            else:
                assert got.empty


def test_evaluator_table_and_frequency_baseline(tiny_store, mapper):
    pairs = pd.DataFrame({"filter": [0, 0, 1], "image": [int(i) for i in tiny_store.top_indices(3, [0])[0][:2]] + [0]})
    constant = frequency_baseline(tiny_store, pairs, top_words=3)
    counts = tiny_store.objects.groupby("concept")["image"].nunique().sort_values(ascending=False, kind="stable")
    assert constant[constant["filter"] == 0]["word"].tolist() == counts.index[:3].tolist()
    table = RecallEvaluator(tiny_store, mapper.seen, mapper.unseen, stuff=tiny_store.stuff).evaluate(
        constant, None, pairs, "frequency")
    assert list(table.columns) == RECALL_COLUMNS
    assert set(table["ground"]) == {"objects", "stuff", "all"} and table["recall"].dropna().between(0, 1).all()


@pytest.mark.real
def test_random_network_scores_below_the_pretrained_one(tmp_path):
    from lavise_nb import (ActivationStore, ExplainerTrainer, FilterExplainer, load_model, load_word_space,
                           recalibrate_batchnorm, stamp_scenes)
    from lavise_nb.datasets import collate_samples
    space = load_word_space()
    trained = load_model("efficientnet-lite0")
    data = stamp_scenes(200, seed=0, preprocess=trained.preprocess, show_progress=False)
    random = load_model("efficientnet-lite0", random_init=True, seed=0)
    recalibrate_batchnorm(random, torch.utils.data.DataLoader(data, batch_size=50, collate_fn=collate_samples),
                          max_batches=2)
    scores = {}
    for name, model in (("trained", trained), ("random", random)):
        store = ActivationStore.build(model, "_blocks.15", data, show_progress=False)
        mapper = ExplainerTrainer(store, space, TrainingConfig(seed=0, max_epochs=15), show_progress=False).fit()
        explainer = FilterExplainer(store, mapper, space, "concepts", ExplainSettings(p=10, calibrated=False))
        table = RecallEvaluator(store, mapper.seen, mapper.unseen, stuff=store.stuff).evaluate(
            explainer.explain(), explainer.image_words(), explainer.pairs(), "attention")
        row = table[(table["ground"] == "objects") & (table["subset"] == "all") & (table["k"] == 20)]
        scores[name] = row.set_index("words_from")["recall"]
    assert (scores["random"] < scores["trained"]).all(), scores
    assert scores["trained"]["image"] > scores["random"]["image"] + 0.1


def test_method_comparison_warns_once_for_methods_the_gamma_was_not_tuned_for(tiny_store, mapper, space):
    import warnings as _warnings

    from lavise_nb.calibration import Calibration
    from lavise_nb.evaluate import MethodComparison

    settings = ExplainSettings(p=6)
    tuned = mapper.calibrated(Calibration(0.1, 0.05, settings=settings.scoring(), vocabulary="concepts"))
    comparison = MethodComparison(tiny_store, tuned, space, settings)
    with pytest.warns(UserWarning, match=r"1 of 2 methods \(activation_masking\)") as caught:
        recall, words = comparison.compare([("attention", "soft_mask"), ("activation_masking", "paper")],
                                           baselines=("frequency",), ks=(5,))
    assert sum("methods" in str(w.message) for w in caught) == 1
    assert set(recall["method"]) == {"attention/soft_mask", "activation_masking", "frequency"}
    assert set(recall["k"]) == {5} and set(words["method"]) == {"attention/soft_mask", "activation_masking"}
    with _warnings.catch_warnings():
        _warnings.simplefilter("error")
        comparison.compare([("attention", "soft_mask")], baselines=(), ks=(5,))
    with pytest.raises(ValueError, match="unknown baselines"):
        comparison.compare(baselines=("oracle",))


def test_method_comparison_reuses_a_given_dissection(tiny_store, mapper, space):
    from lavise_nb.evaluate import MethodComparison, network_dissection

    comparison = MethodComparison(tiny_store, mapper, space, ExplainSettings(p=6, calibrated=False))
    methods, ks = [("attention", "soft_mask")], (5,)
    fresh, _ = comparison.compare(methods, baselines=("netdissect",), ks=ks)
    given, _ = comparison.compare(methods, baselines=("netdissect",), ks=ks,
                                  dissection=network_dissection(tiny_store, top_words=5))
    pd.testing.assert_frame_equal(fresh, given)
    assert fresh.loc[fresh["method"] == "netdissect", "recall"].notna().any()
    with pytest.raises(ValueError, match="top_words=5"):
        comparison.compare(methods, baselines=("netdissect",), ks=ks, dissection=network_dissection(tiny_store, top_words=1))
