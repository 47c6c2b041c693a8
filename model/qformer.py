"""Q-Former bridge: learned query tokens cross-attend to vision features (BLIP-2's Blip2QFormerModel).

It compresses a variable number of patch features into a fixed `num_query_tokens` vectors per image,
which is what makes each image cost the LM the same, small number of positions.
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
