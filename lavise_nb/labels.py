"""The target model's own predictions: ImageNet class names, crop classification, weak labels.

:func:`classify` is the one place a batch of crops goes through a classifier and
comes back as its top classes; weak labels (:func:`model_labels`, :func:`region_labels`)
and the class prior (:class:`~lavise_nb.prior.ClassPrior`) all use it.
"""
from __future__ import annotations

import pandas as pd
import torch

from ._utils.progress import progress
from .config import CropSettings
from .probe import resolve_device
from .regions import crop_around
from .transform import check_model_preprocess

__all__ = ["imagenet_classes", "classify", "model_labels", "region_labels"]


def imagenet_classes() -> list[str]:
    """ImageNet-1k's 1000 class names, lower-case, in torchvision's output order."""
    from torchvision.models import ResNet18_Weights

    return [name.lower() for name in ResNet18_Weights.IMAGENET1K_V1.meta["categories"]]


def classify(model, images: torch.Tensor, top: int, n_classes: int | None = None,
             device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's ``top`` classes for a batch, by softmax probability.

    Parameters
    ----------
    model : TargetModel
    images : torch.Tensor
        (B, 3, S, S) model inputs.
    top : int
    n_classes : int, optional
        The number of class names the caller holds; a model with another number of
        outputs raises a ValueError that says so.
    device : optional
        Default: where the model is.

    Returns
    -------
    (probabilities, classes) : torch.Tensor, torch.Tensor
        Both (B, top) on the CPU, best first.
    """
    device = model.device if device is None else resolve_device(device)
    with torch.no_grad():
        logits = model.module(images.to(device)).float()
    if n_classes is not None and logits.shape[-1] != n_classes:
        raise ValueError(f"the model has {logits.shape[-1]} outputs but {n_classes} class names were given: pass "
                         "class names in the model's output order (or class_names=None for ImageNet's 1000)")
    probabilities, classes = logits.softmax(-1).topk(min(top, logits.shape[-1]), dim=1)
    return probabilities.cpu(), classes.cpu()


def model_labels(model, dataset, *, top: int = 1, min_probability: float = 0.2, batch_size: int = 64,
                 class_names=None, device="auto", show_progress: bool = True) -> pd.DataFrame:
    """The target model's own predictions for each image, as weak labels.

    Parameters
    ----------
    model : TargetModel
        A classifier whose outputs are ``class_names``, in order.
    dataset : torch.utils.data.Dataset
        Follows the sample contract of :mod:`lavise_nb.datasets`.
    top : int
        Classes kept per image.
    min_probability : float
        Softmax probability a class needs to be kept.
    class_names : list of str, optional
        Default: ImageNet-1k's (:func:`imagenet_classes`).

    Returns
    -------
    pandas.DataFrame
        Columns ``image, label, probability`` (labels are lower-case class names).
    """
    from .datasets import collate_samples

    check_model_preprocess(dataset, model)
    names = imagenet_classes() if class_names is None else list(class_names)
    model.to(resolve_device(device))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    rows = []
    for batch in progress(loader, enabled=show_progress, desc="model labels"):
        probs, classes = classify(model, batch["images"], top, len(names))
        for image, p_row, c_row, error in zip(batch["index"].tolist(), probs.tolist(), classes.tolist(),
                                              batch["errors"]):
            rows += [(image, names[c], p) for p, c in zip(p_row, c_row) if p >= min_probability and not error]
    return pd.DataFrame(rows, columns=["image", "label", "probability"])


def region_labels(model, store, dataset, *, top: int = 3, min_probability: float = 0.05,
                  crop: CropSettings | None = None, class_names=None, device="auto",
                  show_progress: bool = True) -> pd.DataFrame:
    """The target model's predictions for a crop around each annotated region.

    Every distinct region of the store (:func:`~lavise_nb.mapper.mask_table`) is
    cropped to its bounding box plus a margin on each side
    (:func:`~lavise_nb.regions.crop_around`), resized to the input size and
    classified. Only the pixels are used, never the region's concept names, so the
    labels are fair weak labels for seen and unseen regions alike.

    Parameters
    ----------
    model : TargetModel
        A classifier whose outputs are ``class_names``, in order.
    store : ActivationStore
        The reference store (its masks are at the dataset's input size).
    dataset : torch.utils.data.Dataset
        The store's dataset (sample contract of :mod:`lavise_nb.datasets`).
    top, min_probability :
        Classes kept per region, and the probability each needs.
    crop : CropSettings, optional
        The crop's margin and smallest side, and crops per forward pass.
    class_names : list of str, optional
        Default: ImageNet-1k's.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, object, label, probability``; ``object`` is the region's
        representative object row (pass as ``weak_labels``).
    """
    from .mapper import mask_table

    check_model_preprocess(dataset, model)
    names = imagenet_classes() if class_names is None else list(class_names)
    crop = CropSettings() if crop is None else crop
    model.to(resolve_device(device))
    pairs = mask_table(store)
    size = store.image_size
    rows, crops, keys = [], [], []

    def flush():
        if not crops:
            return
        probs, classes = classify(model, torch.stack(crops), top, len(names))
        for (image, obj), p_row, c_row in zip(keys, probs.tolist(), classes.tolist()):
            rows.extend((image, obj, names[c], p) for p, c in zip(p_row, c_row) if p >= min_probability)
        crops.clear()
        keys.clear()

    grouped = pairs.groupby("image", sort=True)
    for image, group in progress(grouped, enabled=show_progress, desc="region labels", total=grouped.ngroups):
        sample = dataset[int(image)]
        if sample.get("error"):
            continue
        masks = store.object_masks(group["object"].to_numpy())
        for obj, mask in zip(group["object"].tolist(), masks):
            if not mask.any():
                continue
            crops.append(crop_around(sample["image"], mask, crop.context, crop.min_side, size))
            keys.append((int(image), int(obj)))
            if len(crops) >= crop.batch_size:
                flush()
    flush()
    return pd.DataFrame(rows, columns=["image", "object", "label", "probability"])
