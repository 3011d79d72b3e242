"""Dataset bias analysis: planted answers on ShapesWorld, a null split, exact statistics, clear errors."""
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import chi2_contingency, fisher_exact

from lavise_nb.bias import (CLASSIFIER_COLUMNS, COMPARE_COLUMNS, CONCEPT_COLUMNS, BiasWarning, GroupComparison)
from lavise_nb.config import BiasSettings
from lavise_nb.datasets import ShapesWorld
from lavise_nb.store import ActivationStore, BuildSettings
from tests.conftest import COLOUR_FILTERS

RED = COLOUR_FILTERS["red"]


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def world_store(tmp_path_factory, tiny_model):
    """A ShapesWorld store with a planted "group" column: group A holds most of the red images."""
    world = ShapesWorld(360, seed=1)
    has_red = np.array([any(s["colour"] == "red" for s in world.layout(i)["shapes"]) for i in range(len(world))])
    rng = np.random.default_rng(0)
    group = np.where(has_red, np.where(rng.random(len(world)) < 0.85, "A", "B"),
                     np.where(rng.random(len(world)) < 0.2, "A", "B"))
    world.records["group"] = group
    store = ActivationStore.build(tiny_model, "features.1", world, tmp_path_factory.mktemp("bias_stores"),
                                  BuildSettings(batch_size=64, num_workers=0), show_progress=False)
    return store, has_red


@pytest.fixture(scope="module")
def two_column_store(tmp_path_factory, tiny_model):
    """A ShapesWorld store grouped two ways: "group" (A holds most red images) and "texture" (the background)."""
    world = ShapesWorld(240, seed=2)
    layouts = [world.layout(i) for i in range(len(world))]
    has_red = np.array([any(s["colour"] == "red" for s in layout["shapes"]) for layout in layouts])
    rng = np.random.default_rng(1)
    world.records["group"] = np.where(has_red, np.where(rng.random(len(world)) < 0.85, "A", "B"),
                                      np.where(rng.random(len(world)) < 0.2, "A", "B"))
    world.records["texture"] = [layout["texture"] for layout in layouts]
    return ActivationStore.build(tiny_model, "features.1", world, tmp_path_factory.mktemp("regroup_stores"),
                                 BuildSettings(batch_size=64, num_workers=0), show_progress=False)


@pytest.fixture(scope="module")
def explanations():
    words = {RED: "red", COLOUR_FILTERS["green"]: "green", COLOUR_FILTERS["blue"]: "blue",
             COLOUR_FILTERS["yellow"]: "yellow"}
    rows = [dict(layer="features.1", filter=f, rank=1, word=w, votes=1.0, score=0.5, kind="seen", n_images=10,
                 method="attention", note="") for f, w in words.items()]
    rows += [dict(layer="features.1", filter=f, rank=2, word="circle", votes=0.5, score=0.4, kind="seen",
                  n_images=10, method="attention", note="") for f in words]
    return pd.DataFrame(rows)


class FakeStore:
    """The parts of an ActivationStore that GroupComparison reads, with hand-set maxima."""

    def __init__(self, maxima, labels, thresholds=None, valid=None, layer="conv", model="m"):
        maxima = np.asarray(maxima, dtype=np.float32)
        self.maxima = maxima
        n, c = maxima.shape
        self.activations = maxima[:, :, None, None]
        self.thresholds = np.zeros(c, np.float32) if thresholds is None else np.asarray(thresholds, np.float32)
        self.index = pd.DataFrame({"image": np.arange(n), "image_id": np.arange(n), "path": "", "group": labels})
        self.valid = np.ones(n, bool) if valid is None else np.asarray(valid)
        self.shape = (n, c, 1, 1)
        self.layer = layer
        self.manifest = {"key": {"model": model, "layer": layer}}


def _hand_store(k, n, extra_filter_zero=True):
    """Filter 0 fires in k[g] of n[g] images of each group g; filter 1 (optionally) never fires."""
    maxima, labels = [], []
    for g, (kg, ng) in enumerate(zip(k, n)):
        for i in range(ng):
            maxima.append([1.0 if i < kg else -1.0, -1.0])
            labels.append("ABC"[g])
    return FakeStore(maxima, labels)


