"""Image preprocessing for the vision tower: RGB, bicubic resize to a square, CLIP normalisation.

The same code path serves training, evaluation and generation so pixels never differ between them.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image

from .presets import ModelPreset


class ImagePreprocessor:
    def __init__(self, image_size: int, mean: Sequence[float], std: Sequence[float]):
        self.image_size = int(image_size)
        self.mean = torch.tensor(mean, dtype=torch.float32).view(3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32).view(3, 1, 1)

    @classmethod
    def from_preset(cls, preset: ModelPreset) -> ImagePreprocessor:
        return cls(preset.image_size, preset.image_mean, preset.image_std)

    def one(self, image: Image.Image) -> torch.Tensor:
        """[3, S, S] float32 for one image."""
        # BLIP-2's eval transform squashes to a square (no crop): boxes in 0-100 image coordinates
        # keep their meaning only if the whole image stays in view.
        image = image.convert("RGB").resize((self.image_size, self.image_size), Image.Resampling.BICUBIC)
        pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
        return (pixels - self.mean) / self.std

    def __call__(self, images: Sequence[Image.Image]) -> torch.Tensor:
        """[N, 3, S, S] float32; N may be 0 (text-only batch)."""
        if len(images) == 0:
            return torch.zeros(0, 3, self.image_size, self.image_size)
        return torch.stack([self.one(image) for image in images])
