"""Projection from Q-Former space into the LM's embedding space: Linear(768->4096) then Linear(4096->H).

TinyGPT-V keeps MiniGPT-4's first projection (trained for Vicuna-7B, width 4096) and adds a second,
new one to reach Phi's width; there is no non-linearity between them, as in the original code.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


class ImageProjection(nn.Module):
    def __init__(self, in_features: int, hidden_features: int, out_features: int):
        super().__init__()
        self.proj_in = nn.Linear(in_features, hidden_features)
        self.proj_out = nn.Linear(hidden_features, out_features)
        # The paper: the second projection is "new, Gaussian init"; small std keeps image embeddings at
        # the scale of Phi's token embeddings at the start of stage 1.
        nn.init.normal_(self.proj_out.weight, mean=0.0, std=0.02)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.proj_out(self.proj_in(query_states))


def load_minigpt4_projection(projection: ImageProjection, path: str | Path) -> None:
    """Copy MiniGPT-4's `llama_proj` (768->4096) into `proj_in`, as TinyGPT-V's stage 1 starts from it.

    A pipeline spec's `model.projection_init` names the file; model.build.build_model calls this
    when the first stage builds the model.

    Accepts a MiniGPT-4 `.pth` (a dict with "model") or a flat state dict / safetensors file.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state = state.get("model", state)
    keys = {
        suffix: next((k for k in state if k.endswith(f"llama_proj.{suffix}")), None)
        for suffix in ("weight", "bias")
    }
    if None in keys.values():
        raise KeyError(f"{path}: no llama_proj.weight / llama_proj.bias found (keys: {sorted(state)[:8]}...)")
    with torch.no_grad():
        for suffix, key in keys.items():
            target = getattr(projection.proj_in, suffix)
            if tuple(state[key].shape) != tuple(target.shape):
                raise ValueError(
                    f"{path}: {key} has shape {tuple(state[key].shape)}, expected {tuple(target.shape)}"
                )
            target.copy_(state[key])
