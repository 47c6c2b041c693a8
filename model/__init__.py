"""The model package: TinyGPT-V's architecture (EVA ViT -> Q-Former -> projection -> Phi with QK norm,
post-attention RMSNorm and LoRA), its presets, tokenizers, parameter groups and checkpoints.
"""

from .checkpoint import (
    CheckpointInfo,
    is_complete_checkpoint,
    load_checkpoint,
    load_tokenizer_from_checkpoint,
    save_checkpoint,
)
from .image_processing import ImagePreprocessor
from .language import LoraSettings
from .presets import PRESETS, ModelPreset, get_preset
from .tokenizer import IMAGE_TOKEN, build_tiny_tokenizer, image_token_id, load_tokenizer
from .trainable import GROUPS, group_of, group_state_dict, parameter_counts, set_trainable
from .vlm import VisionLanguageModel, VisionLanguageOutput

__all__ = [
    "GROUPS",
    "IMAGE_TOKEN",
    "PRESETS",
    "CheckpointInfo",
    "ImagePreprocessor",
    "LoraSettings",
    "ModelPreset",
    "VisionLanguageModel",
    "VisionLanguageOutput",
    "build_tiny_tokenizer",
    "get_preset",
    "group_of",
    "group_state_dict",
    "image_token_id",
    "is_complete_checkpoint",
    "load_checkpoint",
    "load_tokenizer",
    "load_tokenizer_from_checkpoint",
    "parameter_counts",
    "save_checkpoint",
    "set_trainable",
]
