"""LaVIN's Mixture-of-Modality Adapter (MMA), as an alternative to LoRA in the language model.

Each decoder layer gets one adapter on the output of its input LayerNorm (what Phi's attention and
MLP both read, so one adapter steers both):

    h' = h + scale * sum_k w_k * up_k(act(down(h)))          k = 0 (text-only), 1 (image)
    w  = softmax(router(m) / temperature)

`down` is shared by the two adapters (LaVIN's shared down-projection), `up_k` start at zero so the
adapted model computes exactly what the base model did, and `m` is a learned modality embedding
chosen per token: the image embedding for every token of a sample that has an image, the text
embedding otherwise (a packed row can hold both kinds). The router is per layer; LaVIN used a
temperature of 10 for its 7B model.

Everything lives under `language_model.mm_adapter.*` (trainable group `mm_adapter`). The model sets
the per-token modality (`MMAdapters.modality`) before each LM call; a call without it counts as
text-only.

With `MMAdapterSettings.vision`, the vision tower gets adapters too (LaVIN's optional placement),
one per ViT block on the output of its first LayerNorm (the attention's input), under
`vision.vit.mm_adapter.*` (same group). Every vision token is an image token, so there the router
reads each image's own class token at that block instead of a modality embedding: the mix of the two
up-projections is chosen per image, as LaVIN's image-encoder adapters do.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from .lora import MMAdapterSettings

TEXT, IMAGE = 0, 1


class ModalityAdapter(nn.Module):
    """One layer's mixture of two adapters sharing their down-projection, and its router."""

    def __init__(self, hidden: int, settings: MMAdapterSettings):
        super().__init__()
        self.down = nn.Linear(hidden, settings.dim)
        self.up = nn.ModuleList([nn.Linear(settings.dim, hidden) for _ in range(2)])
        self.router = nn.Linear(hidden, 2)
        self.act = nn.SiLU()
        self.dropout = nn.Dropout(settings.dropout)
        self.temperature = float(settings.temperature)
        self.scale = float(settings.scale)
        for up in self.up:  # zero updates: the adapted model starts as the base model
            nn.init.zeros_(up.weight)
            nn.init.zeros_(up.bias)

    def weights(self, modality_embeds: torch.Tensor) -> torch.Tensor:
        """[..., hidden] modality embeddings -> [..., 2] mixture weights (text-only, image)."""
        return torch.softmax(self.router(modality_embeds) / self.temperature, dim=-1)

    def forward(self, hidden: torch.Tensor, modality_embeds: torch.Tensor) -> torch.Tensor:
        """`modality_embeds` [..., hidden], broadcast against `hidden`: what the router reads."""
        z = self.dropout(self.act(self.down(hidden)))
        w = self.weights(modality_embeds).to(hidden.dtype)
        mixed = w[..., 0:1] * self.up[0](z) + w[..., 1:2] * self.up[1](z)
        return hidden + self.scale * mixed


class MMAdapters(nn.Module):
    """Every layer's adapter, the two modality embeddings, and the modality of the current call."""

    def __init__(self, hidden: int, num_layers: int, settings: MMAdapterSettings):
        super().__init__()
        self.layers = nn.ModuleList([ModalityAdapter(hidden, settings) for _ in range(num_layers)])
        self.modality_embedding = nn.Embedding(2, hidden)
        nn.init.normal_(self.modality_embedding.weight, std=0.02)
        self.modality: torch.Tensor | None = None  # [B, T] of TEXT / IMAGE, set per call

    def current(self, like: torch.Tensor) -> torch.Tensor:
        """[B, T, hidden] modality embeddings for a layer input `like` [B, T, hidden]."""
        b, t = like.shape[:2]
        modality = self.modality
        if modality is None:
            modality = torch.full((b, t), TEXT, dtype=torch.long, device=like.device)
        elif modality.shape[1] != t:  # a decode step: each row keeps its prompt's modality
            modality = modality[:, -1:].expand(b, t)
        return self.modality_embedding(modality.to(like.device)).to(like.dtype)

    def route(self, modality: torch.Tensor) -> torch.Tensor:
        """[L, ..., 2] mixture weights of every layer for a modality id tensor (inspection, tests)."""
        embeds = self.modality_embedding(modality)
        return torch.stack([layer.weights(embeds) for layer in self.layers])


def _adapt(adapters: MMAdapters, index: int, module: nn.Module, args, output):
    return adapters.layers[index](output, adapters.current(output))


def inject_mm_adapters(lm: nn.Module, settings: MMAdapterSettings) -> MMAdapters:
    """Attach `lm.mm_adapter` and hook one adapter after each decoder layer's input LayerNorm."""
    if hasattr(lm, "mm_adapter"):
        raise ValueError("the language model already has MM-Adapters")
    config = lm.config
    reference = lm.model.embed_tokens.weight
    adapters = MMAdapters(config.hidden_size, len(lm.model.layers), settings)
    adapters.to(device=reference.device, dtype=reference.dtype)
    lm.mm_adapter = adapters
    for index, layer in enumerate(lm.model.layers):
        # registered on the norm (or the Identity the input_layernorm ablation leaves)
        layer.input_layernorm.register_forward_hook(partial(_adapt, adapters, index))
    return adapters


class VisionMMAdapters(nn.Module):
    """One adapter per ViT block; each routes an image by its class token's state at that block."""

    def __init__(self, hidden: int, num_layers: int, settings: MMAdapterSettings):
        super().__init__()
        self.layers = nn.ModuleList([ModalityAdapter(hidden, settings) for _ in range(num_layers)])

    def route(self, normed: torch.Tensor, index: int) -> torch.Tensor:
        """[N, 2] mixture weights of block `index` for its normalised input [N, 1 + patches, hidden]."""
        return self.layers[index].weights(normed[:, 0])


def _adapt_vision(adapters: VisionMMAdapters, index: int, module: nn.Module, args, output):
    return adapters.layers[index](output, output[:, :1])


def inject_vision_mm_adapters(vit: nn.Module, settings: MMAdapterSettings) -> VisionMMAdapters:
    """Attach `vit.mm_adapter` to a Blip2VisionModel and hook one adapter after each block's
    first LayerNorm (what its self-attention reads)."""
    if hasattr(vit, "mm_adapter"):
        raise ValueError("the vision tower already has MM-Adapters")
    blocks = vit.encoder.layers
    reference = vit.embeddings.patch_embedding.weight
    adapters = VisionMMAdapters(vit.config.hidden_size, len(blocks), settings)
    adapters.to(device=reference.device, dtype=reference.dtype)
    vit.mm_adapter = adapters
    for index, block in enumerate(blocks):
        block.layer_norm1.register_forward_hook(partial(_adapt_vision, adapters, index))
    return adapters


def token_modality(
    input_ids: torch.Tensor, image_token_id: int, segment_ids: torch.Tensor | None
) -> torch.Tensor:
    """[B, T] IMAGE for every token of a sample that holds an image token, TEXT otherwise. A sample
    is a packed segment (segment_ids > 0) or, without segments, a whole row."""
    is_image = input_ids == image_token_id
    if segment_ids is None:
        row = is_image.any(dim=1, keepdim=True)
        return row.expand_as(input_ids).long()
    segments = int(segment_ids.max()) + 1 if segment_ids.numel() else 1
    has = torch.zeros(input_ids.shape[0], segments, dtype=torch.bool, device=input_ids.device)
    has.scatter_reduce_(1, segment_ids.long(), is_image, reduce="amax")
    has[:, 0] = False  # padding
    return has.gather(1, segment_ids.long()).long()
