"""The geometric and photometric preprocessing a target model expects.

One object applies the *same* geometry to an image and its object masks, so the
masks stay aligned with the pixels the model sees.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from PIL import Image

__all__ = ["Preprocess"]


@dataclass(frozen=True)
class Preprocess:
    """Resize, centre-crop and normalise images (and their masks) for a model.

    The shorter side is resized to ``size`` (bilinear for images, nearest for
    masks), then the centre ``size x size`` square is cropped. Pixel values in
    [0, 1] are normalised as ``(x - mean) / std`` per channel.

    Parameters
    ----------
    size : int
        Side of the square model input, in pixels.
    mean, std : tuple of float
        Per-channel normalisation on the [0, 1] scale. EfficientNet-Lite's
        ``(x255 - 127) / 128`` is ``mean = 127/255``, ``std = 128/255``.
    """

    size: int = 224
    mean: tuple = (0.485, 0.456, 0.406)
    std: tuple = (0.229, 0.224, 0.225)

    def describe(self) -> dict:
        """A JSON-able description, part of every activation store's key."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}

    def _geometry(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int, int, int]]:
        scale = self.size / min(width, height)
        new_w, new_h = max(self.size, round(width * scale)), max(self.size, round(height * scale))
        left, top = (new_w - self.size) // 2, (new_h - self.size) // 2
        return (new_w, new_h), (left, top, left + self.size, top + self.size)

    def image(self, image: Image.Image) -> torch.Tensor:
        """Preprocess one PIL image.

        Returns
        -------
        torch.Tensor
            (3, size, size) float32, normalised.
        """
        image = image.convert("RGB")
        new_size, box = self._geometry(*image.size)
        image = image.resize(new_size, Image.BILINEAR).crop(box)
        array = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return self.normalize(array)

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
            (K, size, size) bool.
        """
        masks = np.asarray(masks)
        if masks.ndim != 3 or masks.shape[1:] != (height, width):
            raise ValueError(
                f"masks must have shape (K, {height}, {width}) to match the image; got {masks.shape}"
            )
        new_size, box = self._geometry(width, height)
        out = np.zeros((masks.shape[0], self.size, self.size), dtype=bool)
        for k, mask in enumerate(masks):
            pil = Image.fromarray(mask.astype(np.uint8) * 255).resize(new_size, Image.NEAREST).crop(box)
            out[k] = np.asarray(pil) > 127
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
