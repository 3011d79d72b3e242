import numpy as np
import pytest

from lavise_nb.calibration import GammaCalibration, harmonic_mean
from lavise_nb.mapper import ExplainerTrainer
from tests.helpers import shapes_space

SEEN = ["red", "green", "blue", "yellow", "circle", "square", "stripes", "dots", "plain"]


@pytest.fixture(scope="module")
def mapper(tiny_store):
    return ExplainerTrainer(tiny_store, shapes_space(), seen=SEEN, margin=0.1, dropout=0.1, max_epochs=15,
                            show_progress=False).fit()


def test_harmonic_mean():
    assert np.allclose(harmonic_mean([0.5, 0.0, 1.0], [0.5, 0.0, 0.2]), [0.5, 0.0, 2 * 0.2 / 1.2])


def test_inner_split_uses_seen_concepts_only(tiny_store, mapper):
    calibration = GammaCalibration(tiny_store, shapes_space(), mapper)
    inner, held = calibration.split()
    assert set(inner) | set(held) == set(SEEN) and not set(inner) & set(held)


@pytest.mark.parametrize("level", ["mask", "filter"])
def test_gamma_ignores_the_real_unseen_concepts(tiny_store, mapper, level, monkeypatch):
    space = shapes_space()
    gammas = np.round(np.arange(0, 0.31, 0.05), 3)
    table = GammaCalibration(tiny_store, space, mapper, level=level, gammas=gammas, p=6).table()
    assert list(table.columns) == ["gamma", "seen", "unseen", "H", "level", "k"]
    assert table["H"].between(0, 1).all()
    unseen = sorted(mapper.unseen)
    permuted = dict(zip(unseen, unseen[1:] + unseen[:1]))
    objects = tiny_store.objects.copy()
    objects["concept"] = objects["concept"].map(lambda c: permuted.get(c, c))
    monkeypatch.setattr(tiny_store, "objects", objects)
    again = GammaCalibration(tiny_store, space, mapper, level=level, gammas=gammas, p=6).table()
    assert np.allclose(table[["seen", "unseen", "H"]].to_numpy(), again[["seen", "unseen", "H"]].to_numpy())


def test_fit_sets_gamma_from_best_h(tiny_store, mapper):
    fitted = GammaCalibration(tiny_store, shapes_space(), mapper, level="mask", gammas=[0.0, 0.1, 0.2]).fit()
    assert fitted.gamma == fitted.gamma_table.loc[fitted.gamma_table["H"].idxmax(), "gamma"]
