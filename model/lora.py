"""Adapter settings: LoRA, TinyGPT-V's (rank 64, alpha 16, dropout 0.05) on Phi's attention
projections, and LaVIN's MM-Adapter, the alternative.

Plain data with no torch import, so pipeline specs take their defaults from here; model/language.py
and model/mm_adapter.py inject the adapters these settings describe.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LoraSettings:
    r: int = 64  # rank: memory and compute of the adapters grow linearly with it
    alpha: float = 16  # the update is scaled by alpha / r
    dropout: float = 0.05
    # phi-msft's fused `query_key_value` is q_proj/k_proj/v_proj in transformers' Phi.
    target_modules: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "dense")


DEFAULT_LORA = LoraSettings()


@dataclass(frozen=True)
class MMAdapterSettings:
    dim: int = 8  # bottleneck width (LaVIN: 8)
    temperature: float = 10.0  # router softmax temperature (LaVIN: 10 for its 7B model)
    scale: float = 1.0  # weight of the adapters' output on the normalised input
    dropout: float = 0.0
    vision: bool = False  # also adapt the vision tower's blocks (LaVIN's optional placement)


DEFAULT_MM_ADAPTER = MMAdapterSettings()
