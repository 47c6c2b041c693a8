"""Named architecture presets: the tiny CPU model used by tests and demos, and TinyGPT-V's real shapes.

A preset is plain data (config kwargs for the transformers classes plus the hub ids of the pretrained
weights); the components in this package turn it into modules. `PRESETS` is the registry a pipeline
spec's `model.preset` is checked against; this module imports transformers only when a config is
built, so spec validation can read the registry without it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import Blip2QFormerConfig, Blip2VisionConfig, PhiConfig

# BLIP-2 / EVA-CLIP normalisation (OpenAI CLIP statistics); every preset uses them because the vision
# tower is always a BLIP-2 one.
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# The paper's ablations (TinyGPT-V's Table 3), each the removal of one of its changes to the LM:
# `lora` no adapters, `input_layernorm` each decoder layer's input LayerNorm replaced by Identity,
# `post_attention_norm` no RMSNorm after attention, `qk_norm` Phi without its QK LayerNorm.
ABLATIONS: tuple[str, ...] = ("lora", "input_layernorm", "post_attention_norm", "qk_norm")

# The built-in tokenizer name; anything else in `ModelPreset.tokenizer` is a hub id.
TINY_TOKENIZER = "tiny-shapes"


@dataclass(frozen=True)
class ModelPreset:
    """Everything needed to build one VisionLanguageModel architecture."""

    name: str
    # Side of the square images fed to the vision tower. May differ from vision_kwargs["image_size"]
    # (the size its position embeddings were trained at): the tower then interpolates them (stage 4: 448).
    image_size: int
    vision_kwargs: dict[str, Any]  # Blip2VisionConfig kwargs
    qformer_kwargs: dict[str, Any]  # Blip2QFormerConfig kwargs
    num_query_tokens: int  # image tokens per image seen by the LM
    projection_hidden: int  # width between the two projection Linears (4096 in TinyGPT-V)
    lm_kwargs: dict[str, Any]  # PhiConfig kwargs; vocab_size may be omitted (taken from the tokenizer)
    tokenizer: str = TINY_TOKENIZER  # "tiny-shapes" or a hub id
    vision_source: str | None = None  # hub id holding BLIP-2 vision tower + Q-Former + query tokens
    lm_source: str | None = None  # hub id of the Phi checkpoint
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD
    # Attention kernel for the LM: "sdpa" honours our explicit 4-D packing masks (checked in tests).
    attn_implementation: str = "sdpa"
    # How patch features become the LM's image tokens: "qformer" (BLIP-2's Q-Former, num_query_tokens
    # learned queries) or "merge" (MiniGPT-v2: every `merge_factor` adjacent patch tokens concatenated,
    # then the projection; num_query_tokens = patches / merge_factor, and it follows the image size).
    visual_tokens: str = "qformer"
    merge_factor: int = 4
    extra: dict[str, Any] = field(default_factory=dict)  # free-form notes carried into logs

    @property
    def has_tiny_tokenizer(self) -> bool:
        """True when the tokenizer is the built-in BPE, trained on a corpus the caller gives."""
        return self.tokenizer == TINY_TOKENIZER

    @property
    def is_pretrainable(self) -> bool:
        """True when the preset names hub checkpoints that `pretrained=True` can load."""
        return self.vision_source is not None and self.lm_source is not None

    @property
    def vision_hidden(self) -> int:
        return int(self.vision_kwargs["hidden_size"])

    @property
    def qformer_hidden(self) -> int:
        return int(self.qformer_kwargs["hidden_size"])

    @property
    def bridge_width(self) -> int:
        """Width of each image token before the projection: the Q-Former's hidden size, or
        merge_factor patch features side by side."""
        if self.visual_tokens == "merge":
            return self.merge_factor * self.vision_hidden
        return self.qformer_hidden

    def merged_tokens(self, image_size: int) -> int:
        """Image tokens per image of a "merge" preset at `image_size`."""
        patches = (image_size // int(self.vision_kwargs["patch_size"])) ** 2
        if patches % self.merge_factor:
            raise ValueError(
                f"preset {self.name}: {patches} patches at {image_size} px are not a multiple of "
                f"merge_factor {self.merge_factor}"
            )
        return patches // self.merge_factor

    @property
    def lm_hidden(self) -> int:
        return int(self.lm_kwargs["hidden_size"])

    def with_image_size(self, image_size: int) -> ModelPreset:
        """Same architecture and weights, different input resolution (position embeddings interpolate)."""
        patch = int(self.vision_kwargs["patch_size"])
        if image_size <= 0 or image_size % patch:
            raise ValueError(f"image_size {image_size} must be a positive multiple of the patch size {patch}")
        if self.visual_tokens == "merge":  # more patches, more merged tokens
            return dataclasses.replace(
                self, image_size=image_size, num_query_tokens=self.merged_tokens(image_size)
            )
        return dataclasses.replace(self, image_size=image_size)

    def vision_config(self) -> Blip2VisionConfig:
        from transformers import Blip2VisionConfig

        return Blip2VisionConfig(**self.vision_kwargs)

    def qformer_config(self) -> Blip2QFormerConfig:
        from transformers import Blip2QFormerConfig

        return Blip2QFormerConfig(**self.qformer_kwargs)

    def lm_config(
        self, vocab_size: int | None = None, pad_token_id: int | None = None, qk_norm: bool = True
    ) -> PhiConfig:
        """PhiConfig with TinyGPT-V's QK LayerNorm switched on (off: the `qk_norm` ablation).

        The embedding table gets max(tokenizer size, preset vocab): phi-2 ships 51200 rows for a ~50.3k
        tokenizer, and keeping its size lets the real weights load unchanged.
        """
        from transformers import PhiConfig

        kwargs = dict(self.lm_kwargs)
        kwargs["qk_layernorm"] = qk_norm
        if vocab_size is not None:
            kwargs["vocab_size"] = max(int(vocab_size), int(kwargs.get("vocab_size", 0)))
        if "vocab_size" not in kwargs:
            raise ValueError(f"preset {self.name!r} has no vocab_size: pass the tokenizer's size")
        if pad_token_id is not None:
            kwargs["pad_token_id"] = pad_token_id
        config = PhiConfig(**kwargs)
        config._attn_implementation = self.attn_implementation
        return config


# Phi's activation is the tanh approximation of GELU ("gelu_new" in phi-2's config). torch computes
# the same function in one fused kernel (equal to 2.4e-7 in float32), 2.6x faster forward and
# backward on the CPU than gelu_new's chain of elementwise operations.
PHI_GELU = "gelu_pytorch_tanh"

_TINY = ModelPreset(
    name="tiny",
    # 64 px with 8 px patches: the same 64 patches as 32 px / 4 px, but the shapes-world shapes are
    # ~12 px instead of ~6. (4 px patches learnt shapes faster in a probe, but cost 1.4x the step
    # time and gave lower VQA accuracy for the same wall-clock budget.)
    image_size=64,
    vision_kwargs=dict(
        image_size=64,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        # Blip2VisionConfig defaults to 1e-10, which makes a random tower blind to its input; tests need
        # images to matter.
        initializer_range=0.02,
    ),
    qformer_kwargs=dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        cross_attention_frequency=1,
        encoder_hidden_size=64,
        max_position_embeddings=64,
        # BLIP-2 pre-trained its Q-Former with 0.1 dropout; the tiny one learns from a few thousand
        # images in minutes, where dropout only slows it down.
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    ),
    num_query_tokens=8,
    projection_hidden=128,
    lm_kwargs=dict(
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        partial_rotary_factor=0.5,
        max_position_embeddings=512,
        hidden_act=PHI_GELU,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    ),
    tokenizer=TINY_TOKENIZER,
    extra={"sincos_positions": True},
)

# EVA ViT-g/14 and the Q-Former exactly as in BLIP-2 (Salesforce/blip2-opt-2.7b).
_EVA_VIT_G = dict(
    image_size=224,
    patch_size=14,
    hidden_size=1408,
    num_hidden_layers=39,
    num_attention_heads=16,
    intermediate_size=6144,
    layer_norm_eps=1e-6,
    qkv_bias=True,
)
_BLIP2_QFORMER = dict(
    hidden_size=768,
    num_hidden_layers=12,
    num_attention_heads=12,
    intermediate_size=3072,
    cross_attention_frequency=2,
    encoder_hidden_size=1408,
)
_BLIP2_SOURCE = "Salesforce/blip2-opt-2.7b"

_PHI2 = ModelPreset(
    name="tinygptv-phi2",
    image_size=224,
    vision_kwargs=dict(_EVA_VIT_G),
    qformer_kwargs=dict(_BLIP2_QFORMER),
    num_query_tokens=32,
    projection_hidden=4096,
    lm_kwargs=dict(
        hidden_size=2560,
        num_hidden_layers=32,
        num_attention_heads=32,
        intermediate_size=10240,
        vocab_size=51200,
        partial_rotary_factor=0.4,
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        hidden_act=PHI_GELU,
        resid_pdrop=0.1,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    ),
    tokenizer="microsoft/phi-2",
    vision_source=_BLIP2_SOURCE,
    lm_source="microsoft/phi-2",
)

_PHI15 = dataclasses.replace(
    _PHI2,
    name="tinygptv-phi1_5",
    lm_kwargs=dict(
        hidden_size=2048,
        num_hidden_layers=24,
        num_attention_heads=32,
        intermediate_size=8192,
        vocab_size=51200,
        partial_rotary_factor=0.5,
        max_position_embeddings=2048,
        layer_norm_eps=1e-5,
        hidden_act=PHI_GELU,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attention_dropout=0.0,
        tie_word_embeddings=False,
    ),
    tokenizer="microsoft/phi-1_5",
    lm_source="microsoft/phi-1_5",
)

# MiniGPT-v2's light-weight compression instead of the Q-Former: 4 adjacent ViT tokens concatenated
# and projected (no Q-Former weights; the projection's first Linear reads 4 x the vision width).
_TINY_MERGE = dataclasses.replace(
    _TINY, name="tiny-merge", visual_tokens="merge", merge_factor=4, num_query_tokens=(64 // 8) ** 2 // 4
)
_PHI2_MERGE = dataclasses.replace(
    _PHI2,
    name="tinygptv-phi2-merge",
    visual_tokens="merge",
    merge_factor=4,
    num_query_tokens=(224 // 14) ** 2 // 4,
)

PRESETS: dict[str, ModelPreset] = {p.name: p for p in (_TINY, _TINY_MERGE, _PHI2, _PHI2_MERGE, _PHI15)}


def get_preset(name: str) -> ModelPreset:
    """Look a preset up by name; a bad name fails here, at spec load, not mid-run."""
    try:
        return PRESETS[name]
    except KeyError:
        raise KeyError(
            f"unknown model preset {name!r}; known presets: {', '.join(sorted(PRESETS))}"
        ) from None
