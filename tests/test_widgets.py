"""Widgets driven without a browser: select, search and the static mode."""
import matplotlib

matplotlib.use("Agg")

import pandas as pd
import pytest
from IPython.core.interactiveshell import InteractiveShell
from IPython.utils.capture import capture_output

from lavise_nb.explain import FilterExplainer
from lavise_nb.mapper import ExplainerTrainer
from lavise_nb.widgets import filter_browser, lookup_widget, training_monitor
from tests.conftest import COLOUR_FILTERS

from tests.conftest import SEEN_SHAPES as SEEN
from lavise_nb.config import ExplainSettings, TrainingConfig


@pytest.fixture(scope="module")
def explainer(tiny_store, mapper, space):
    return FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(attention="soft_mask", p=6, s=3))


def _shown(obj):
    """What displaying ``obj`` in a notebook produces (MIME bundles)."""
    InteractiveShell.instance()
    with capture_output() as captured:
        obj._ipython_display_()
    return captured.outputs


def test_training_monitor_follows_the_callback(tiny_store, space):
    monitor = training_monitor(max_epochs=5, interactive=True, show_progress=False)
    mapper = ExplainerTrainer(tiny_store, space, TrainingConfig(seen=SEEN, margin=0.1, dropout=0.1, max_epochs=5), show_progress=False).fit(callback=monitor.callback)
    assert len(monitor.history) == len(mapper.history) == 5
    pd.testing.assert_frame_equal(monitor.history, mapper.history.drop(columns="best"))
    assert monitor.status().startswith("epoch 5/5")
    assert len(monitor.figure.axes) == 2 and len(monitor.figure.axes[0].get_lines()[0].get_xdata()) == 5
    assert monitor.widget.children[0].value == monitor.status()


def test_training_monitor_static_mode_shows_one_figure(tiny_store, space):
    monitor = training_monitor(interactive=False, show_progress=False)
    mapper = ExplainerTrainer(tiny_store, space, TrainingConfig(seen=SEEN, max_epochs=3), show_progress=False).fit(callback=monitor.callback)
    monitor.finish(mapper.history)
    outputs = _shown(monitor)
    assert sum("image/png" in o.data for o in outputs) == 1


def test_filter_browser_selects_and_searches(tiny_store, shapes, explainer):
    browser = filter_browser(tiny_store, shapes, explainer, n_images=3, show_progress=False)
    rows = browser.select(filter=0)
    expected = explainer.explain(filters=None)
    pd.testing.assert_frame_equal(rows, expected[expected["filter"] == 0].reset_index(drop=True))
    assert browser.filter == 0 and browser._slider.value == 0
    assert len(browser.figure.axes) == 3 + 1

    browser.select(filter=2)
    assert browser.result["filter"].eq(2).all() and "filter 2" in browser.figure.texts[0].get_text()

    matches = browser.search("red")
    assert matches.iloc[0]["filter"] == COLOUR_FILTERS["red"]
    assert browser.filter == COLOUR_FILTERS["red"]
    assert "filter <b>0</b>" in browser._hits.value
    with pytest.raises(ValueError):
        browser.select(filter=10_000)


def test_filter_browser_from_tables_and_static_mode(tiny_store, shapes, explainer):
    explanations, image_words = explainer.explain(), explainer.image_words()
    browser = filter_browser(tiny_store, shapes, explanations=explanations, image_words=image_words,
                             static_filters=2, interactive=False, show_progress=False)
    assert browser.filter == int(browser.summary["filter"].iloc[0])
    outputs = _shown(browser)
    assert sum("image/png" in o.data for o in outputs) == 2
    # without an explainer, the search has only the tables
    matches = browser.search("green")
    assert (matches["match"] == "explained by").all() and matches.iloc[0]["filter"] == COLOUR_FILTERS["green"]


def test_lookup_widget(explainer):
    ui = lookup_widget(explainer, query="red", k=3, interactive=False)
    pd.testing.assert_frame_equal(ui.result, explainer.lookup("red", k=3))
    assert ui.result.iloc[0]["filter"] == COLOUR_FILTERS["red"]
    ui.search("blue", k=2)
    pd.testing.assert_frame_equal(ui.result, explainer.lookup("blue", k=2))
    assert ui._k.value == 3 and ui._query.value == "red"  # search() does not move the controls
    outputs = _shown(ui)
    assert any("image/png" in o.data for o in outputs)
    ui.search("notaword_xyz")
    assert ui.result.empty and "has no vector for 'notaword_xyz'" in ui.message
    assert "missing=" not in ui.message  # words a notebook user can act on, not API advice


def test_calibration_compare_shows_both_rankings(tiny_store, mapper, space):
    from lavise_nb.widgets import calibration_compare
    raw = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, s=3, calibrated=False))
    calibrated = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(p=6, s=3, calibrated=0.5))
    ui = calibration_compare(raw, calibrated, filters=[0, 1, 2], interactive=False)
    result = ui.select(0)
    expected_raw = raw.explain([0])
    assert result["uncalibrated"].tolist()[:len(expected_raw)] == expected_raw["word"].tolist()
    assert result["calibrated"].dropna().tolist() == calibrated.explain([0])["word"].tolist()
    assert set(ui.table["filter"]) == {0, 1, 2}
    # a large gamma pushes seen concepts down, so calibrated lists hold at least as many non-seen words
    assert (ui.table["non_seen_words_gained"] >= 0).all()
    assert _shown(ui)
