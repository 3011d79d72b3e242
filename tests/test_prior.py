"""ClassPrior: the target model's own predictions for a filter's region, as a word prior."""
import copy
import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from lavise_nb.calibration import GammaCalibration
from lavise_nb.explain import FilterExplainer
from lavise_nb.mapper import Mapper
from lavise_nb.prior import ClassPrior
from lavise_nb.probe import wrap_model
from tests.conftest import COLOUR_FILTERS, planted_net
from lavise_nb.config import CalibrationSettings, CropSettings, ExplainSettings

COLOURS = list(COLOUR_FILTERS)


class ColourClassifier(nn.Module):
    """Logit of colour c = 20 x the share of pixels the planted detector of c fires on."""

    def __init__(self):
        super().__init__()
        self.detect = planted_net().features[0]
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return 20 * (self.detect(x)[:, :len(COLOURS)] > 0).float().mean((2, 3))


@pytest.fixture(scope="module")
def classifier(shapes):
    return wrap_model(ColourClassifier(), shapes.preprocess, "colours")


def red_pairs(explainer):
    pairs = explainer.pairs()
    return pairs[pairs["filter"] == COLOUR_FILTERS["red"]].reset_index(drop=True)


def test_region_prior_names_the_colour_the_filter_fires_on(tiny_store, mapper, space, shapes, classifier):
    pairs = red_pairs(FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False)))
    region = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", top=2, show_progress=False)
    whole = ClassPrior(classifier, shapes, space, class_names=COLOURS, top=2, source="image",
                       show_progress=False)
    top_region = region.predictions(tiny_store, pairs).query("rank == 1")
    top_image = whole.predictions(tiny_store, pairs).query("rank == 1")
    assert list(top_region.columns) == ["filter", "image", "rank", "class", "label", "probability"]
    assert (top_region[["filter", "image"]].to_numpy() == pairs[["filter", "image"]].to_numpy()).all()
    region_hits, image_hits = (top_region["label"] == "red").mean(), (top_image["label"] == "red").mean()
    assert region_hits >= 0.95 and region_hits > image_hits + 0.1  # other shapes in the image mislead

    vectors = region.vectors(tiny_store, pairs)
    assert vectors.shape == (len(pairs), space.dim)
    assert torch.allclose(vectors.norm(dim=1), torch.ones(len(pairs)), atol=1e-5)
    colour_vectors = torch.from_numpy(np.asarray(space.embed(COLOURS).vectors, dtype=np.float32))
    nearest = (vectors @ colour_vectors.T).argmax(1)
    assert (nearest == COLOURS.index("red")).float().mean() >= 0.9


def test_predictions_are_cached_and_resume(tiny_store, mapper, space, shapes, classifier, tmp_path):
    pairs = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False)).pairs()
    store = copy.copy(tiny_store)
    store.path = tmp_path / "store"  # a fresh cache beside a copy of the store
    store.path.mkdir()
    prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", crop=CropSettings(batch_size=8),
                       show_progress=False)
    first = pairs.iloc[:20]
    before = classifier.module.calls
    part = prior.predictions(store, first)
    assert classifier.module.calls - before == 3  # 20 pairs in batches of 8
    full = prior.predictions(store, pairs)  # only the pairs not cached yet are classified
    assert classifier.module.calls - before == 3 + int(np.ceil((len(pairs) - 20) / 8))
    assert part.equals(full.iloc[:len(part)].reset_index(drop=True))
    calls = classifier.module.calls
    again = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", show_progress=False).predictions(store, pairs)
    assert classifier.module.calls == calls and again.equals(full)
    assert not list((store.path / "priors").glob("*.partial"))


def test_a_strong_prior_moves_the_filters_words(tiny_store, mapper, space, shapes, classifier):
    scrambled = copy.deepcopy(mapper)  # a head that knows nothing: its words alone are wrong
    torch.manual_seed(0)
    for parameter in scrambled.head.parameters():
        parameter.data.normal_()
    filters = [COLOUR_FILTERS[c] for c in ("red", "green", "blue")]

    def firsts(weight):
        prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", weight=weight, show_progress=False)
        explained = FilterExplainer(tiny_store, scrambled, space, "concepts", ExplainSettings(calibrated=False),
                                    prior=prior).explain(filters)
        return explained[explained["rank"] == 1]["word"].tolist()

    assert firsts(0.0) != ["red", "green", "blue"]
    assert firsts(10.0) == ["red", "green", "blue"]


