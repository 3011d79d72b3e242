import pandas as pd
import pytest
import torch

from lavise_nb.calibration import Calibration
from lavise_nb.config import ExplainSettings, TrainingConfig
from lavise_nb.mapper import ExplainerTrainer, Mapper, mask_table, pool_features, ranking_loss
from tests.helpers import shapes_space

SEEN = ["red", "green", "blue", "circle", "square", "stripes", "dots", "plain"]


@pytest.fixture(scope="module")
def mapper(tiny_store):
    config = TrainingConfig(seen=SEEN, margin=0.1, dropout=0.1, max_epochs=40)
    return ExplainerTrainer(tiny_store, shapes_space(), config, show_progress=False).fit()


def test_pool_features_mass_and_mean():
    features = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)
    masks = torch.tensor([[[1.0, 0.0], [0.0, 0.0]], [[0.5, 0.5], [0.0, 0.0]]])
    mass = pool_features(features, masks, "mass")
    assert torch.allclose(mass[0], features[0, :, 0, 0])
    assert torch.allclose(mass[1], features[1, :, 0, :2].mean(1))
    assert torch.allclose(pool_features(features, masks, "mean")[0], features[0, :, 0, 0] / 4)
    with pytest.raises(ValueError, match="mass"):
        pool_features(features, masks, "max")


def test_identical_masks_become_one_pair_with_two_positives(tiny_store):
    pairs = mask_table(tiny_store)
    shapes = pairs[pairs["concepts"].map(len) == 2]
    assert len(shapes) > 0
    colours, kinds = {"red", "green", "blue", "yellow"}, {"circle", "square", "triangle"}
    assert all(len(colours & set(c)) == 1 and len(kinds & set(c)) == 1 for c in shapes["concepts"])


def test_split_is_seeded_without_replacement(tiny_store):
    a = ExplainerTrainer(tiny_store, shapes_space(), TrainingConfig(seen_fraction=0.7, seed=3), show_progress=False)
    b = ExplainerTrainer(tiny_store, shapes_space(), TrainingConfig(seen_fraction=0.7, seed=3), show_progress=False)
    assert a.seen == b.seen and len(set(a.seen)) == len(a.seen) == round(0.7 * 11)
    assert set(a.seen).isdisjoint(a.unseen) and set(a.seen) | set(a.unseen) == set(tiny_store.concepts)


def test_trained_mapper_ranks_the_right_word_first(mapper):
    best = mapper.history.loc[mapper.history["val_loss"].idxmin()]
    assert best["seen_top1"] > 0.6
    assert best["seen_top5"] > 0.95
    assert list(mapper.history.columns[:7]) == ["epoch", "train_loss", "val_loss", "seen_top1", "seen_top5",
                                                "unseen_top1", "unseen_top5"]


def test_save_and_load_check_model_and_space(tmp_path, mapper, tiny_store):
    path = mapper.save(tmp_path / "m.pt")
    loaded = Mapper.load(path, tiny_store, shapes_space())
    x = torch.randn(5, tiny_store.shape[1])
    assert torch.allclose(loaded.embed(x), mapper.embed(x))
    assert loaded.seen == mapper.seen and loaded.history.shape == mapper.history.shape
    payload = torch.load(path, weights_only=True)
    assert payload["layer"] == tiny_store.layer
    other = shapes_space(name="other", seed=5)
    with pytest.raises(ValueError, match="word space"):
        Mapper.load(path, tiny_store, other)
    renamed = shapes_space(name="the same vectors, renamed")
    assert Mapper.load(path, tiny_store, renamed).seen == mapper.seen  # content decides, not the name
    loaded.layer = "features.4"
    with pytest.raises(ValueError, match="layer"):
        loaded.check(tiny_store)


def test_calibration_record_survives_saving(tmp_path, mapper, tiny_store):
    record = Calibration(0.3, 0.12, pd.DataFrame({"gamma": [0.0, 0.3], "H": [0.1, 0.2]}), layer=tiny_store.layer,
                         settings=ExplainSettings(p=6).scoring(), vocabulary="concepts")
    loaded = Mapper.load(mapper.calibrated(record).save(tmp_path / "m.pt"), tiny_store, shapes_space())
    assert loaded.calibration == record and loaded.calibration.gammas == (0.3, 0.12)
    assert loaded.calibration.table.equals(record.table)
    assert Mapper.load(mapper.save(tmp_path / "raw.pt")).calibration is None
    payload = torch.load(tmp_path / "m.pt", weights_only=True)  # a checkpoint from before the record
    del payload["calibration"]
    payload.update(gamma=0.3, filter_gamma=None, gamma_table={"gamma": [0.3], "level": ["mask"], "k": [5]})
    torch.save(payload, tmp_path / "old.pt")
    legacy = Mapper.load(tmp_path / "old.pt").calibration
    assert (legacy.gammas, legacy.level, legacy.k, legacy.settings) == ((0.3, 0.3), "mask", 5, None)
    with pytest.raises(ValueError, match="layer 'features.4'"):
        mapper.calibrated(Calibration(0.1, None, layer="features.4"))


