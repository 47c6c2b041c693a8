"""Loading real weights for a preset: BLIP-2's vision tower, Q-Former and query tokens, and Phi.

Only the `from_pretrained` calls live here (tests replace them to check the wiring without a
download); the VisionLanguageModel assembles whatever this returns exactly like randomly built parts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import Blip2ForConditionalGeneration, Blip2QFormerModel, Blip2VisionModel, PhiForCausalLM

from .language import resize_for_tokenizer
from .presets import ModelPreset


@dataclass
class PretrainedParts:
    vision: Blip2VisionModel
    qformer: Blip2QFormerModel
    query_tokens: torch.Tensor  # [1, Q, qformer_hidden]
    language_model: PhiForCausalLM


def _check(preset: ModelPreset, what: str, actual: int, expected: int) -> None:
    if actual != expected:
        raise ValueError(f"preset {preset.name!r}: pretrained {what} is {actual}, the preset says {expected}")


def load_pretrained_parts(
    preset: ModelPreset, vocab_size: int, dtype: torch.dtype | None = None, qk_norm: bool = True
) -> PretrainedParts:
    """Fetch the preset's hub checkpoints and check they have the shapes the preset promises.

    BLIP-2 ships as one checkpoint with its OPT language model inside; we load it whole (the reliable
    way to get the vision/Q-Former keys), keep the three pieces we need and drop the rest.
    """
    if not preset.is_pretrainable:
        raise ValueError(f"preset {preset.name!r} names no pretrained weights; use pretrained=False")
    kwargs = {"dtype": dtype} if dtype is not None else {}

    blip2 = Blip2ForConditionalGeneration.from_pretrained(preset.vision_source, **kwargs)
    vision, qformer = blip2.vision_model, blip2.qformer
    query_tokens = blip2.query_tokens.detach().clone()
    del blip2  # the OPT decoder and BLIP-2's own projection are not used by TinyGPT-V

    lm = PhiForCausalLM.from_pretrained(
        preset.lm_source,
        # New QK LayerNorms are absent from phi-2's checkpoint and start at weight 1, bias 0.
        qk_layernorm=qk_norm,
        attn_implementation=preset.attn_implementation,
        **kwargs,
    )
    resize_for_tokenizer(lm, vocab_size)

    _check(preset, "vision hidden size", vision.config.hidden_size, preset.vision_hidden)
    if preset.visual_tokens == "qformer":  # a "merge" preset keeps BLIP-2's ViT only
        _check(preset, "Q-Former hidden size", qformer.config.hidden_size, preset.qformer_hidden)
        _check(preset, "number of query tokens", query_tokens.shape[1], preset.num_query_tokens)
    _check(preset, "LM hidden size", lm.config.hidden_size, preset.lm_hidden)
    return PretrainedParts(vision=vision, qformer=qformer, query_tokens=query_tokens, language_model=lm)
