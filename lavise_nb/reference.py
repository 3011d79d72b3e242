"""The setup every notebook shares: target model, reference set, activation store, word space.

A :class:`ReferenceSpec` holds the notebooks' common parameters (literals, so a
papermill run can set them); :meth:`Reference.load` turns it into the objects, each
built or reused from the caches exactly as the notebooks did by hand:

>>> ref = Reference.load(ReferenceSpec(n_images=200))     # doctest: +SKIP
>>> ref.model, ref.dataset, ref.store, ref.space           # doctest: +SKIP
"""
from __future__ import annotations

import dataclasses
import importlib
from dataclasses import dataclass
from pathlib import Path

from .config import check_choice, check_int
from .datasets import CocoDataset, VisualGenomeDataset
from .labels import imagenet_classes
from .probe import load_model
from .scenes import stamp_scenes
from .store import ActivationStore, BuildSettings
from .transform import MODES
from .words import Vocabulary, load_word_space

__all__ = ["ReferenceSpec", "Reference", "VOCABULARIES", "REFERENCES", "class_names", "load_target",
           "reference_dataset"]

#: Candidate-word sets by name (notebook parameter ``vocabulary``); anything else is a word-list file.
VOCABULARIES = ("nouns", "default", "concepts")
#: Reference sets the notebooks can read (parameter ``reference``).
REFERENCES = ("stamp_scenes", "coco", "visual_genome")


@dataclass(frozen=True)
class ReferenceSpec:
    """The notebooks' shared parameters: the target model, its reference set and the word space.

    Parameters
    ----------
    model : str
        A torchvision name (``"resnet18"``), ``"efficientnet-lite0"`` (default; offline ImageNet
        weights), or ``"package.module:factory"`` for your own ``nn.Module`` (the factory is
        called without arguments).
    weights : str, optional
        A local checkpoint (state_dict) for a torchvision model or your module.
    num_classes : int, optional
        The classifier's size (default: read from the checkpoint).
    layer : str
        Dotted name of the layer whose filters are explained.
    reference : {"stamp_scenes", "coco", "visual_genome"}
        The images with named masks the explainer learns from. ``"stamp_scenes"`` (default):
        the embedded generator (``n_images``, ``seed``, ``tuxpaint_dir``); ``"coco"``:
        ``annotations`` (instances JSON) and ``images``; ``"visual_genome"``:
        ``annotations`` (objects.json), ``image_data`` (image_data.json) and ``images``.
    annotations, image_data, images : str, optional
        Paths for ``"coco"`` and ``"visual_genome"``.
    crop : {"center_crop", "resize", "letterbox"}
        How non-square photos become the model's square input (see
        :class:`~lavise_nb.transform.Preprocess`): ``"letterbox"`` keeps every pixel and
        leaves its padding out of masks, thresholds and pooling.
    n_images, seed : int
        StampScenes images and seed (the seed also drives the notebooks' splits and training).
    word_space : str
        A built-in space (``"glove-6b-50d+minilm"``, ``"glove-6b-50d"``) or a GloVe /
        word2vec / fastText / ``.kv`` file (see :func:`~lavise_nb.words.load_word_space`).
    class_names : str, optional
        The names of the model's outputs, for weak labels and the class prior:
        ``"imagenet"`` (default), a text file with one name per line in output order,
        or None (no weak labels, no prior; e.g. a model that is not a classifier).
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
    weights: str | None = None
    num_classes: int | None = None
    layer: str = "_blocks.15"
    reference: str = "stamp_scenes"
    annotations: str | None = None
    image_data: str | None = None
    images: str | None = None
    crop: str = "center_crop"
    n_images: int = 2000
    seed: int = 0
    word_space: str = "glove-6b-50d+minilm"
    class_names: str | None = "imagenet"
    store_root: str | None = None
    device: str = "auto"
    batch_size: int = 64
    tuxpaint_dir: str | None = None

    def __post_init__(self):
        check_int("n_images", self.n_images)
        check_int("batch_size", self.batch_size)
        check_choice("reference", self.reference, REFERENCES)
        check_choice("crop", self.crop, MODES)
        needed = {"coco": ("annotations", "images"), "visual_genome": ("annotations", "image_data", "images")}
        missing = [name for name in needed.get(self.reference, ()) if getattr(self, name) is None]
        if missing:
            raise ValueError(f"reference={self.reference!r} needs {', '.join(missing)}: pass the paths "
                             f"(e.g. annotations='instances_val2017.json', images='val2017/')")

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
        """Load the model, build or reuse the reference set and its store, load the word space."""
        spec = ReferenceSpec() if spec is None else spec
        model = load_target(spec)
        dataset = reference_dataset(spec, dataclasses.replace(model.preprocess, mode=spec.crop), show_progress)
        store = ActivationStore.build(model, spec.layer, dataset, spec.store_root, spec.build_settings,
                                      device=spec.device, show_progress=show_progress)
        names = class_names(spec.class_names)
        space = load_word_space(spec.word_space, words=[*store.concepts, *(names or [])])
        return cls(spec, model, dataset, store, space)

    @property
    def class_names(self) -> list[str] | None:
        """The model's output names (``spec.class_names``), or None when it has none."""
        return class_names(self.spec.class_names)

    def held_out(self, n_images: int | None = None, seed: int | None = None, *,
                 show_progress: bool = True) -> "Reference":
        """Fresh reference scenes for held-out scores (:class:`~lavise_nb.faithfulness.PresenceScore`).

        Same model, layer, generator and word space; another seed (default ``spec.seed + 1000``),
        so none of its images trained the explainer or chose a filter's top images.
        """
        if self.spec.reference != "stamp_scenes":
            raise ValueError("held-out scenes are composed by the StampScenes generator; for your own reference "
                             "set, build a store of a held-out split with ActivationStore.build")
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
        """Candidate words by name: ``"nouns"`` (WordNet concrete nouns), ``"default"`` (common words),
        ``"concepts"`` (the annotated concepts only), or a word-list file (one word or phrase a line;
        words the space lacks are skipped with a warning), as :class:`~lavise_nb.explain.FilterExplainer`
        takes them."""
        if name == "nouns":
            return Vocabulary.concrete_nouns(self.space)
        if name == "default":
            return Vocabulary.default(self.space)
        if name == "concepts":
            return "concepts"
        if not Path(name).is_file():
            raise ValueError(f"vocabulary must be one of {VOCABULARIES} or a word-list file, not {name!r} "
                             "(no such file)")
        return Vocabulary.from_words(self.space, Path(name), missing="skip", name=Path(name).stem)


