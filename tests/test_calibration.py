import numpy as np
import pytest

from lavise_nb.calibration import GammaCalibration, harmonic_mean
from lavise_nb.mapper import ExplainerTrainer
from tests.helpers import shapes_space
from lavise_nb.config import CalibrationSettings, ExplainSettings, TrainingConfig

SEEN = ["red", "green", "blue", "yellow", "circle", "square", "stripes", "dots", "plain"]


@pytest.fixture(scope="module")
def mapper(tiny_store):
    config = TrainingConfig(seen=SEEN, margin=0.1, dropout=0.1, max_epochs=15)
    return ExplainerTrainer(tiny_store, shapes_space(), config, show_progress=False).fit()


def test_harmonic_mean():
    assert np.allclose(harmonic_mean([0.5, 0.0, 1.0], [0.5, 0.0, 0.2]), [0.5, 0.0, 2 * 0.2 / 1.2])


def test_inner_split_uses_seen_concepts_only(tiny_store, mapper):
    calibration = GammaCalibration(tiny_store, mapper, shapes_space())
    inner, held = calibration.split()
    assert set(inner) | set(held) == set(SEEN) and not set(inner) & set(held)


@pytest.mark.parametrize("level", ["mask", "filter"])
def test_gamma_ignores_the_real_unseen_concepts(tiny_store, mapper, level, monkeypatch):
    space = shapes_space()
    gammas = np.round(np.arange(0, 0.31, 0.05), 3)
    table = GammaCalibration(tiny_store, mapper, space, ExplainSettings(p=6),
                             calibration=CalibrationSettings(level=level, gammas=gammas)).table()
    assert list(table.columns) == ["gamma", "words", "seen", "unseen", "H", "level", "k"]
    assert set(table["words"]) == ({"mask"} if level == "mask" else {"image", "filter"})
    assert len(table) == len(gammas) * table["words"].nunique()
    assert table["H"].between(0, 1).all()
    unseen = sorted(mapper.unseen)
    permuted = dict(zip(unseen, unseen[1:] + unseen[:1]))
    objects = tiny_store.objects.copy()
    objects["concept"] = objects["concept"].map(lambda c: permuted.get(c, c))
    monkeypatch.setattr(tiny_store, "objects", objects)
    again = GammaCalibration(tiny_store, mapper, space, ExplainSettings(p=6),
                             calibration=CalibrationSettings(level=level, gammas=gammas)).table()
    assert np.allclose(table[["seen", "unseen", "H"]].to_numpy(), again[["seen", "unseen", "H"]].to_numpy())


def test_fit_returns_the_best_h_and_leaves_the_mapper_alone(tiny_store, mapper):
    record = GammaCalibration(tiny_store, mapper, shapes_space(),
                              calibration=CalibrationSettings(level="mask", gammas=[0.0, 0.1, 0.2])).fit()
    assert record.gamma == record.table.loc[record.table["H"].idxmax(), "gamma"]
    assert record.filter_gamma is None and record.level == "mask" and record.layer == tiny_store.layer
    assert record.settings is None  # a mask-level gamma does not depend on the explanation settings
    assert mapper.calibration is None
    attached = mapper.calibrated(record)
    assert attached.calibration is record and attached.head is mapper.head and mapper.calibration is None


def test_filter_level_tunes_image_and_filter_words_apart(tiny_store, mapper):
    settings = ExplainSettings(p=6)
    record = GammaCalibration(tiny_store, mapper, shapes_space(), settings,
                              calibration=CalibrationSettings(level="filter", gammas=[0.0, 0.1, 0.2, 0.4])).fit()
    best = record.table.loc[record.table.groupby("words")["H"].idxmax()].set_index("words")["gamma"]
    assert (record.gamma, record.filter_gamma) == (best["image"], best["filter"])
    assert record.settings == settings.scoring() and record.vocabulary == "concepts"
    assert mapper.calibration is None


def test_filter_level_curves_equal_recall_of_the_explainers_words(tiny_store, mapper):
    from lavise_nb.evaluate import RecallEvaluator, recall
    from lavise_nb.explain import FilterExplainer

    space = shapes_space()
    calibration = GammaCalibration(tiny_store, mapper, space, ExplainSettings(p=6, s=3),
                                   calibration=CalibrationSettings(level="filter", gammas=[0.0, 0.2], k=5))
    inner_mapper = calibration.inner_mapper()
    table = calibration.table(inner_mapper).set_index(["words", "gamma"])
    inner, held = calibration.split()
    for gamma in (0.0, 0.2):
        explainer = FilterExplainer(tiny_store, inner_mapper, space, "concepts",
                                    ExplainSettings(p=6, s=3, top_words=5, image_k=5, calibrated=gamma))
        truth = RecallEvaluator(tiny_store, inner, held, stuff=tiny_store.stuff).truth(explainer.pairs())
        truth = truth[~truth["concept"].isin(tiny_store.stuff)]
        for words, table_words, by in (("image", explainer.image_words(), ("filter", "image")),
                                       ("filter", explainer.explain(), ("filter",))):
            for column, names in (("seen", inner), ("unseen", held)):
                expected = recall(truth[truth["concept"].isin(names)], table_words, (5,), by)["recall"].iloc[0]
                assert table.loc[(words, gamma), column] == pytest.approx(np.nan_to_num(expected))


def test_inner_epochs_caps_the_inner_head(tiny_store, mapper):
    capped = GammaCalibration(tiny_store, mapper, shapes_space(), calibration=CalibrationSettings(inner_epochs=2))
    assert len(capped.inner_mapper().history) == 2
    assert len(GammaCalibration(tiny_store, mapper, shapes_space()).inner_mapper().history) > 2
    with pytest.raises(ValueError, match="inner_epochs"):
        CalibrationSettings(inner_epochs=0)
