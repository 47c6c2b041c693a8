"""Model construction: a preset, LoRA settings and a seed in, the model with its tokenizer and image
preprocessing out, the previous stage's checkpoint loaded when there is one. Training, evaluation,
preview and the benchmarks all build their model here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch

from .checkpoint import load_checkpoint, load_tokenizer_from_checkpoint
from .image_processing import ImagePreprocessor
from .lora import LoraSettings, MMAdapterSettings
from .presets import ModelPreset, get_preset
from .tokenizer import load_tokenizer
from .vlm import VisionLanguageModel


class LoraChoice(Protocol):
    r: int
    alpha: float
    dropout: float
    target_modules: Sequence[str]


class ModelChoice(Protocol):
    """What a pipeline spec's `model:` block says (data_specs.pipelines.ModelSpec has this shape)."""

    preset: str
    pretrained: bool
    seed: int
    lora: LoraChoice | None
    # optional, read with getattr: projection_init (a MiniGPT-4 checkpoint for the first projection),
    # ablate (names from model.presets.ABLATIONS), adapter ("lora" or "mm_adapter") and mm_adapter
    # (dim, temperature, scale, dropout)


@dataclass
class BuiltModel:
    model: VisionLanguageModel
    tokenizer: Any
    preset: ModelPreset
    preprocess: ImagePreprocessor


def lora_settings(lora: LoraChoice | None) -> LoraSettings | None:
    if lora is None:
        return None
    return LoraSettings(
        r=lora.r, alpha=lora.alpha, dropout=lora.dropout, target_modules=tuple(lora.target_modules)
    )


def model_choice(spec: dict[str, Any], *, pretrained: bool | None = None) -> Any:
    """A ModelChoice from a pipeline spec's `model:` block as JSON (a run's resolved_config.json, a
    registered model's config). `pretrained` overrides the block's (False: every weight comes from a
    checkpoint, nothing is downloaded)."""
    from types import SimpleNamespace

    return SimpleNamespace(
        preset=spec["preset"],
        pretrained=spec.get("pretrained", False) if pretrained is None else pretrained,
        seed=spec.get("seed", 0),
        lora=SimpleNamespace(**spec["lora"]) if spec.get("lora") else None,
        ablate=tuple(spec.get("ablate") or ()),
        adapter=spec.get("adapter", "lora"),
        mm_adapter=SimpleNamespace(**spec["mm_adapter"]) if spec.get("mm_adapter") else None,
    )


def build_model(
    choice: ModelChoice,
    *,
    image_size: int | None = None,
    init_checkpoint: str | Path | None = None,
    tokenizer_corpus: Callable[[], Iterable[str]] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[BuiltModel, list[str]]:
    """The pipeline's model, with the previous checkpoint loaded. Returns the groups that differ
    from the base model so far (what every later checkpoint must keep).

    The tokenizer comes from `init_checkpoint` when given; otherwise from the preset, and a preset
    with the built-in tiny tokenizer trains it on `tokenizer_corpus()`.
    """
    preset = get_preset(choice.preset)
    if image_size and image_size != preset.image_size:
        preset = preset.with_image_size(image_size)
    if init_checkpoint is not None:
        tokenizer = load_tokenizer_from_checkpoint(init_checkpoint)
    else:
        corpus = tokenizer_corpus() if preset.has_tiny_tokenizer and tokenizer_corpus else None
        tokenizer = load_tokenizer(preset, corpus=corpus)
    torch.manual_seed(choice.seed)
    mm_adapter = None
    if getattr(choice, "adapter", "lora") == "mm_adapter":
        given = getattr(choice, "mm_adapter", None)
        mm_adapter = MMAdapterSettings(
            **{
                k: getattr(given, k)
                for k in ("dim", "temperature", "scale", "dropout", "vision")
                if hasattr(given, k)
            }
        )
    model = VisionLanguageModel.from_preset(
        preset,
        tokenizer,
        lora=None if mm_adapter is not None else lora_settings(choice.lora),
        pretrained=choice.pretrained,
        ablate=tuple(getattr(choice, "ablate", None) or ()),
        mm_adapter=mm_adapter,
    )
    groups: list[str] = []
    if init_checkpoint is not None:
        info = load_checkpoint(init_checkpoint, model)
        groups = list(info.groups)
        log(f"loaded {len(groups)} group(s) from {init_checkpoint}: {', '.join(groups)}")
    elif getattr(choice, "projection_init", None) is not None:
        from .projection import load_minigpt4_projection

        load_minigpt4_projection(model.projection, choice.projection_init)
        groups = ["projection"]  # differs from the base model from now on: every checkpoint keeps it
        log(f"first projection initialised from {choice.projection_init} (MiniGPT-4 llama_proj)")
    return BuiltModel(model, tokenizer, preset, ImagePreprocessor.from_preset(preset)), groups