def test_calibration_records_its_prior_and_explainers_check_it(tiny_store, mapper, space, shapes, classifier,
                                                               tmp_path):
    prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", show_progress=False)
    grid = CalibrationSettings(gammas=[0.0, 0.1, 0.2])
    settings = ExplainSettings(p=6)
    record = GammaCalibration(tiny_store, mapper, space, settings, calibration=grid, prior=prior).fit()
    assert record.prior == prior.settings and mapper.calibration is None
    tuned = mapper.calibrated(record)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        FilterExplainer(tiny_store, tuned, space, "concepts", settings, prior=prior)
    with pytest.warns(UserWarning, match="class prior none"):
        FilterExplainer(tiny_store, tuned, space, "concepts", settings)
    with pytest.warns(UserWarning, match=r"p=25 \(tuned with 6\)"):
        FilterExplainer(tiny_store, tuned, space, "concepts", prior=prior)
    with pytest.warns(UserWarning, match="vocabulary 'custom'"):
        FilterExplainer(tiny_store, tuned, space, ["dog", "car"], settings, prior=prior)
    with pytest.warns(UserWarning, match=r"ranking='lift' \(tuned with 'votes'\)"):
        FilterExplainer(tiny_store, tuned, space, "concepts", dataclasses.replace(settings, ranking="lift"),
                        prior=prior)
    lift = dataclasses.replace(settings, ranking="lift", lift_floor=0.05)
    assert tuned.calibration.mismatch(lift, prior, "concepts") == ["ranking='lift' (tuned with 'votes')"]
    older = dataclasses.replace(record, settings={k: v for k, v in record.settings.items() if k != "ranking"})
    with pytest.warns(UserWarning, match=r"ranking='lift' \(tuned with 'votes'\)"):  # a record from before ranking
        FilterExplainer(tiny_store, mapper.calibrated(older), space, "concepts",
                        dataclasses.replace(settings, ranking="lift"), prior=prior)
    plain = mapper.calibrated(GammaCalibration(tiny_store, mapper, space, settings, calibration=grid).fit())
    with pytest.warns(UserWarning, match="tuned with none"):
        FilterExplainer(tiny_store, plain, space, "concepts", settings, prior=prior)
    with warnings.catch_warnings():  # a mapper never calibrated has no gamma to mismatch
        warnings.simplefilter("error")
        FilterExplainer(tiny_store, mapper, space, "concepts", prior=prior)
    loaded = Mapper.load(tuned.save(tmp_path / "mapper.pt"), tiny_store, space)
    assert loaded.calibration == record and loaded.calibration.table.equals(record.table)
    with pytest.raises(ValueError, match="level='filter'"):
        GammaCalibration(tiny_store, tuned, space, calibration=CalibrationSettings(level="mask"), prior=prior)


def test_bad_settings_are_reported(tiny_store, mapper, space, shapes, classifier):
    with pytest.raises(ValueError, match="source must be one of"):
        ClassPrior(classifier, shapes, space, class_names=COLOURS, source="crop")
    with pytest.raises(ValueError, match="top must be between 1 and 4"):
        ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", top=50)
    raw = ExplainSettings(calibrated=False)
    pairs = FilterExplainer(tiny_store, mapper, space, "concepts", raw).pairs().iloc[:4]
    wrong = ClassPrior(classifier, shapes, space, class_names=COLOURS + ["purple"], source="region", show_progress=False)
    store = copy.copy(tiny_store)
    with pytest.raises(ValueError, match="4 outputs but 5 class names"):
        wrong.predictions(store, pairs)


def test_whole_image_source_classifies_each_image_once(tiny_store, mapper, space, shapes, classifier, tmp_path):
    pairs = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False)).pairs()
    store = copy.copy(tiny_store)
    store.path = tmp_path / "store"
    store.path.mkdir()
    prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="image", crop=CropSettings(batch_size=8),
                       show_progress=False)
    before = classifier.module.calls
    table = prior.predictions(store, pairs)
    assert classifier.module.calls - before == int(np.ceil(pairs["image"].nunique() / 8))
    assert (table[["filter", "image"]].to_numpy()[::prior.top] == pairs[["filter", "image"]].to_numpy()).all()
    by_image = table.groupby(["image", "rank"])["class"].nunique()
    assert (by_image == 1).all()  # every filter of an image gets that image's prediction


def test_a_finished_prior_cache_is_read_without_writing(tiny_store, mapper, space, shapes, classifier, tmp_path,
                                                          monkeypatch):
    pairs = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False)).pairs()
    store = copy.copy(tiny_store)
    store.path = tmp_path / "store"
    store.path.mkdir()
    prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", show_progress=False)
    first = prior.predictions(store, pairs)
    import lavise_nb.prior as prior_module

    def refuse(*args, **kwargs):
        raise PermissionError("read-only cache")

    monkeypatch.setattr(prior_module, "_write", refuse)
    monkeypatch.setattr(prior_module.os, "access", lambda *args: False)
    before = classifier.module.calls
    again = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", show_progress=False).predictions(store, pairs)
    assert classifier.module.calls == before and again.equals(first)


