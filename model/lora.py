"""LoRA settings: TinyGPT-V's (rank 64, alpha 16, dropout 0.05) on Phi's attention projections.

Plain data with no torch import, so pipeline specs take their defaults from here; model/language.py
injects the adapters these settings describe.
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
