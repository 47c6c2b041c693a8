"""Vision tower: the BLIP-2 EVA ViT (transformers' Blip2VisionModel), frozen in every TinyGPT-V stage.

Built from a preset's config here; real weights come from model.pretrained. Inputs larger than the
size the position embeddings were trained at (stage 4 uses 448 for a 224 tower) are interpolated.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2VisionModel

from .presets import ModelPreset


def build_vision_tower(preset: ModelPreset) -> Blip2VisionModel:
    """Randomly initialised tower (torch's global RNG) with the preset's shapes."""
    config = preset.vision_config()
    config._attn_implementation = "sdpa"
    return Blip2VisionModel(config)


class VisionTower(nn.Module):
    """Pixels [N,3,S,S] -> patch features [N, 1 + (S/patch)^2, vision_hidden] (after BLIP-2's ln_vision)."""

    def __init__(self, encoder: Blip2VisionModel):
        super().__init__()
        self.vit = encoder
        self.native_size = int(encoder.config.image_size)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        height, width = pixel_values.shape[-2:]
        # Interpolating only when needed keeps the 224 path bit-identical to BLIP-2.
        interpolate = (height, width) != (self.native_size, self.native_size)
        out = self.vit(pixel_values=pixel_values, interpolate_pos_encoding=interpolate)
        # last_hidden_state already went through post_layernorm, which is BLIP-2's ln_vision.
        return out.last_hidden_state
