"""The geometric and photometric preprocessing a target model expects.

One object applies the *same* geometry to an image and its object masks, so the
masks stay aligned with the pixels the model sees, and says which of the model's
pixels are real (:meth:`Preprocess.valid_mask`: letterbox padding is not).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["MODES", "Preprocess", "check_model_preprocess"]

MODES = ("center_crop", "resize", "letterbox")


@dataclass(frozen=True)
class Preprocess:
    """Resize to a ``size x size`` square and normalise images (and their masks) for a model.

    Images are resized bilinearly, masks with nearest neighbours, by ``mode``:

    ``"center_crop"`` (default)
        The shorter side becomes ``size``, then the centre square is cropped
        (parts of non-square images are lost).
    ``"resize"``
        Stretched to the square (every pixel kept, aspect ratio not).
    ``"letterbox"``
        The longer side becomes ``size`` and the rest is padded (every pixel
        kept, aspect ratio too). Padding is 0 after normalisation (the mean
        colour), never part of a mask, and False in :meth:`valid_mask`.

    Pixel values in [0, 1] are normalised as ``(x - mean) / std`` per channel.

    Parameters
    ----------
    size : int
        Side of the square model input, in pixels.
    mean, std : tuple of float
        Per-channel normalisation on the [0, 1] scale. EfficientNet-Lite's
        ``(x255 - 127) / 128`` is ``mean = 127/255``, ``std = 128/255``.
    mode : str
        One of :data:`MODES`.

    Raises
    ------
    ValueError
        ``mode`` is not one of :data:`MODES`, or ``size`` is not a positive int.
    """

    size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)
    mode: str = "center_crop"

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, not {self.mode!r}")
        if isinstance(self.size, bool) or not isinstance(self.size, (int, np.integer)) or self.size < 1:
            raise ValueError(f"size must be a positive int (pixels), not {self.size!r}")

    def describe(self) -> dict:
        """A JSON-able description, part of every activation store's key.

        ``mode`` appears only when it is not ``"center_crop"``, so the default's
        description (and every key made before modes existed) stays the same.
        """
        described = {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}
        if self.mode == "center_crop":
            del described["mode"]
        return described

    def _geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """The resized (width, height), and where its top-left corner lands on the square (negative: cropped)."""
        s = self.size
        if self.mode == "resize":
            return (s, s), (0, 0)
        if self.mode == "letterbox":
            scale = s / max(width, height)
            new_w, new_h = min(s, max(1, round(width * scale))), min(s, max(1, round(height * scale)))
        else:
            scale = s / min(width, height)
            new_w, new_h = max(s, round(width * scale)), max(s, round(height * scale))
        return (new_w, new_h), (-((new_w - s) // 2), -((new_h - s) // 2))

    def _place(self, image: Image.Image, width: int, height: int, resample) -> Image.Image:
        new_size, offset = self._geometry(width, height)
        canvas = Image.new(image.mode, (self.size, self.size), 0)
        canvas.paste(image.resize(new_size, resample), offset)
        return canvas

    def valid_mask(self, width: int, height: int) -> torch.Tensor:
        """Which model pixels show the image: False only on letterbox padding.

        Parameters
        ----------
        width, height : int
            Size of the original image.

        Returns
        -------
        torch.Tensor
            (size, size) bool, indexed (row, column).
        """
        (new_w, new_h), (left, top) = self._geometry(width, height)
        valid = torch.zeros(self.size, self.size, dtype=torch.bool)
        valid[max(top, 0):min(top + new_h, self.size), max(left, 0):min(left + new_w, self.size)] = True
        return valid

    def image(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one PIL image.

        Returns
        -------
        torch.Tensor
            (3, size, size) float32, normalised; letterbox padding is 0.
        """
        image = image.convert("RGB")
        placed = self._place(image, *image.size, Image.BILINEAR)
        array = torch.from_numpy(np.asarray(placed, dtype=np.float32) / 255.0).permute(2, 0, 1)
        out = self.normalize(array)
        if self.mode == "letterbox":
            out[:, ~self.valid_mask(*image.size)] = 0.0
        return out

    def masks(self, masks: np.ndarray, width: int, height: int) -> torch.Tensor:
        """Apply the image's geometry to masks.

        Parameters
        ----------
        masks : numpy.ndarray
            (K, height, width) bool or 0/1, indexed (row, column).
        width, height : int
            Size of the original image the masks belong to.

        Returns
        -------
        torch.Tensor
            (K, size, size) bool; False on letterbox padding.
        """
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            raise ValueError(
                f"masks must have shape (K, {height}, {width}) to match the image; got {masks.shape}"
            )
        out = np.zeros((masks.shape[0], self.size, self.size), dtype=bool)
        for k, mask in enumerate(masks):
            placed = self._place(Image.fromarray(mask.astype(np.uint8) * 255), width, height, Image.NEAREST)
            out[k] = np.asarray(placed) > 127
        return torch.from_numpy(out)

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(..., 3, H, W) values in [0, 1] -> normalised values."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Invert :meth:`normalize`; (..., 3, H, W) -> values clipped to [0, 1]."""
        mean = torch.tensor(self.mean, dtype=x.dtype, device=x.device).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=x.dtype, device=x.device).view(3, 1, 1)
        return (x * std + mean).clamp(0, 1)


def check_model_preprocess(dataset, model) -> None:
    """Check that a dataset's images have the size and normalisation its model expects.

    ``mode`` may differ (letterboxed images into a model trained on centre crops
    is a choice); size, mean and std may not. To run a model at another size on
    purpose, give the model that preprocessing:
    ``dataclasses.replace(model, preprocess=dataset.preprocess)``.

    Parameters
    ----------
    dataset
        Has ``preprocess`` (:class:`Preprocess`).
    model
        Has ``preprocess`` and ``name`` (a :class:`~lavise_nb.probe.TargetModel`).

    Raises
    ------
    ValueError
        The two differ; the message names both sides and the fix.
    """
    ours, theirs = dataset.preprocess, model.preprocess
    same = (int(ours.size) == int(theirs.size) and np.allclose(ours.mean, theirs.mean, atol=1e-6)
            and np.allclose(ours.std, theirs.std, atol=1e-6))
    if not same:
        def show(p):
            return f"size={p.size}, mean={tuple(round(float(v), 4) for v in p.mean)}, " \
                   f"std={tuple(round(float(v), 4) for v in p.std)}"
        raise ValueError(
            f"the dataset's preprocessing ({show(ours)}) differs from what {model.name} expects ({show(theirs)}). "
            "Make the dataset with the model's: e.g. CocoDataset(..., preprocess=model.preprocess) or "
            "ShapesWorld(..., preprocess=model.preprocess); to run the model at another size on purpose, "
            "give it that preprocessing: dataclasses.replace(model, preprocess=dataset.preprocess)")
