"""lavise-nb: explain what CNN filters learned, in words and pictures (LaViSE).

The public surface, one noun per module:

- :mod:`~lavise_nb.probe`: ``load_model``, ``LayerProbe`` (layers by dotted name)
- :mod:`~lavise_nb.downstream`: ``split_after`` (the network after a layer, from its activations)
- :mod:`~lavise_nb.datasets` / :mod:`~lavise_nb.scenes`: reference datasets (COCO,
  Visual Genome, image folders, ShapesWorld, the embedded StampScenes)
- :mod:`~lavise_nb.words`: word spaces and vocabularies
- :mod:`~lavise_nb.store`: ``ActivationStore``, cached activations on disk
- :mod:`~lavise_nb.config`: the settings objects (``TrainingConfig``, ``ExplainSettings``,
  ``CalibrationSettings``), frozen dataclasses changed with ``dataclasses.replace``
- :mod:`~lavise_nb.regions`: a filter's region in an image (one rule for every module)
- :mod:`~lavise_nb.labels`: the model's own predictions (ImageNet names, crops, weak labels)
- :mod:`~lavise_nb.pooling`: features pooled under masks, the training pairs (memory-mapped when large)
- :mod:`~lavise_nb.mapper`: ``ExplainerTrainer`` -> ``Mapper``
- :mod:`~lavise_nb.explain`: ``FilterExplainer`` (one verb: ``explain``)
- :mod:`~lavise_nb.calibration`: ``GammaCalibration`` -> ``Calibration`` (calibrated stacking)
- :mod:`~lavise_nb.prior`: ``ClassPrior`` (the model's own predictions for a filter's region)
- :mod:`~lavise_nb.evaluate`: recall@k against ground truth, ``MethodComparison`` with baselines
- :mod:`~lavise_nb.reference`: ``Reference.load(ReferenceSpec(...))``, the notebooks' shared setup
- :mod:`~lavise_nb.planted`: planted group differences (StampScenes with a known bias) and their recovery
- :mod:`~lavise_nb.faithfulness`: is a name true to its filter (held-out presence, probe scenes)
- :mod:`~lavise_nb.bias`: ``GroupComparison`` (which filters fire differently across groups)
- :mod:`~lavise_nb.detectors`: ``fit_probes`` -> ``Probes``, ``plant`` -> ``PlantedModel`` (planted
  detectors with a known concept), ``firing_auc``, ``planted_ranks``
- :mod:`~lavise_nb.plots`, :mod:`~lavise_nb.widgets`: figures and notebook widgets
"""
from ._utils.version import VERSION
from .bias import GroupComparison
from .calibration import Calibration, GammaCalibration
from .config import BiasSettings, CalibrationSettings, ExplainSettings, TrainingConfig
from .datasets import CocoDataset, ImageFolderDataset, ShapesWorld, VisualGenomeDataset
from .detectors import PlantedModel, Probes, ProbeSettings, firing_auc, fit_probes, plant, planted_ranks
from .evaluate import MethodComparison, RecallEvaluator, frequency_baseline, network_dissection
from .explain import FilterExplainer
from .labels import imagenet_classes
from .mapper import ExplainerTrainer, Mapper
from .planted import null_groups, planted_groups
from .prior import ClassPrior
from .reference import Reference, ReferenceSpec
from .probe import LayerProbe, TargetModel, load_model, recalibrate_batchnorm, wrap_model
from .scenes import SceneSettings, build_stamp_scenes, stamp_scenes
from .store import ActivationStore, BuildSettings, StoreDamagedError
from .transform import Preprocess
from .words import Vocabulary, WordSpace, combine_spaces, hybrid_space, load_word_space

__version__ = VERSION

__all__ = [
    "ActivationStore", "BiasSettings", "BuildSettings", "Calibration", "CalibrationSettings", "ClassPrior",
    "CocoDataset", "ExplainSettings", "ExplainerTrainer", "FilterExplainer", "GammaCalibration", "GroupComparison",
    "ImageFolderDataset", "LayerProbe", "Mapper", "MethodComparison", "Preprocess", "RecallEvaluator", "Reference",
    "ReferenceSpec", "SceneSettings", "ShapesWorld", "StoreDamagedError", "TargetModel", "TrainingConfig",
    "VisualGenomeDataset", "Vocabulary", "WordSpace", "build_stamp_scenes", "combine_spaces", "frequency_baseline",
    "hybrid_space", "imagenet_classes", "load_model", "load_word_space", "network_dissection", "null_groups",
    "planted_groups", "recalibrate_batchnorm", "stamp_scenes", "wrap_model",
    "PlantedModel", "ProbeSettings", "Probes", "firing_auc", "fit_probes", "plant", "planted_ranks",
]
