"""Vision tower: the BLIP-2 EVA ViT (transformers' Blip2VisionModel), frozen in every TinyGPT-V stage.

Built from a preset's config here; real weights come from model.pretrained. Inputs larger than the
size the position embeddings were trained at (stage 4 uses 448 for a 224 tower) are interpolated.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2VisionModel

from .presets import ModelPreset


def sincos_position_embedding(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings [1 + grid*grid, dim] (zeros for the class token):
    half the channels encode the row, half the column, at geometric frequencies (as in MAE)."""
    quarter = dim // 4
    freqs = 1.0 / (10000 ** (torch.arange(quarter, dtype=torch.float32) / quarter))
    rows, cols = torch.meshgrid(
        torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij"
    )
    parts = []
    for coord in (rows.flatten(), cols.flatten()):
        angles = coord[:, None] * freqs[None, :]
        parts += [angles.sin(), angles.cos()]
    table = torch.cat(parts, dim=1)
    table = torch.nn.functional.pad(table, (0, dim - table.shape[1]))
    return torch.cat([torch.zeros(1, dim), table], dim=0)


def build_vision_tower(preset: ModelPreset) -> Blip2VisionModel:
    """Randomly initialised tower (torch's global RNG) with the preset's shapes.

    With `extra["sincos_positions"]` the (still trainable) position embeddings start as 2-D
    sine-cosine tables: the default 0.02-std random init leaves patch positions almost invisible
    beside the patch contents, and a tower trained from scratch for minutes then never learns where
    things are.
    """
    config = preset.vision_config()
    config._attn_implementation = "sdpa"
    tower = Blip2VisionModel(config)
    if preset.extra.get("sincos_positions"):
        grid = config.image_size // config.patch_size
        with torch.no_grad():
            tower.embeddings.position_embedding.copy_(
                sincos_position_embedding(grid, config.hidden_size)[None]
            )
    return tower


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
        dtype = self.vit.embeddings.patch_embedding.weight.dtype  # a tower served in bf16 takes bf16
        out = self.vit(pixel_values=pixel_values.to(dtype), interpolate_pos_encoding=interpolate)
        # last_hidden_state already went through post_layernorm, which is BLIP-2's ln_vision.
        return out.last_hidden_state
