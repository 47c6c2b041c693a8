"""VisionLanguageModel: vision tower -> Q-Former -> projection -> Phi, as in TinyGPT-V.

Images become `num_query_tokens` embeddings each, written into the LM's input embeddings wherever the
text holds the `<image>` token (the data pipeline expands one placeholder into Q of them). Supports
padded batches, packed rows (segment_ids) and cached generation.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .attention import packed_block_mask
from .generation import generate_tokens
from .language import build_language_model, check_ablations, embedding_rows, prepare_language_model
from .lora import DEFAULT_LORA, LoraSettings, MMAdapterSettings
from .mm_adapter import inject_mm_adapters, inject_vision_mm_adapters, token_modality
from .packing import (
    packed_attention_mask,
    padded_positions,
    padded_prompt_mask,
    same_segment_targets,
    segment_positions,
)
from .presets import ModelPreset, get_preset
from .pretrained import PretrainedParts, load_pretrained_parts
from .projection import ImageProjection
from .qformer import QueryTransformer, TokenMerge
from .tokenizer import IGNORE_INDEX
from .tokenizer import image_token_id as find_image_token_id
from .tokenizer import pad_token_id as tokenizer_pad_id
from .vision import VisionTower, build_vision_tower


@dataclass
class VisionLanguageOutput:
    loss: torch.Tensor | None  # mean CE over predicted labels (0 when there are none)
    logits: torch.Tensor  # [B, T, V]
    num_label_tokens: int  # how many labels the loss averaged over (what a sum over micro-batches weighs by)
    inputs_embeds: torch.Tensor | None = None  # the LM's input, image embeddings in (return_embeds=True)


class VisionLanguageModel(nn.Module):
    def __init__(
        self,
        preset: ModelPreset,
        vocab_size: int,
        image_token_id: int,
        pad_token_id: int,
        lora: LoraSettings | None = DEFAULT_LORA,
        *,
        pretrained_parts: PretrainedParts | None = None,
        ablate: tuple[str, ...] = (),
        mm_adapter: MMAdapterSettings | None = None,
    ):
        """Build from the preset's configs (random init from torch's global RNG), or around
        `pretrained_parts` (see from_preset(pretrained=True)). Parameters are float32 unless the parts
        came in another dtype; cast the whole model afterwards (from_preset's `dtype` does).
        `ablate` removes TinyGPT-V's LM changes by name (model/language.py ABLATIONS): `lora` drops the
        adapters (whatever `lora` says), `qk_norm`, `post_attention_norm`, `input_layernorm` their norms.
        `mm_adapter` adds LaVIN's MM-Adapters to the LM (model/mm_adapter.py) instead of LoRA, and to the
        vision tower's blocks when its `vision` is set."""
        super().__init__()
        ablate = check_ablations(ablate)
        self.ablated = ablate
        if "lora" in ablate or mm_adapter is not None:
            lora = None
        self.preset = preset
        self.image_token_id = int(image_token_id)
        self.pad_token_id = int(pad_token_id)
        self.lora_settings = lora
        if pretrained_parts is None:
            vision = build_vision_tower(preset)
            qformer = (
                TokenMerge.from_preset(preset)
                if preset.visual_tokens == "merge"
                else QueryTransformer.from_preset(preset)
            )
            lm = build_language_model(preset, vocab_size, pad_token_id, qk_norm="qk_norm" not in ablate)
        else:
            vision = pretrained_parts.vision
            qformer = (
                TokenMerge.from_preset(preset)
                if preset.visual_tokens == "merge"
                else QueryTransformer(pretrained_parts.qformer, pretrained_parts.query_tokens)
            )
            lm = pretrained_parts.language_model
        if max(self.image_token_id, self.pad_token_id) >= embedding_rows(lm):
            raise ValueError(f"token ids must be below the embedding size {embedding_rows(lm)}")
        self.vision = VisionTower(vision)
        self.qformer = qformer
        self.projection = ImageProjection(preset.bridge_width, preset.projection_hidden, preset.lm_hidden)
        self.language_model = prepare_language_model(lm, lora, ablate)
        self.mm_adapter_settings = mm_adapter
        if mm_adapter is not None:
            inject_mm_adapters(self.language_model, mm_adapter)
            if mm_adapter.vision:
                inject_vision_mm_adapters(self.vision.vit, mm_adapter)
        self.vocab_size = embedding_rows(self.language_model)
        self.block_sparse = False  # packed rows through FlexAttention block masks (set_packed_attention)

    @classmethod
    def from_preset(
        cls,
        name_or_preset: str | ModelPreset,
        tokenizer,
        lora: LoraSettings | None = DEFAULT_LORA,
        pretrained: bool = False,
        *,
        dtype: torch.dtype | None = None,
        ablate: tuple[str, ...] = (),
        mm_adapter: MMAdapterSettings | None = None,
    ) -> VisionLanguageModel:
        preset = get_preset(name_or_preset) if isinstance(name_or_preset, str) else name_or_preset
        vocab_size = len(tokenizer)
        pad = tokenizer_pad_id(tokenizer)
        image_id = find_image_token_id(tokenizer)  # fail before any (slow) weight loading
        ablate = check_ablations(ablate)
        parts = (
            load_pretrained_parts(preset, vocab_size, dtype, qk_norm="qk_norm" not in ablate)
            if pretrained
            else None
        )
        model = cls(
            preset,
            vocab_size,
            image_id,
            pad,
            lora,
            pretrained_parts=parts,
            ablate=ablate,
            mm_adapter=mm_adapter,
        )
        if dtype is not None:
            model.to(dtype)
        return model

    # ----------------------------------------------------------------------------------- images

    @property
    def image_tokens_per_image(self) -> int:
        return self.qformer.num_queries

    def query_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[N,3,H,W] -> the Q-Former's query outputs [N, Q, qformer_hidden]: what a feature cache
        stores (tasks/ingest/features.py), and all the frozen towers contribute."""
        # a frozen tower runs without building a graph: nothing before it trains
        frozen_vision = not any(p.requires_grad for p in self.vision.parameters())
        with torch.no_grad() if frozen_vision else contextlib.nullcontext():
            vision_states = self.vision(pixel_values)
        frozen_qformer = frozen_vision and not any(p.requires_grad for p in self.qformer.parameters())
        with torch.no_grad() if frozen_qformer else contextlib.nullcontext():
            return self.qformer(vision_states)

    def encode_images(
        self, pixel_values: torch.Tensor | None = None, *, image_features: torch.Tensor | None = None
    ) -> torch.Tensor:
        """[N,3,H,W] pixels, or [N, Q, qformer_hidden] cached query features -> [N, Q, lm_hidden]."""
        if image_features is None:
            image_features = self.query_features(pixel_values)
        # the projection's compute dtype: its first float tensor (a quantised Linear stores int weights)
        ref = next(t for t in self.projection.parameters() if t.is_floating_point())
        return self.projection(image_features.to(ref.device, ref.dtype))

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        *,
        image_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Token embeddings with every `<image>` position replaced by image embeddings, row-major.
        Images come as pixels or as cached query features (`image_features`), not both."""
        if pixel_values is not None and image_features is not None:
            raise ValueError("pass pixel_values or image_features, not both")
        embeds = self.language_model.get_input_embeddings()(input_ids)
        is_image = input_ids == self.image_token_id
        slots = int(is_image.sum())
        given = pixel_values if image_features is None else image_features
        images = 0 if given is None else given.shape[0]
        needed = images * self.image_tokens_per_image
        if slots != needed:
            raise ValueError(
                f"{slots} <image> token positions in input_ids but {images} images x "
                f"{self.image_tokens_per_image} query tokens = {needed} image embeddings; expand each "
                f"image placeholder into {self.image_tokens_per_image} tokens and pass one image per placeholder"
            )
        if images == 0:
            return embeds
        image_embeds = self.encode_images(pixel_values, image_features=image_features).to(embeds.dtype)
        # masked_scatter fills positions in row-major order and keeps the graph for both sources.
        return embeds.masked_scatter(is_image[..., None], image_embeds.reshape(-1, embeds.shape[-1]))

    # ---------------------------------------------------------------------------------- forward

    def forward(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        segment_ids: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        return_embeds: bool = False,
        image_features: torch.Tensor | None = None,
    ) -> VisionLanguageOutput:
        """Logits for every position; with `labels` (aligned to input_ids, -100 = ignore), the mean
        next-token cross-entropy. With `segment_ids` (packed rows: 0 = pad, k = k-th sample) each
        sample attends only to itself, positions restart per sample and the attention_mask is ignored.
        `return_embeds` keeps the LM's input embeddings on the output (for auxiliary losses).
        `image_features` replaces `pixel_values` with cached Q-Former outputs (frozen towers)."""
        for name, other in (
            ("attention_mask", attention_mask),
            ("segment_ids", segment_ids),
            ("labels", labels),
        ):
            if other is not None and other.shape != input_ids.shape:
                raise ValueError(f"{name} has shape {tuple(other.shape)}, input_ids {tuple(input_ids.shape)}")
        embeds = self.embed_inputs(input_ids, pixel_values, image_features=image_features)
        if segment_ids is not None:
            segment_ids = segment_ids.to(embeds.device)
            if self.block_sparse:
                mask = packed_block_mask(segment_ids)
            else:
                mask = packed_attention_mask(segment_ids, embeds.dtype)
            positions = segment_positions(segment_ids)
        elif attention_mask is not None and not bool(attention_mask.all()):
            mask = padded_prompt_mask(attention_mask.to(embeds.device), embeds.dtype)
            positions = padded_positions(attention_mask.to(embeds.device))
        else:
            mask, positions = None, None  # plain causal: lets SDPA take its is_causal fast path
        with self.modality_of(input_ids, segment_ids):
            out = self.language_model(
                inputs_embeds=embeds, attention_mask=mask, position_ids=positions, use_cache=False
            )
        logits = out.logits
        kept = embeds if return_embeds else None
        if labels is None:
            return VisionLanguageOutput(loss=None, logits=logits, num_label_tokens=0, inputs_embeds=kept)

        targets = labels[:, 1:].to(logits.device)
        if segment_ids is not None:
            targets = targets.masked_fill(~same_segment_targets(segment_ids), IGNORE_INDEX)
        count = int((targets != IGNORE_INDEX).sum())
        summed = F.cross_entropy(
            logits[:, :-1].flatten(0, 1).float(),
            targets.flatten(),
            ignore_index=IGNORE_INDEX,
            reduction="sum",
        )
        # Zero (with a graph) rather than NaN for a batch without labels.
        loss = summed / max(count, 1)
        return VisionLanguageOutput(loss=loss, logits=logits, num_label_tokens=count, inputs_embeds=kept)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        max_new_tokens: int,
        eos_token_ids: list[int],
        temperature: float = 0.0,
        top_p: float = 1.0,
        use_cache: bool = True,
    ) -> list[list[int]]:
        """Decode left-padded prompts; returns the new tokens of each row, without the eos."""
        return generate_tokens(
            self,
            input_ids,
            attention_mask,
            pixel_values,
            max_new_tokens,
            eos_token_ids,
            temperature,
            top_p,
            use_cache=use_cache,
        )

    # ---------------------------------------------------------------------------------- utility

    @contextlib.contextmanager
    def modality_of(self, input_ids: torch.Tensor, segment_ids: torch.Tensor | None = None):
        """While inside: the MM-Adapters (if any) route each token by its sample's modality (image
        or text-only), read from `input_ids`' image tokens and the packed `segment_ids`."""
        adapters = getattr(self.language_model, "mm_adapter", None)
        if adapters is None:
            yield
            return
        adapters.modality = token_modality(input_ids, self.image_token_id, segment_ids)
        try:
            yield
        finally:
            adapters.modality = None

    def set_packed_attention(self, mode: str) -> None:
        """ "dense": packed rows through an explicit [L, L] mask (any kernel, any device).
        "block_sparse": through a FlexAttention block mask (model/attention.py); other inputs
        (padded prompts, generation) keep SDPA either way. Both give the same logits."""
        from . import attention

        if mode not in ("dense", "block_sparse"):
            raise ValueError(f"packed attention {mode!r}: choose dense or block_sparse")
        if mode == "block_sparse":
            if not attention.flex_available():
                raise RuntimeError("block_sparse attention needs torch's FlexAttention (torch >= 2.5)")
            attention.register()
            self._dense_attention = self.language_model.config._attn_implementation
            self._set_lm_attention(attention.PACKED_ATTENTION)
        elif self.block_sparse:
            self._set_lm_attention(getattr(self, "_dense_attention", "sdpa"))
        self.block_sparse = mode == "block_sparse"

    def _set_lm_attention(self, name: str) -> None:
        for module in self.language_model.modules():
            config = getattr(module, "config", None)
            if config is not None and hasattr(config, "_attn_implementation"):
                config._attn_implementation = name

    def enable_gradient_checkpointing(self) -> None:
        """Recompute LM layers and vision blocks in backward (non-reentrant: frozen inputs are fine)."""
        kwargs = {"use_reentrant": False}
        self.language_model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        self.vision.vit.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)

    def config_summary(self) -> dict:
        from .trainable import parameter_counts

        counts = parameter_counts(self)
        return {
            "preset": self.preset.name,
            "image_size": self.preset.image_size,
            "image_tokens_per_image": self.image_tokens_per_image,
            "vocab_size": self.vocab_size,
            "lora": None if self.lora_settings is None else asdict(self.lora_settings),
            "ablated": list(self.ablated),
            "mm_adapter": None if self.mm_adapter_settings is None else asdict(self.mm_adapter_settings),
            "parameters": {group: total for group, (total, _) in counts.items()},
            "trainable_parameters": {group: trainable for group, (_, trainable) in counts.items()},
            "total_parameters": sum(total for total, _ in counts.values()),
        }