def class_names(source: str | None) -> list[str] | None:
    """``"imagenet"`` -> ImageNet-1k's names; a path -> its non-empty lines; None -> None."""
    if source is None:
        return None
    if source == "imagenet":
        return imagenet_classes()
    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"class_names {source!r}: no such file; pass 'imagenet', a text file with one "
                                "class name per line in the model's output order, or None")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_target(spec: ReferenceSpec):
    """The spec's model: a torchvision or EfficientNet-Lite name, or ``"package.module:factory"``."""
    if ":" in spec.model:
        module_name, _, factory = spec.model.partition(":")
        try:
            module = getattr(importlib.import_module(module_name), factory)()
        except (ImportError, AttributeError) as error:
            raise ValueError(f"model {spec.model!r}: cannot call {factory}() from module {module_name!r} ({error}); "
                             "pass 'package.module:factory' importable from the notebook's environment") from error
        return load_model(module, weights=spec.weights, device=spec.device)
    return load_model(spec.model, weights=spec.weights, num_classes=spec.num_classes, device=spec.device)


def reference_dataset(spec: ReferenceSpec, preprocess, show_progress: bool = True):
    """The spec's reference set, preprocessed like the model's inputs."""
    if spec.reference == "coco":
        return CocoDataset(spec.annotations, spec.images, preprocess)
    if spec.reference == "visual_genome":
        return VisualGenomeDataset(spec.annotations, spec.image_data, spec.images, preprocess)
    return stamp_scenes(n_images=spec.n_images, seed=spec.seed, preprocess=preprocess, show_progress=show_progress,
                        **spec.scene_options)
