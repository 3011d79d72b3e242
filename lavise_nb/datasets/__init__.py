"""Reference datasets: images with named object masks, plus unlabeled images.

Every dataset here yields the same sample, a dict with

``image``
    (3, S, S) float32, the image after :class:`~lavise_nb.transform.Preprocess`.
``masks``
    (K, S, S) bool, one mask per concept present in the image, aligned with
    ``image`` (indexed row, column).
``valid``
    (S, S) bool, the pixels that show the image: False only on letterbox
    padding (``Preprocess(mode="letterbox")``) and everywhere for an unreadable image.
``concepts``
    list of K concept names (str), ``concepts[k]`` names ``masks[k]``.
``index``
    int, the sample's position in the dataset.
``error``
    None, or a str saying why the image could not be used. A missing or
    unreadable image gives an all-zero image, K = 0 masks and an error message;
    no dataset raises for one bad file.

Each dataset also has ``preprocess``, ``dataset_id`` (stable for the same
inputs), ``records`` (one row per image: ``image_id``, ``path``, ``width``,
``height`` and metadata columns), ``concepts`` (sorted names), ``report()``
(a DataFrame of skipped or suspicious annotations and images, with their file)
and ``raw_masks(i)`` (an image's named masks before preprocessing).

All instances of one concept in one image are merged into one mask (their
union), as in the LaViSE paper, unless ``merge_instances=False``. Masks with no
pixels left after preprocessing are dropped and reported. Images are turned
as their EXIF orientation says (annotations refer to the displayed image),
animations give their first frame, and images are converted to RGB; images
with transparency (RGBA, LA, palette with a transparent colour) are composited
on white.

=================  ==========================================================
``base``           :class:`ImageDataset` (the shared base), ``collate_samples``
``coco``           :class:`CocoDataset`
``visual_genome``  :class:`VisualGenomeDataset`
``folder``         :class:`ImageFolderDataset` (unlabeled images)
``shapes``         :class:`ShapesWorld` (procedural, for tests)
=================  ==========================================================

StampScenes, the embedded default, is built by :mod:`lavise_nb.scenes` and
read as a :class:`CocoDataset`.
"""
from .base import collate_samples, normalize_concept
from .coco import CocoDataset
from .folder import ImageFolderDataset
from .shapes import ShapesWorld
from .visual_genome import VisualGenomeDataset

__all__ = ["CocoDataset", "VisualGenomeDataset", "ImageFolderDataset", "ShapesWorld", "collate_samples",
           "normalize_concept"]
