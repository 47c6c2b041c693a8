"""The model package: TinyGPT-V's architecture (EVA ViT -> Q-Former -> projection -> Phi with QK norm,
post-attention RMSNorm and LoRA), its presets, tokenizers, parameter groups, construction and
checkpoints.

Names are loaded on first use, so `import model.presets` (what spec validation needs) stays free of
torch and transformers; `from model import VisionLanguageModel` loads the component it names.
"""

from __future__ import annotations

import importlib
import logging
from typing import Any

# bitsandbytes (imported by peft) logs at import, on CPUs with AVX512-BF16, that it could not fetch a
# 4-bit kernel from the Hugging Face hub (its built-in fallback is what runs), and LLM.int8() logs on
# every CPU matmul that it casts float32 inputs to float16. Neither is something a user can act on.
for _name in ("bitsandbytes.backends.cpu.ops", "bitsandbytes.autograd._functions"):
    logging.getLogger(_name).setLevel(logging.ERROR)

_EXPORTS = {
    "BuiltModel": "build",
    "build_model": "build",
    "CheckpointInfo": "checkpoint",
    "is_complete_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "load_tokenizer_from_checkpoint": "checkpoint",
    "save_checkpoint": "checkpoint",
    "ImagePreprocessor": "image_processing",
    "LoraSettings": "lora",
    "DEFAULT_LORA": "lora",
    "PRESETS": "presets",
    "ModelPreset": "presets",
    "get_preset": "presets",
    "IGNORE_INDEX": "tokenizer",
    "IMAGE_TOKEN": "tokenizer",
    "build_tiny_tokenizer": "tokenizer",
    "image_token_id": "tokenizer",
    "load_tokenizer": "tokenizer",
    "pad_token_id": "tokenizer",
    "GROUPS": "trainable",
    "group_of": "trainable",
    "group_state_dict": "trainable",
    "parameter_counts": "trainable",
    "set_trainable": "trainable",
    "VisionLanguageModel": "vlm",
    "VisionLanguageOutput": "vlm",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'model' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value
