"""The setup every notebook shares: target model, reference set, activation store, word space.

A :class:`ReferenceSpec` holds the notebooks' common parameters (literals, so a
papermill run can set them); :meth:`Reference.load` turns it into the objects, each
built or reused from the caches exactly as the notebooks did by hand:

>>> ref = Reference.load(ReferenceSpec(n_images=200))     # doctest: +SKIP
>>> ref.model, ref.dataset, ref.store, ref.space           # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from .config import check_choice, check_int
from .labels import imagenet_classes
from .probe import load_model
from .scenes import stamp_scenes
from .store import ActivationStore, BuildSettings
from .words import Vocabulary, load_word_space

__all__ = ["ReferenceSpec", "Reference", "VOCABULARIES"]

#: Candidate-word sets by name (notebook parameters ``vocabulary`` / ``calibration_vocabulary``).
VOCABULARIES = ("nouns", "default", "concepts")


@dataclass(frozen=True)
class ReferenceSpec:
    """The notebooks' shared parameters.

    Parameters
    ----------
    model : str
        A name known to :func:`~lavise_nb.probe.load_model`.
    layer : str
        Dotted name of the layer whose filters are explained.
    n_images : int
        Reference StampScenes images.
    seed : int
        Scenes (and, in the notebooks, the concept split and training).
    word_space : str
        A :func:`~lavise_nb.words.load_word_space` source.
    store_root : str, optional
        Where activation stores live (None: the cache's ``stores/``).
    device : str
        ``"auto"``: cuda when available.
    batch_size : int
        Images per forward pass while building the store.
    tuxpaint_dir : str, optional
        A folder holding Tux Paint ``stamps/`` and ``templates/`` (None: fetched with apt-get).
    """

    model: str = "efficientnet-lite0"
    layer: str = "_blocks.15"
    n_images: int = 2000
    seed: int = 0
    word_space: str = "glove-6b-50d+minilm"
    store_root: str | None = None
    device: str = "auto"
    batch_size: int = 64
    tuxpaint_dir: str | None = None

    def __post_init__(self):
        check_int("n_images", self.n_images)
        check_int("batch_size", self.batch_size)

    @property
    def build_settings(self) -> BuildSettings:
        """How the store is built (:class:`~lavise_nb.store.BuildSettings`)."""
        return BuildSettings(batch_size=self.batch_size)

    @property
    def scene_options(self) -> dict:
        """Keyword arguments for :func:`~lavise_nb.scenes.stamp_scenes` (the Tux Paint folders)."""
        if self.tuxpaint_dir is None:
            return {}
        root = Path(self.tuxpaint_dir)
        return {"stamps_dir": root / "stamps", "templates_dir": root / "templates"}


class Reference:
    """The loaded setup: model, reference dataset, its store and the word space.

    Attributes
    ----------
    spec : ReferenceSpec
    model : TargetModel
    dataset : torch.utils.data.Dataset
    store : ActivationStore
    space : WordSpace
        Holds every annotated concept and ImageNet's class names (for the class prior).
    """

    def __init__(self, spec: ReferenceSpec, model, dataset, store, space):
        self.spec, self.model, self.dataset, self.store, self.space = spec, model, dataset, store, space

    def __repr__(self) -> str:
        return f"Reference({self.store!r}, space={self.space.space_id!r})"

    @classmethod
    def load(cls, spec: ReferenceSpec | None = None, *, show_progress: bool = True) -> "Reference":
        """Load the model, build or reuse the scenes and the store, load the word space."""
        spec = ReferenceSpec() if spec is None else spec
        model = load_model(spec.model, device=spec.device)
        dataset = stamp_scenes(n_images=spec.n_images, seed=spec.seed, preprocess=model.preprocess,
                               show_progress=show_progress, **spec.scene_options)
        store = ActivationStore.build(model, spec.layer, dataset, spec.store_root, spec.build_settings,
                                      device=spec.device, show_progress=show_progress)
        space = load_word_space(spec.word_space, words=[*store.concepts, *imagenet_classes()])
        return cls(spec, model, dataset, store, space)

    def held_out(self, n_images: int | None = None, seed: int | None = None, *,
                 show_progress: bool = True) -> "Reference":
        """Fresh reference scenes for held-out scores (:class:`~lavise_nb.faithfulness.PresenceScore`).

        Same model, layer, generator and word space; another seed (default ``spec.seed + 1000``),
        so none of its images trained the explainer or chose a filter's top images.
        """
        seed = self.spec.seed + 1000 if seed is None else seed
        if seed == self.spec.seed:
            raise ValueError("the held-out scenes need another seed than the reference's")
        spec = dataclasses.replace(self.spec, seed=seed, n_images=n_images or self.spec.n_images)
        data = stamp_scenes(n_images=spec.n_images, seed=seed, preprocess=self.model.preprocess,
                            show_progress=show_progress, **spec.scene_options)
        store = ActivationStore.build(self.model, spec.layer, data, spec.store_root, spec.build_settings,
                                      device=spec.device, show_progress=show_progress)
        return Reference(spec, self.model, data, store, self.space)

    def vocabulary(self, name: str):
        """Candidate words by name: ``"nouns"`` (WordNet concrete nouns), ``"default"`` (common words) or
        ``"concepts"`` (the annotated concepts only), as :class:`~lavise_nb.explain.FilterExplainer` takes them."""
        check_choice("vocabulary", name, VOCABULARIES)
        if name == "nouns":
            return Vocabulary.concrete_nouns(self.space)
        if name == "default":
            return Vocabulary.default(self.space)
        return "concepts"
