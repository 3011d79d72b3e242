"""Figures drawn from a tiny ShapesWorld store: values, not pixels."""
import matplotlib

matplotlib.use("Agg")  # tests only; the package never selects a backend

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

from lavise_nb.explain import FilterExplainer
from lavise_nb.plots import KIND_STYLE, filter_card, filter_summary, lookup_bars, recall_bars, training_curves
from tests.conftest import COLOUR_FILTERS
from lavise_nb.config import ExplainSettings



@pytest.fixture(scope="module")
def explainer(tiny_store, mapper, space):
    return FilterExplainer(tiny_store, mapper, space, ["dog", "car", "purple"], ExplainSettings(attention="soft_mask", p=6, s=3, top_words=6))


@pytest.fixture(scope="module")
def tables(explainer):
    return explainer.explain(), explainer.image_words()


def test_filter_card_draws_top_images_with_their_words(tiny_store, shapes, tables):
    explanations, image_words = tables
    fig = filter_card(tiny_store, shapes, explanations, image_words, COLOUR_FILTERS["red"], n_images=4, n_words=2,
                      fig=Figure())
    images, words_ax = fig.axes[:4], fig.axes[-1]
    assert len(fig.axes) == 5
    top = tiny_store.top_indices(4, [0])[0]
    for ax, image in zip(images, top):
        assert f"image {image}" in ax.get_title()
        assert len(ax.get_images()) == 2  # the picture and the heat map inside the region
        expected = image_words[(image_words["filter"] == 0) & (image_words["image"] == image)].nsmallest(2, "rank")
        assert [t.get_text() for t in ax.texts] == list(expected["word"])
    ranked = explanations[explanations["filter"] == 0].sort_values("rank")
    labels = [t.get_text() for t in words_ax.get_yticklabels()]
    assert labels == [f"{r}. {w}" for r, w in zip(ranked["rank"], ranked["word"])]
    assert "red" in list(ranked["word"])[:3]
    widths = [p.get_width() for p in words_ax.patches]
    assert np.allclose(widths, ranked["votes"])
    notes = [t.get_text() for t in words_ax.texts]
    assert [f"lift {x:.1f}" in n and f"support {s:.0%}" in n for n, x, s in
            zip(notes, ranked["lift"], ranked["support"])] == [True] * len(ranked)
    # colours follow the word kinds; the legend names them
    colours = [matplotlib.colors.to_hex(p.get_facecolor()[:3]) for p in words_ax.patches]
    assert colours == [KIND_STYLE[k]["color"] for k in ranked["kind"]]
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert KIND_STYLE["seen"]["label"] in legend


def test_filter_card_states_the_filters_coherence_against_its_null(tiny_store, shapes, tables):
    explanations, image_words = tables
    f = COLOUR_FILTERS["red"]
    row = explanations[explanations["filter"] == f].iloc[0]
    fig = filter_card(tiny_store, shapes, explanations, image_words, f, n_images=2, fig=Figure())
    line = [t.get_text() for t in fig.texts if "coheren" in t.get_text()]
    assert len(line) == 1 and f"{row['coherence']:.2f}" in line[0] and f"{row['null_share']:.0%}" in line[0]
    assert line[0].startswith("coherent" if row["null_share"] <= 0.05 else "no more coherent")
    flipped = explanations.assign(null_share=np.where(explanations["filter"] == f, 0.5, explanations["null_share"]))
    fig = filter_card(tiny_store, shapes, flipped, image_words, f, n_images=2, fig=Figure())
    assert any(t.get_text().startswith("no more coherent than random directions") and "50%" in t.get_text()
               for t in fig.texts)


def test_filter_card_shows_the_dissection_check_and_whether_it_agrees(tiny_store, shapes, tables):
    from lavise_nb.evaluate import network_dissection
    from lavise_nb.faithfulness import attach_dissection

    explanations, image_words = tables
    f = COLOUR_FILTERS["red"]
    checks = network_dissection(tiny_store, top_words=1)
    row = checks[(checks["filter"] == f) & (checks["rank"] == 1)].iloc[0]
    for first, ending in ((row["word"], "the first word agrees"), ("dog", "not the first word")):
        table = explanations.copy()
        table.loc[(table["filter"] == f) & (table["rank"] == 1), "word"] = first
        table = attach_dissection(table, checks)
        fig = filter_card(tiny_store, shapes, table, image_words, f, n_images=2, fig=Figure())
        line = [t.get_text() for t in fig.texts if "Network Dissection" in t.get_text()]
        assert len(line) == 1 and f": {row['word']}, IoU {row['iou']:.2f}" in line[0] and line[0].endswith(ending)
    fig = filter_card(tiny_store, shapes, explanations, image_words, f, n_images=2, fig=Figure())
    assert not any("Network Dissection" in t.get_text() for t in fig.texts)



