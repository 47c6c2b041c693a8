"""The bridge from patch features to image tokens, a preset's choice (`visual_tokens`):

- `QueryTransformer`: learned query tokens cross-attend to vision features (BLIP-2's
  Blip2QFormerModel). It compresses any number of patch features into `num_query_tokens` vectors per
  image, so each image costs the LM the same, small number of positions.
- `TokenMerge`: MiniGPT-v2's light-weight compression, every `factor` adjacent patch tokens
  concatenated into one (the class token dropped); the projection then maps them to the LM. No
  weights of its own; the token count follows the image size.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import Blip2QFormerModel

from .presets import ModelPreset


class QueryTransformer(nn.Module):
    """Vision features [N, P, vision_hidden] -> query outputs [N, Q, qformer_hidden]."""

    def __init__(self, transformer: Blip2QFormerModel, query_tokens: torch.Tensor):
        super().__init__()
        self.transformer = transformer
        # Shape [1, Q, hidden], as in BLIP-2 checkpoints, so real weights copy in unchanged.
        self.query_tokens = nn.Parameter(query_tokens)

    @classmethod
    def from_preset(cls, preset: ModelPreset) -> QueryTransformer:
        config = preset.qformer_config()
        config._attn_implementation = "sdpa"
        transformer = Blip2QFormerModel(config)
        # BLIP-2 initialises queries with std = initializer_range (0.02) before pretraining; zeros (what
        # transformers' init does) would make every query identical and the random model image-blind.
        queries = torch.randn(1, preset.num_query_tokens, preset.qformer_hidden) * config.initializer_range
        return cls(transformer, queries)

    @property
    def num_queries(self) -> int:
        return self.query_tokens.shape[1]

    def forward(self, vision_states: torch.Tensor) -> torch.Tensor:
        queries = self.query_tokens.expand(vision_states.shape[0], -1, -1)
        out = self.transformer(query_embeds=queries, encoder_hidden_states=vision_states)
        return out.last_hidden_state[:, : self.num_queries]


class TokenMerge(nn.Module):
    """Vision features [N, 1 + P, D] -> [N, P / factor, factor * D] (adjacent tokens side by side)."""

    def __init__(self, factor: int, tokens: int):
        super().__init__()
        if factor < 1:
            raise ValueError(f"merge factor must be at least 1, got {factor}")
        self.factor = int(factor)
        self.tokens = int(tokens)

    @classmethod
    def from_preset(cls, preset: ModelPreset) -> TokenMerge:
        return cls(preset.merge_factor, preset.merged_tokens(preset.image_size))

    @property
    def num_queries(self) -> int:
        return self.tokens

    def forward(self, vision_states: torch.Tensor) -> torch.Tensor:
        patches = vision_states[:, 1:]  # BLIP-2's ViT puts a class token first
        n, p, d = patches.shape
        if p != self.tokens * self.factor:
            raise ValueError(
                f"{p} patch tokens, expected {self.tokens * self.factor} ({self.tokens} x {self.factor})"
            )
        return patches.reshape(n, self.tokens, self.factor * d)
