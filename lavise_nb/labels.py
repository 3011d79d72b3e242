"""The target model's own predictions: ImageNet class names, crop classification, weak labels.

:func:`classify` is the one place a batch of crops goes through a classifier and
comes back as its top classes; weak labels (:func:`model_labels`, :func:`region_labels`)
and the class prior (:class:`~lavise_nb.prior.ClassPrior`) all use it.
"""
from __future__ import annotations

import numpy as np
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
                 class_names=None, store=None, device="auto", show_progress: bool = True) -> pd.DataFrame:
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
    store : ActivationStore, optional
        The store built from ``model`` and ``dataset``: the logits it kept from its own
        forward pass (:attr:`ActivationStore.logits`) are used, and the images are not run
        again. A store without logits (built before they were kept) falls back to a pass.

    Returns
    -------
    pandas.DataFrame
        Columns ``image, label, probability`` (labels are lower-case class names).

    Raises
    ------
    ValueError
        ``store`` was built from another model or dataset, or its logits have another
        number of classes than ``class_names``.
    """
    from .datasets import collate_samples

    check_model_preprocess(dataset, model)
    names = imagenet_classes() if class_names is None else list(class_names)
    if store is not None and store.logits is not None:
        return _stored_labels(model, dataset, store, top, min_probability, names)
    model.to(resolve_device(device))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=collate_samples)
    rows = []
    for batch in progress(loader, enabled=show_progress, desc="model labels"):
        probs, classes = classify(model, batch["images"], top, len(names))
        valid = [error is None or error == "" for error in batch["errors"]]
        rows += _label_rows(batch["index"].tolist(), probs, classes, valid, names, min_probability)
    return pd.DataFrame(rows, columns=["image", "label", "probability"])


def _label_rows(images, probs, classes, valid, names, min_probability) -> list:
    return [(image, names[c], p) for image, p_row, c_row, ok in zip(images, probs.tolist(), classes.tolist(), valid)
            if ok for p, c in zip(p_row, c_row) if p >= min_probability]


def _stored_labels(model, dataset, store, top, min_probability, names, block: int = 4096) -> pd.DataFrame:
    """:func:`model_labels` from the store's logits."""
    key = store.manifest["key"]
    if key["model"] != model.fingerprint or key["dataset"] != dataset.dataset_id:
        raise ValueError(f"the store at {store.path} was built from {key['model']} on {key['dataset']}, not from "
                         f"{model.fingerprint} on {dataset.dataset_id}; pass the store built from this model and "
                         "dataset (or store=None for a pass over the images)")
    if store.logits.shape[1] != len(names):
        raise ValueError(f"the store's logits have {store.logits.shape[1]} classes but {len(names)} class names "
                         "were given: pass class names in the model's output order")
    rows = []
    for lo in range(0, store.logits.shape[0], block):
        logits = torch.from_numpy(np.array(store.logits[lo:lo + block], dtype=np.float32))
        valid = ~torch.isnan(logits).any(1)
        probs, classes = logits.nan_to_num(0.0).softmax(-1).topk(min(top, logits.shape[1]), dim=1)
        rows += _label_rows(range(lo, lo + len(logits)), probs, classes, valid.tolist(), names, min_probability)
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
