"""Shared fixtures: ShapesWorld and a tiny CNN whose filter 0 is planted to fire on red; notebook 01 run once."""
from pathlib import Path

import pytest
import torch
from torch import nn

from lavise_nb.datasets import ShapesWorld
from lavise_nb.probe import wrap_model
from lavise_nb.store import ActivationStore, BuildSettings
from lavise_nb.config import TrainingConfig

RED_FILTER = 0
COLOUR_FILTERS = {"red": 0, "green": 1, "blue": 2, "yellow": 3}


def planted_net(seed: int = 0) -> nn.Module:
    """Conv net whose 1x1 conv "features.0" has planted colour detectors (COLOUR_FILTERS), others random."""
    torch.manual_seed(seed)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU(), nn.AvgPool2d(4),
                                             nn.Conv2d(8, 12, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2)))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flatten", nn.Flatten())
    net.add_module("fc", nn.Linear(12, 4))
    with torch.no_grad():
        conv = net.features[0]
        # normalised red (1, 0, 0) is (2, -2, -2) under ShapesWorld's mean 0.5 / std 0.25
        planted = {"red": ((1, -1, -1), -3), "green": ((-1, 1, -1), -3), "blue": ((-1, -1, 1), -3),
                   "yellow": ((1, 1, -1), -5)}
        for colour, (weight, bias) in planted.items():
            conv.weight[COLOUR_FILTERS[colour]] = torch.tensor(weight, dtype=torch.float32).view(3, 1, 1)
            conv.bias[COLOUR_FILTERS[colour]] = bias
    return net


@pytest.fixture(scope="session")
def shapes():
    return ShapesWorld(160, seed=0)


@pytest.fixture(scope="session")
def tiny_model(shapes):
    return wrap_model(planted_net(), shapes.preprocess, "planted")


@pytest.fixture(scope="session")
def tiny_store(tmp_path_factory, tiny_model, shapes):
    root = tmp_path_factory.mktemp("stores")
    return ActivationStore.build(tiny_model, "features.1", shapes, root, BuildSettings(batch_size=32, num_workers=0),
                                 show_progress=False)


SEEN_SHAPES = ["red", "green", "blue", "yellow", "circle", "square", "stripes", "dots", "plain"]


@pytest.fixture(scope="session")
def space():
    """GloVe vectors of ShapesWorld's words plus distractors."""
    from tests.helpers import shapes_space
    return shapes_space()


@pytest.fixture(scope="session")
def mapper(tiny_store, space):
    """An explainer head trained on the tiny store (seen: SEEN_SHAPES)."""
    from lavise_nb.mapper import ExplainerTrainer
    return ExplainerTrainer(tiny_store, space, TrainingConfig(seen=SEEN_SHAPES, margin=0.1, dropout=0.1, max_epochs=40), show_progress=False).fit()


NOTEBOOKS_DIR = Path(__file__).resolve().parents[1] / "notebooks"
SMALL_NOTEBOOK = dict(n_images=200, seed=0, interactive=False, show_progress=False)


@pytest.fixture(scope="session")
def trained_notebook(tmp_path_factory):
    """Notebook 01 run once with papermill, small parameters: (output_dir, executed notebook).

    Its ``output_dir/train/`` holds the explainer head that notebook 02 reads; store and caches are the
    defaults (``store_root=None``, ``$LAVISE_NB_CACHE``), as for the other notebook tests.
    """
    papermill = pytest.importorskip("papermill")
    out = tmp_path_factory.mktemp("demo")
    executed = out / "notebooks" / "01_train_explainer.ipynb"
    executed.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(str(NOTEBOOKS_DIR / executed.name), str(executed), kernel_name="python3",
                               cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                               parameters=dict(output_dir=str(out), max_epochs=2, p=5, **SMALL_NOTEBOOK))
    return out, executed