# ----------------------------------------------------------------------------- planted answers


def test_planted_red_filter_is_the_top_significant_difference(world_store, explanations):
    store, _ = world_store
    comparison = GroupComparison(store, "group", explanations=explanations)
    table = comparison.compare()
    assert list(table.columns) == COMPARE_COLUMNS
    assert len(table) == 2 * store.shape[1]
    top = table[table["rank"] == 1].set_index("group")
    assert top["filter"].iloc[0] == RED
    assert bool(top["significant"].iloc[0]) and top["q_value"].iloc[0] < 1e-6
    assert top.loc["A", "share"] > top.loc["B", "share"] + 0.3
    assert top["over_in"].iloc[0] == "A" and top["top_word"].iloc[0] == "red"
    assert top["top_words"].iloc[0] == "red, circle"
    # shares, Wilson intervals and counts are consistent; NaN only with a reason
    assert np.allclose(table["share"], table["n_qualify"] / table["n_images"])
    assert ((table["ci_low"] <= table["share"]) & (table["share"] <= table["ci_high"])).all()
    assert not table[["share", "ci_low", "ci_high", "difference"]].isna().any().any()
    untested = table["p_value"].isna()
    assert (table.loc[untested, "reason"] != "").all()
    assert comparison.threshold_source == "target"


def test_concepts_view_names_the_planted_concept(world_store, explanations):
    store, _ = world_store
    concepts = GroupComparison(store, "group", explanations=explanations).concepts()
    assert list(concepts.columns) == CONCEPT_COLUMNS
    red = concepts[concepts["word"] == "red"].iloc[0]
    assert red["over_in"] == "A" and red["n_filters"] >= 1
    assert red["summary"].startswith("'red' over-represented in group A (1 filter")


def test_classifier_ranks_the_red_filter_and_beats_chance(world_store, explanations):
    store, _ = world_store
    comparison = GroupComparison(store, "group", explanations=explanations)
    table = comparison.classifier()
    assert list(table.columns) == CLASSIFIER_COLUMNS
    assert table.iloc[0]["filter"] == RED and table.iloc[0]["favours"] == "A"
    summary = comparison.classifier_summary
    assert summary["accuracy"] > summary["chance"] + 0.1
    assert table.attrs["n_test"] > 0
    # two groups: contributions sum to the standardised mean-logit gap, so they are positive on the whole
    assert table["contribution"].sum() > 0


def test_reference_thresholds_and_mismatched_reference(world_store, tiny_store):
    store, _ = world_store
    comparison = GroupComparison(store, "group", reference_store=tiny_store)
    assert comparison.threshold_source == "reference"
    assert np.allclose(comparison.thresholds, tiny_store.thresholds)
    assert comparison.compare().iloc[0]["filter"] == RED
    other = FakeStore(np.zeros((20, 8)), ["A"] * 10 + ["B"] * 10, layer="features.4")
    with pytest.raises(ValueError, match="same model and layer"):
        GroupComparison(store, "group", reference_store=other)
    with pytest.raises(ValueError, match="threshold_source='target'"):
        GroupComparison(store, "group", threshold_source="reference")


@pytest.mark.parametrize("values, message", [
    (dict(alpha=0), "alpha must be > 0"),
    (dict(alpha=1), "alpha must be > 0 and < 1"),
    (dict(min_group_size=0), "min_group_size must be >= 1"),
    (dict(correction="fdr"), "correction must be one of"),
    (dict(n_words=0), "n_words must be >= 1"),
    (dict(imbalance_warning=0.5), "imbalance_warning must be >= 1"),
])
def test_bias_settings_name_the_bad_value(values, message):
    with pytest.raises(ValueError, match=message):
        BiasSettings(**values)


def test_regroup_keeps_reference_explanations_and_settings(world_store, tiny_store, explanations):
    store, _ = world_store
    settings = BiasSettings(min_group_size=5, n_words=1)
    comparison = GroupComparison(store, "group", reference_store=tiny_store, explanations=explanations,
                                 settings=settings)
    assert BiasSettings(correction="none").correction is None
    halves = comparison.regroup(np.where(np.arange(store.shape[0]) % 2, "odd", "even"))
    assert halves.groups == ["even", "odd"] and halves.settings is settings
    assert halves.threshold_source == "reference" and np.allclose(halves.thresholds, tiny_store.thresholds)
    assert halves.filter_words[RED] == "red" and halves.reference is tiny_store
    pd.testing.assert_frame_equal(halves.regroup("group").compare(), comparison.compare())