def test_region_words_say_what_the_classifier_sees_apart_from_the_filters_words(tiny_store, mapper, space, shapes,
                                                                                classifier):
    pairs = FilterExplainer(tiny_store, mapper, space, "concepts", ExplainSettings(calibrated=False)).pairs()
    prior = ClassPrior(classifier, shapes, space, class_names=COLOURS, source="region", top=2, show_progress=False)
    seen = prior.region_words(tiny_store, pairs, top_words=2)
    assert list(seen.columns) == ["filter", "rank", "word", "votes", "support"]
    first = seen[seen["rank"] == 1].set_index("filter")["word"]
    for colour, f in COLOUR_FILTERS.items():
        assert first[f] == colour
    assert seen["support"].between(0, 1 + 1e-6).all() and (seen.groupby("filter").size() <= 2).all()


class ColourShare(nn.Module):
    """Logit of colour c = 20 x the share of map cells where colour detector c fires."""

    def forward(self, x):
        return 20 * (x[:, :len(COLOURS)] > 0).float().mean((2, 3))


def colour_net() -> nn.Module:
    """The planted colour detectors (as "features.0", ReLU "features.1") and a head that classifies by them."""
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(planted_net().features[0], nn.ReLU()))
    net.add_module("head", ColourShare())
    return net


@pytest.fixture(scope="module")
def colour_store(tmp_path_factory, shapes):
    from lavise_nb.store import ActivationStore, BuildSettings
    model = wrap_model(colour_net(), shapes.preprocess, "colour-net")
    store = ActivationStore.build(model, "features.1", shapes, tmp_path_factory.mktemp("colour"),
                                  BuildSettings(batch_size=32, num_workers=0), show_progress=False)
    return model, store


def test_feature_prior_classifies_each_region_from_the_stored_maps(colour_store, space, shapes):
    model, store = colour_store
    red = COLOUR_FILTERS["red"]
    images = store.top_indices(12)[red]
    pairs = pd.DataFrame({"filter": red, "image": images})
    counted = []
    model.downstream("features.1")                  # traced first: tracing runs hooks on placeholders
    handle = model.module.features.register_forward_hook(lambda *args: counted.append(1))
    try:
        features = ClassPrior(model, shapes, space, class_names=COLOURS, top=2, show_progress=False)
        top = features.predictions(store, pairs).query("rank == 1")
    finally:
        handle.remove()
    assert features.source == "features" and not counted  # no image went through the layers before
    whole = ClassPrior(model, shapes, space, class_names=COLOURS, top=2, source="image", show_progress=False)
    top_image = whole.predictions(store, pairs).query("rank == 1")
    hits, image_hits = (top["label"] == "red").mean(), (top_image["label"] == "red").mean()
    assert hits == 1 and hits > image_hits + 0.1   # the region's box, not the whole image
    crops = ClassPrior(model, shapes, space, class_names=COLOURS, top=2, source="region", show_progress=False)
    top_crop = crops.predictions(store, pairs).query("rank == 1")
    assert (top["label"].to_numpy() == top_crop["label"].to_numpy()).all()


class AroundTheLayer(nn.Module):
    """A skip connection around "inner": the rest of the network also reads the layer's input."""

    def __init__(self):
        super().__init__()
        self.inner = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return 20 * (self.inner(x) + x.mean(1, keepdim=True)).mean((2, 3))


def test_feature_prior_names_the_fix_when_the_network_cannot_be_split(space, shapes, tmp_path):
    from lavise_nb.store import ActivationStore, BuildSettings
    model = wrap_model(AroundTheLayer(), shapes.preprocess, "skip")
    store = ActivationStore.build(model, "inner", shapes, tmp_path, BuildSettings(batch_size=64, num_workers=0),
                                  show_progress=False)
    pairs = pd.DataFrame({"filter": [0, 1], "image": [0, 1]})
    with pytest.raises(ValueError, match=r"skip connection.*source='region'"):
        ClassPrior(model, shapes, space, class_names=COLOURS, show_progress=False).predictions(store, pairs)
    crops = ClassPrior(model, shapes, space, class_names=COLOURS, source="region", show_progress=False)
    assert len(crops.predictions(store, pairs)) == 2 * crops.top