def test_missing_concept_words_are_reported(tiny_store):
    from lavise_nb.words import MissingWordsError
    space = shapes_space(drop=["checkers"])
    with pytest.raises(MissingWordsError, match="checkers"):
        ExplainerTrainer(tiny_store, space, show_progress=False)
    with pytest.warns(UserWarning, match="checkers"):
        trainer = ExplainerTrainer(tiny_store, space, missing="skip", show_progress=False)
    assert "checkers" not in trainer.concepts


def test_weak_labels_widen_the_label_space_but_never_name_annotated_concepts(tiny_store):
    space = shapes_space()
    weak = pd.DataFrame({"image": [0, 1, 2, 3, 4, 5], "label": ["dog", "car", "red car", "tree", "dog", "music"]})
    trainer = ExplainerTrainer(tiny_store, space, TrainingConfig(seen=SEEN, max_epochs=3), weak_labels=weak,
                               show_progress=False)
    assert trainer.weak_names == ["car", "dog", "music", "tree"]  # "red car" shares "red" with a concept
    assert set(trainer.weak["label"]) == set(trainer.weak_names) and len(trainer.weak) == 5
    mapper = trainer.fit()
    assert mapper.seen == sorted(SEEN) and "dog" not in mapper.concepts
    with pytest.raises(ValueError, match="columns 'image' and 'label'"):
        ExplainerTrainer(tiny_store, space, weak_labels=pd.DataFrame({"image": [0]}), show_progress=False)


def test_weighted_loss_equals_mean_for_unit_weights():
    vectors = torch.nn.functional.normalize(torch.randn(4, 50), dim=1)
    labels = torch.nn.functional.normalize(torch.randn(3, 50), dim=1)
    positives = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    plain = ranking_loss(vectors, positives, labels, 1.0)
    assert torch.allclose(plain, ranking_loss(vectors, positives, labels, 1.0, torch.ones(4)))
    cos = vectors @ labels.T
    expected = (1.0 - cos[0, 0] + cos[0, 1]).clamp_min(0) + (1.0 - cos[0, 0] + cos[0, 2]).clamp_min(0)
    weighted = ranking_loss(vectors, positives, labels, 1.0, torch.tensor([1.0, 0, 0, 0]))
    assert torch.allclose(weighted, expected)


def test_mask_table_order_is_stable(tiny_store):
    pairs = mask_table(tiny_store)
    assert pairs["object"].is_monotonic_increasing and pairs["mask"].tolist() == list(range(len(pairs)))
    assert pairs.equals(mask_table(tiny_store))


class _RednessClassifier(torch.nn.Module):
    """1000 ImageNet logits; class 1 ("goldfish") fires on crops that are mostly red."""

    def forward(self, images):
        redness = (images[:, 0] - images[:, 1:].amax(1)).mean((1, 2))
        logits = torch.zeros(len(images), 1000)
        logits[:, 1] = 12 * redness
        return logits


def test_region_labels_classify_a_crop_around_each_region(tiny_store, shapes):
    from lavise_nb.labels import region_labels
    from lavise_nb.probe import wrap_model

    model = wrap_model(_RednessClassifier(), shapes.preprocess, "redness")
    labels = region_labels(model, tiny_store, shapes, top=1, min_probability=0.5, show_progress=False)
    assert list(labels.columns) == ["image", "object", "label", "probability"]
    pairs = mask_table(tiny_store).set_index("object")
    named = pairs.loc[labels["object"], "concepts"]
    assert set(labels["label"]) == {"goldfish"}
    assert not any({"blue", "green", "yellow"} & set(c) for c in named)
    red = pairs.index[pairs["concepts"].map(lambda c: "red" in c)]
    assert len(set(labels["object"]) & set(red)) >= 0.7 * len(red)


def test_region_weak_labels_train_on_the_regions_pooled_features(tiny_store):
    trainer = ExplainerTrainer(tiny_store, shapes_space(), TrainingConfig(seen=SEEN), show_progress=False,
                               weak_labels=pd.DataFrame({"image": [0, 1], "label": ["dog", "car"]}))
    pairs = trainer.masks.head(3)
    weak = pd.DataFrame({"image": list(pairs["image"]) + [5], "object": list(pairs["object"]) + [None]})
    pooled = trainer.pooled()
    features = trainer.weak_features(weak, pooled)
    assert torch.equal(features[:3], pooled[torch.tensor(pairs["mask"].to_numpy())])
    assert torch.allclose(features[3], tiny_store.features([5]).mean(dim=(2, 3))[0])
    with pytest.raises(ValueError, match="region_labels"):
        trainer.weak_features(pd.DataFrame({"image": [0], "object": [10 ** 6]}), pooled)


def test_loading_something_that_is_not_a_mapper_says_so(tmp_path):
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ValueError, match="is not a mapper checkpoint"):
        Mapper.load(tmp_path / "weights.pt")
    (tmp_path / "broken.pt").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable mapper checkpoint"):
        Mapper.load(tmp_path / "broken.pt")