# ----------------------------------------------------------------------------- null


def test_null_split_has_no_more_discoveries_than_the_rate_allows(tiny_store):
    n = tiny_store.shape[0]
    found = []
    for seed in range(8):
        labels = np.random.default_rng(seed).permutation(np.array(["A", "B"] * (n // 2)))
        table = GroupComparison(tiny_store, labels, settings=BiasSettings(alpha=0.05)).filters_table()
        found.append(int(table["significant"].sum()))
    assert np.mean(found) <= 1.0, found
    assert sum(found) <= 2, found


# ----------------------------------------------------------------------------- exact statistics


def test_fisher_p_value_matches_scipy_on_a_hand_case():
    store = _hand_store(k=[8, 2], n=[12, 15])
    table = GroupComparison(store, "group", settings=BiasSettings(min_group_size=5, correction=None)).compare()
    row = table[table["filter"] == 0].set_index("group")
    expected = fisher_exact([[8, 2], [4, 13]], alternative="two-sided")[1]
    assert row.loc["A", "p_value"] == pytest.approx(expected, rel=1e-12)
    assert row.loc["A", "q_value"] == pytest.approx(expected, rel=1e-12)  # no correction
    assert row.loc["A", "test"] == "fisher"
    assert row.loc["A", "difference"] == pytest.approx(8 / 12 - 2 / 15)
    assert row.loc["A", "ratio"] == pytest.approx((8 / 12) / (2 / 15))
    from statsmodels.stats.proportion import proportion_confint
    low, high = proportion_confint(8, 12, alpha=0.05, method="wilson")
    assert (row.loc["A", "ci_low"], row.loc["A", "ci_high"]) == pytest.approx((low, high))
    # a filter that never fires: shares 0, no NaN share/CI, untested with a reason, never significant
    never = table[table["filter"] == 1]
    assert (never["share"] == 0).all() and not never[["ci_low", "ci_high"]].isna().any().any()
    assert never["p_value"].isna().all() and (never["reason"].str.contains("no image qualifies")).all()
    assert not never["significant"].any()


def test_chi_square_for_three_groups_and_bh_correction():
    store = _hand_store(k=[9, 3, 5], n=[12, 14, 11])
    table = GroupComparison(store, "group", settings=BiasSettings(min_group_size=5)).compare()
    row = table[table["filter"] == 0].iloc[0]
    expected = chi2_contingency(np.array([[9, 3, 5], [3, 11, 6]]), correction=False)[1]
    assert row["test"] == "chi2" and row["p_value"] == pytest.approx(expected)
    assert row["difference"] == pytest.approx(9 / 12 - 3 / 14) and row["over_in"] == "A"
    # one tested filter: BH leaves its p-value as is
    assert row["q_value"] == pytest.approx(expected)


# ----------------------------------------------------------------------------- bad inputs


def test_bad_inputs_give_clear_errors_and_warnings(world_store):
    store, _ = world_store
    with pytest.raises(ValueError, match="no column 'sex'.*metadata columns are .*group"):
        GroupComparison(store, "sex")
    one = FakeStore(np.zeros((30, 2)), ["A"] * 30)
    with pytest.raises(ValueError, match="only 1 group.*at least two groups"):
        GroupComparison(one, "group")
    small = FakeStore(np.zeros((33, 2)), ["A"] * 30 + ["B"] * 3)
    with pytest.raises(ValueError, match=r"\{'B': 3\}.*min_group_size=10.*groups=\[\.\.\.\]"):
        GroupComparison(small, "group")
    with pytest.raises(ValueError, match="length 5 but the store has"):
        GroupComparison(store, ["A", "B", "A", "B", "A"])
    with pytest.raises(ValueError, match="do not occur"):
        GroupComparison(store, "group", groups=["A", "Z"])
    with pytest.raises(ValueError, match="threshold_source"):
        GroupComparison(store, "group", threshold_source="median")


def test_missing_values_are_dropped_and_reported():
    labels = ["A"] * 15 + [None] * 4 + ["B"] * 15 + [np.nan]
    store = FakeStore(np.zeros((35, 2)), labels)
    with pytest.warns(BiasWarning, match="5 of 35 images have no value in 'group'"):
        comparison = GroupComparison(store, "group")
    assert len(comparison.dropped) == 5 and set(comparison.dropped["reason"]) == {"missing group value"}
    assert comparison.sizes == {"A": 15, "B": 15}
    table = comparison.compare()
    assert (table["n_images"] == 15).all()


def test_unbalanced_groups_warn_and_stay_finite():
    maxima = np.full((230, 2), -1.0)
    maxima[:5, 0] = 1.0      # 5 of 10 in A fire
    maxima[10:30, 0] = 1.0   # 20 of 220 in B fire
    store = FakeStore(maxima, ["A"] * 10 + ["B"] * 220)
    with pytest.warns(BiasWarning, match="very different"):
        comparison = GroupComparison(store, "group")
    table = comparison.compare()
    fired = table[table["filter"] == 0]
    assert np.isfinite(fired[["share", "ci_low", "ci_high", "difference", "ratio", "p_value"]].to_numpy()).all()
    row = table[table["filter"] == 0].set_index("group")
    assert row.loc["A", "p_value"] == pytest.approx(fisher_exact([[5, 20], [5, 200]])[1])


def test_example_images_are_strongest_first(world_store):
    store, _ = world_store
    comparison = GroupComparison(store, "group")
    examples = comparison.example_images(RED, "A", k=4)
    assert len(examples) == 4 and examples["activation"].is_monotonic_decreasing
    assert examples["qualifies"].iloc[0]
    with pytest.raises(ValueError, match="unknown group"):
        comparison.example_images(RED, "Q")


# ----------------------------------------------------------------------------- notebook


@pytest.mark.notebook
@pytest.mark.real
def test_bias_notebook_runs_with_small_parameters(tmp_path):
    papermill = pytest.importorskip("papermill")
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "03_bias_analysis.ipynb"
    parameters = dict(n_images=120, n_per_group=40, output_dir=str(tmp_path), interactive=False,
                      show_progress=False, mapper_epochs=3, run_null=False, verify=True, probe_images=4, top_filters=3)
    if os.environ.get("LAVISE_NB_TUXPAINT"):
        parameters["tuxpaint_dir"] = os.environ["LAVISE_NB_TUXPAINT"]
    papermill.execute_notebook(str(notebook), str(tmp_path / "out.ipynb"), parameters=parameters,
                               kernel_name="python3", cwd=str(notebook.parent))
    bias = tmp_path / "bias"
    assert (bias / "filters.csv").is_file() and (bias / "volcano.png").is_file()
    filters = pd.read_csv(bias / "filters.csv")
    assert {"filter", "difference", "q_value", "top_words"} <= set(filters.columns)
    summary = json.loads((bias / "summary.json").read_text())
    assert summary["n_per_group"] == 40 and summary["timings_s"]["verify"] > 0
    from lavise_nb.scenes import background_table, stamp_table, usable_rows

    composable = set(usable_rows(stamp_table(), photos_only=True)["concept"]) | set(
        usable_rows(background_table(), photos_only=False)["concept"].dropna())
    named = filters.head(6)  # verified: named by a word probe scenes can test (a label at least), scored by its AUC
    assert named["top_word"].isin(composable).all() and named["word_score"].dropna().between(0, 1).all()
    assert not filters.iloc[6:]["top_word"].dropna().isin(composable).all()  # the rest keep their first words


# ----------------------------------------------------------------------------- figures and widget


def test_bias_figures_and_static_browser(world_store, explanations, tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lavise_nb.plots import bias_bars, bias_gallery, bias_volcano
    from lavise_nb.widgets import bias_browser

    store, _ = world_store
    comparison = GroupComparison(store, "group", explanations=explanations)
    table = comparison.compare()
    ax = bias_bars(table, top=4)
    assert "red" in ax.get_yticklabels()[0].get_text()
    bias_volcano(table).figure.savefig(tmp_path / "volcano.png")
    fig = bias_gallery(comparison, [RED, 1], k=2)  # ShapesWorld has no paths: placeholders, no crash
    assert len(fig.axes) == 2 * 2 * 2
    from lavise_nb.datasets import ShapesWorld
    fig = bias_gallery(comparison, RED, k=2, dataset=ShapesWorld(360, seed=1))
    fig.savefig(tmp_path / "gallery.png")
    plt.close("all")
    browser = bias_browser(store, "group", explanations=explanations, interactive=False, k=2)
    assert browser.filter == RED and browser.result is not None and browser.figure is not None
    browser.select(filter=1)
    assert browser.filter == 1
    with pytest.raises(ValueError, match="not part of this comparison"):
        browser.select(filter=99)
    live = bias_browser(store, "group", interactive=True, k=1)
    assert live.widget.children and live.result["filter"].iloc[0] == RED
    plt.close("all")


@pytest.mark.parametrize("entry", ["store", "comparison"])
def test_browser_regrouping_keeps_reference_thresholds_and_words(entry, two_column_store, tiny_store, explanations):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lavise_nb.widgets import bias_browser

    store, settings = two_column_store, BiasSettings(n_words=1)
    options = dict(reference_store=tiny_store, explanations=explanations, settings=settings)
    if entry == "store":
        browser = bias_browser(store, "group", interactive=True, k=1, **options)
    else:
        browser = bias_browser(GroupComparison(store, "group", **options), interactive=True, k=1)
    assert browser.columns == ["group", "texture"] and browser.filter == RED
    first, first_labels = browser.result.copy(), list(browser._filter.options)
    named = {int(f): w for f, w in explanations[explanations["rank"] == 1][["filter", "word"]].to_numpy()}
    browser._column.value = "texture"  # the "group by" control
    away = browser.comparison
    assert browser.group_column == "texture" and away.groups == sorted(set(store.index["texture"]))
    assert away.threshold_source == "reference" and np.allclose(away.thresholds, tiny_store.thresholds)
    assert away.settings is settings and away.explanations is explanations
    labels = dict((f, label) for label, f in browser._filter.options)
    assert all(named[f] in label and "(no words)" not in label for f, label in labels.items() if f in named)
    assert (browser.result.loc[browser.result["filter"] == RED, "top_words"] == "red").all()
    browser._column.value = "group"
    pd.testing.assert_frame_equal(browser.result, first)  # same counts, shares, tests and words per filter
    red = browser.result[browser.result["filter"] == RED]
    assert list(red["n_qualify"]) == list(first.loc[first["filter"] == RED, "n_qualify"])
    assert (red["top_words"] == "red").all() and (red["threshold"] == tiny_store.thresholds[RED]).all()
    assert list(browser._filter.options) == first_labels and browser.filter == RED
    assert np.allclose(browser.comparison.thresholds, tiny_store.thresholds)
    plt.close("all")


def test_browser_of_a_comparison_regroups_like_it(two_column_store, tiny_store, explanations):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from lavise_nb.widgets import bias_browser

    comparison = GroupComparison(two_column_store, "group", reference_store=tiny_store, explanations=explanations)
    browser = bias_browser(comparison, interactive=False, k=1)
    assert browser.comparison is comparison and browser.group_column == "group"
    browser.select(group_column="texture")
    assert np.allclose(browser.comparison.thresholds, tiny_store.thresholds)
    assert browser.comparison.explanations is explanations and browser.comparison.settings is comparison.settings
    browser.select(group_column="image_id")  # one image per group: shown as a message, not raised
    assert browser.comparison is None and "min_group_size" in browser.message
    browser.select(group_column="group")
    assert browser.comparison is comparison and browser.filter == RED
    with pytest.raises(ValueError, match="reference_store"):
        bias_browser(comparison, reference_store=tiny_store)
    plt.close("all")


def test_planted_recovery_matches_words_to_the_planted_group(world_store, explanations):
    from lavise_nb.planted import planted_recovery
    from tests.helpers import shapes_space

    store, _ = world_store
    comparison = GroupComparison(store, "group", explanations=explanations)
    truth = {"A": {"concepts": ["red"]}, "B": {"concepts": ["blue"]}}
    recovery = planted_recovery(comparison, truth, top=3)
    assert recovery.iloc[0]["filter"] == RED and recovery.iloc[0]["hit"] and recovery.iloc[0]["matched"] == "red"
    near = planted_recovery(comparison, {"A": {"concepts": ["purple"]}, "B": {"concepts": ["dog"]}},
                            space=shapes_space(), top=1, min_similarity=0.5)
    assert near.iloc[0]["matched"] == "~purple"
    chance = planted_recovery(comparison, truth, top=1, pool=["red", "blue", "green", "yellow"])["chance"].iloc[0]
    assert chance == pytest.approx(1 - 3 / 6)  # 2 words drawn from 4, one of them planted: 1 - C(3,2)/C(4,2)


def test_wilson_intervals_always_hold_the_share():
    from lavise_nb.bias import wilson_interval

    k, n = np.array([0, 3, 12, 0]), np.array([12, 12, 12, 7])
    low, high = wilson_interval(k, n, 0.05)
    share = k / n
    assert (low <= share).all() and (share <= high).all() and (low >= 0).all() and (high <= 1).all()
    assert high[0] > 0 and low[2] < 1  # an empty or full group still has an interval


def test_filters_are_named_by_their_best_supported_word_with_its_score(tiny_store):
    from lavise_nb.bias import GroupComparison

    explanations = pd.DataFrame({"filter": [0, 0, 1], "rank": [1, 2, 1], "word": ["circle", "red", "dots"],
                                 "support": [0.5, 0.3, 0.2], "faithfulness": [0.6, 0.95, np.nan]})
    groups = np.where(np.arange(tiny_store.shape[0]) % 2, "A", "B")
    comparison = GroupComparison(tiny_store, groups, explanations=explanations)
    table = comparison.filters_table().set_index("filter")
    assert table.loc[0, "top_word"] == "red" and table.loc[0, "word_score"] == 0.95  # the faithful one
    assert table.loc[1, "top_word"] == "dots" and table.loc[1, "word_score"] == 0.2  # no score: its support
    assert table.loc[0, "top_words"] == "circle, red"
    assert np.isnan(table.loc[2, "word_score"]) and table.loc[2, "top_word"] == ""


def test_pooled_features_reads_only_the_rows_and_columns_asked_for(tiny_store):
    from lavise_nb.bias import pooled_features

    maps = np.asarray(tiny_store.activations, dtype=np.float32)
    full = maps.reshape(maps.shape[0], maps.shape[1], -1).mean(axis=2)
    assert np.allclose(pooled_features(tiny_store), full)
    images, filters = [9, 2, 5, 2, 140], [3, 0]
    assert np.allclose(pooled_features(tiny_store, block=2, images=images, filters=filters),
                       full[images][:, filters])


def test_a_verified_word_names_its_filter_over_the_first_and_the_most_faithful(tiny_store):
    from lavise_nb.bias import GroupComparison

    explanations = pd.DataFrame({"filter": [0, 0, 1], "rank": [1, 2, 1], "word": ["circle", "red", "dots"],
                                 "support": [0.5, 0.3, 0.2], "faithfulness": [0.6, 0.95, np.nan],
                                 "verified_word": ["green", "green", np.nan],
                                 "verified_faithfulness": [0.8, 0.8, np.nan]})
    groups = np.where(np.arange(tiny_store.shape[0]) % 2, "A", "B")
    table = GroupComparison(tiny_store, groups, explanations=explanations).filters_table().set_index("filter")
    assert table.loc[0, "top_word"] == "green" and table.loc[0, "word_score"] == 0.8
    assert table.loc[1, "top_word"] == "dots" and table.loc[1, "word_score"] == 0.2  # none verified: as before
    plain = GroupComparison(tiny_store, groups, explanations=explanations.drop(columns=["verified_word"]))
    before = plain.compare()
    assert plain.filters_table().set_index("filter").loc[0, "top_word"] == "red"
    renamed = plain.rename(explanations).filters_table().set_index("filter")  # names change, the test does not
    assert renamed.loc[0, "top_word"] == "green" and renamed.loc[0, "word_score"] == 0.8
    assert plain.result.drop(columns=["top_word", "word_score"]).equals(before.drop(columns=["top_word", "word_score"]))