def test_filter_card_shows_the_verified_word_and_whether_it_is_the_first(tiny_store, shapes, tables):
    explanations, image_words = tables
    f = COLOUR_FILTERS["red"]
    first = explanations[(explanations["filter"] == f) & (explanations["rank"] == 1)]["word"].iloc[0]
    for word, source, ending, colour in ((first, "explainer", "; the first word", "#2e7d32"),
                                         ("dog", "dissection", "; not the first word", "#b35900")):
        table = explanations.assign(verified_word=word, verified_from=source, verified_selection=0.9,
                                    verified_faithfulness=0.87)
        fig = filter_card(tiny_store, shapes, table, image_words, f, n_images=2, fig=Figure())
        line = [t for t in fig.texts if t.get_text().startswith("best supported on probe scenes")]
        assert len(line) == 1 and f": {word}, faithfulness 0.87 on other scenes" in line[0].get_text()
        assert line[0].get_text().endswith(ending) and matplotlib.colors.to_hex(line[0].get_color()) == colour
        assert ("(of the label)" in line[0].get_text()) == (source == "dissection")
    fig = filter_card(tiny_store, shapes, explanations, image_words, f, n_images=2, fig=Figure())
    assert not any(t.get_text().startswith("best supported") for t in fig.texts)


def test_unseen_and_zero_shot_words_are_marked(tiny_store, shapes, tables):
    explanations, image_words = tables
    fig = filter_card(tiny_store, shapes, explanations, image_words, 5, n_images=3, top_words=20, fig=Figure())
    kinds = explanations[explanations["filter"] == 5].sort_values("rank")["kind"]
    ticks = fig.axes[-1].get_yticklabels()
    for tick, kind in zip(ticks, kinds):
        assert matplotlib.colors.to_hex(tick.get_color()) == KIND_STYLE[kind]["color"]
        assert tick.get_fontstyle() == KIND_STYLE[kind]["style"]
    assert KIND_STYLE["unseen"]["color"] == "#d62728"  # red, as in the paper


def test_filter_card_explains_a_silent_filter(tiny_store, shapes, tables):
    explanations, image_words = tables
    silent = pd.DataFrame([dict(layer=tiny_store.layer, filter=3, rank=0, word=None, votes=0.0, score=np.nan,
                                kind=None, n_images=0, method="attention", note="nothing fires")])
    fig = filter_card(tiny_store, shapes, silent, image_words.iloc[0:0], 3, n_images=2, fig=Figure())
    assert any("nothing fires" in t.get_text() for t in fig.axes[-1].texts)


def test_filter_summary_ranks_agreement(tables):
    explanations, image_words = tables
    summary = filter_summary(explanations, image_words)
    assert set(summary["filter"]) == set(explanations.dropna(subset=["word"])["filter"])
    assert summary["agreement"].between(0, 1 + 1e-6).all()
    assert summary["agreement"].is_monotonic_decreasing
    red = summary.set_index("filter").loc[0]
    first = explanations[(explanations["filter"] == 0)].sort_values("rank")
    assert red["word"] == first["word"].iloc[0] and "red" in red["words"].split(", ")
    distinct = filter_summary(explanations, image_words, distinct=True)
    assert distinct["word"].is_unique


def test_training_curves(mapper):
    fig = training_curves(mapper.history, fig=Figure())
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train", "validation"]
    assert np.allclose(loss_ax.get_lines()[0].get_ydata(), mapper.history["train_loss"])
    assert len(acc_ax.get_lines()) == 4 + 1  # four accuracies and the best-epoch marker


def test_recall_bars_puts_baselines_last():
    rows = []
    for method, base in [("attention/paper", 0.5), ("frequency", 0.2), ("netdissect", 0.4), ("original", 0.3)]:
        for j, subset in enumerate(["all", "seen", "unseen"]):
            rows.append(dict(model="m", layer="l", method=method, words_from="filter", ground="objects",
                             subset=subset, k=20, recall=base + 0.1 * j, pairs=10))
            rows.append(dict(model="m", layer="l", method=method, words_from="filter", ground="objects",
                             subset=subset, k=5, recall=0.0, pairs=10))
    ax = recall_bars(pd.DataFrame(rows), k=20, ax=Figure().subplots())
    assert [t.get_text() for t in ax.get_xticklabels()] == ["attention/\npaper", "original", "frequency",
                                                            "netdissect"]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 12
    assert np.allclose(heights[:4], [0.5, 0.3, 0.2, 0.4])  # the "all" bars, in axis order
    assert [p.get_hatch() for p in ax.patches[:4]] == [None, None, "//", "//"]


def test_lookup_bars(explainer):
    table = explainer.lookup("red", k=3)
    ax = lookup_bars(table, ax=Figure().subplots())
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"filter {f}" for f in table["filter"]]
    assert ax.get_yticklabels()[0].get_text() == "filter 0"
    assert np.allclose(sorted(p.get_width() for p in ax.patches), sorted(table["score"]))
