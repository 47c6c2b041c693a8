"""Auxiliary training losses beside the autoregressive one: EIM's three contrastive losses.

- `semantic_transform_loss` (lossST): the mean of a sample's projected image tokens should be closer
  to the mean LM input embedding of that sample's own text than to any other sample's. It pulls the
  projection's output into the LM's word-embedding space, so the LM can read an image token the way
  it reads a word. Gradients reach the projection (and the towers, when they train), never the LM.
- `language_model_loss` (lossLM): the tuned LM's last-token state of each sample should be closer to
  the frozen original LM's state for the same sample (the LM with its adapters switched off) than to
  any other sample's. It keeps what the adapters learn anchored to what the LM knew. Its input
  embeddings are detached: gradients reach the LM's trainable groups only.
- `image_encoder_loss` (lossIE): the vision tower's pooled output of each image should be closer to
  the text feature of its own caption than to any other's. The text tower is a frozen bag of words:
  the mean of the LM's input embeddings, through a fixed, seeded random projection to the vision
  width (no trainable head). Gradients reach the vision tower only.

Each is InfoNCE at a temperature (EIM: 0.07) over the step's samples, with both sides centred over
the batch (what every sample shares, e.g. the template's tokens, says nothing about which sample is
which). With a `queue` (keys computed once per stage from its training texts, tasks/train/keys.py),
the queue's keys are extra negatives for every sample. A loss is 0 below two samples.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F


def segment_means(
    values: torch.Tensor, keys: torch.Tensor, select: torch.Tensor, num_keys: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of `values` [B,T,H] over the positions where `select` holds, grouped by `keys` [B,T]
    (0..num_keys-1). Returns (means [num_keys, H], counts [num_keys])."""
    flat_keys = keys[select]
    sums = values.new_zeros(num_keys, values.shape[-1]).index_add(0, flat_keys, values[select])
    counts = torch.bincount(flat_keys, minlength=num_keys)
    return sums / counts.clamp(min=1).unsqueeze(-1).to(values.dtype), counts


def semantic_transform_loss(
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    image_token_id: int,
    *,
    segment_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.07,
    queue: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """EIM's lossST: InfoNCE between each sample's mean image embedding and its mean text embedding.

    inputs_embeds: the LM's input [B,T,H] with image embeddings already written in (gradients reach
    the projection, Q-Former and vision tower through them). A sample is a segment of a packed row
    (segment_ids > 0) or a whole padded row (attention_mask). Samples without an image or without text
    take no part. `queue`: text keys [m, H] (mean embeddings of training texts) as extra negatives.
    Returns (loss, number of samples contrasted); the loss is 0 below two samples.
    """
    keys, real, num_keys = sample_index(input_ids, segment_ids, attention_mask)
    is_image = input_ids == image_token_id
    image_mean, image_count = segment_means(inputs_embeds, keys, real & is_image, num_keys)
    text_mean, text_count = segment_means(inputs_embeds, keys, real & ~is_image, num_keys)
    keep = (image_count > 0) & (text_count > 0)
    n = int(keep.sum())
    if n < 2:
        return inputs_embeds.sum() * 0.0, n
    # the text side is the LM's (frozen) word embeddings: a key, never trained by this loss
    return info_nce(image_mean[keep], text_mean[keep].detach(), temperature, queue), n


def info_nce(
    queries: torch.Tensor, keys: torch.Tensor, temperature: float, queue: torch.Tensor | None = None
) -> torch.Tensor:
    """Symmetric InfoNCE between row-aligned `queries` [n, D] and `keys` [n, D], both centred over
    the batch and L2-normalised; a `queue` [m, D] of keys adds m negatives to every query (centred
    with the batch's key mean, so that the queue and the batch share one origin)."""
    q = queries.float()
    k = keys.float()
    key_mean = k.mean(0, keepdim=True)
    q = F.normalize(q - q.mean(0, keepdim=True), dim=-1)
    k = F.normalize(k - key_mean, dim=-1)
    logits = q @ k.T / temperature
    target = torch.arange(q.shape[0], device=logits.device)
    forward = logits
    if queue is not None and queue.numel():
        negatives = F.normalize(queue.to(k.device, torch.float32) - key_mean, dim=-1)
        forward = torch.cat([logits, q @ negatives.T / temperature], dim=1)
    return 0.5 * (F.cross_entropy(forward, target) + F.cross_entropy(logits.T, target))


def sample_index(
    input_ids: torch.Tensor, segment_ids: torch.Tensor | None, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(keys [B, T] numbering every sample of the batch, real [B, T] bool, number of keys): a sample
    is a packed segment (segment_ids > 0) or a whole row (attention_mask, else every position)."""
    batch = input_ids.shape[0]
    if segment_ids is None:
        real = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        segments = real.long()
    else:
        segments = segment_ids.long()
        real = segments > 0
    width = int(segments.max()) + 1 if segments.numel() else 1
    keys = torch.arange(batch, device=input_ids.device).unsqueeze(1) * width + segments
    return keys, real, batch * width


def last_positions(keys: torch.Tensor, real: torch.Tensor, num_keys: int) -> torch.Tensor:
    """Flat index (into B*T) of the last real position of every key that has one; -1 otherwise."""
    flat = torch.arange(keys.numel(), device=keys.device)
    last = torch.full((num_keys,), -1, dtype=torch.long, device=keys.device)
    return last.scatter_reduce(0, keys.flatten()[real.flatten()], flat[real.flatten()], reduce="amax")


def text_means(
    inputs_embeds: torch.Tensor, input_ids: torch.Tensor, image_token_id: int, segment_ids, attention_mask
) -> torch.Tensor:
    """Mean LM input embedding of each sample's text tokens [samples with text, H]."""
    keys, real, num_keys = sample_index(input_ids, segment_ids, attention_mask)
    means, counts = segment_means(inputs_embeds, keys, real & (input_ids != image_token_id), num_keys)
    return means[counts > 0]


def last_token_states(
    model, inputs_embeds: torch.Tensor, input_ids: torch.Tensor, segment_ids, attention_mask
) -> torch.Tensor:
    """The LM's final hidden state at each sample's last token [samples, H] (packed samples attend
    only to themselves, as in training)."""
    from .packing import packed_attention_mask, padded_positions, padded_prompt_mask, segment_positions

    if segment_ids is not None:
        mask = packed_attention_mask(segment_ids, inputs_embeds.dtype)
        positions = segment_positions(segment_ids)
    elif attention_mask is not None and not bool(attention_mask.all()):
        mask = padded_prompt_mask(attention_mask, inputs_embeds.dtype)
        positions = padded_positions(attention_mask)
    else:
        mask = positions = None
    with model.modality_of(input_ids, segment_ids):
        out = model.language_model.model(
            inputs_embeds=inputs_embeds, attention_mask=mask, position_ids=positions, use_cache=False
        )
    hidden = out.last_hidden_state
    keys, real, num_keys = sample_index(input_ids, segment_ids, attention_mask)
    last = last_positions(keys, real, num_keys)
    return hidden.reshape(-1, hidden.shape[-1])[last[last >= 0]]


@contextlib.contextmanager
def adapters_off(model):
    """The LM as it was before its adapters trained: LoRA layers and MM-Adapters switched off."""
    from peft.tuners.lora import LoraLayer

    lora = [m for m in model.language_model.modules() if isinstance(m, LoraLayer)]
    adapters = getattr(model.language_model, "mm_adapter", None)
    scales = [layer.scale for layer in adapters.layers] if adapters is not None else []
    for m in lora:
        m.enable_adapters(False)
    if adapters is not None:
        for layer in adapters.layers:
            layer.scale = 0.0
    try:
        yield
    finally:
        for m in lora:
            m.enable_adapters(True)
        if adapters is not None:
            for layer, scale in zip(adapters.layers, scales, strict=True):
                layer.scale = scale


def language_model_loss(
    model,
    inputs_embeds: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    segment_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.07,
    queue: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """EIM's lossLM: InfoNCE between each sample's last-token state from the tuned LM and from the
    frozen original one (adapters off). `inputs_embeds` is detached: only the LM's groups learn."""
    embeds = inputs_embeds.detach()
    with torch.no_grad(), adapters_off(model):
        frozen = last_token_states(model, embeds, input_ids, segment_ids, attention_mask)
    tuned = last_token_states(model, embeds, input_ids, segment_ids, attention_mask)
    n = tuned.shape[0]
    if n < 2:
        return tuned.sum() * 0.0, n
    return info_nce(tuned, frozen, temperature, queue), n


def text_tower_projection(text_width: int, image_width: int, seed: int = 0) -> torch.Tensor:
    """lossIE's fixed text tower: a seeded Gaussian projection [text_width, image_width] of the
    mean word embedding (distances are kept up to a factor, Johnson-Lindenstrauss)."""
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(text_width, image_width, generator=generator) / math.sqrt(image_width)


def caption_features(model, input_ids, segment_ids, attention_mask, seed: int = 0) -> torch.Tensor:
    """lossIE's text features [samples with an image and text, vision width]: each sample's mean
    frozen word embedding through the fixed text-tower projection."""
    lm_embed = model.language_model.get_input_embeddings()
    with torch.no_grad():
        words = lm_embed(input_ids)
        keys, real, num_keys = sample_index(input_ids, segment_ids, attention_mask)
        is_image = input_ids == model.image_token_id
        means, counts = segment_means(words, keys, real & ~is_image, num_keys)
        _, image_counts = segment_means(words, keys, real & is_image, num_keys)
        keep = (counts > 0) & (image_counts > 0)
        projection = text_tower_projection(words.shape[-1], model.preset.vision_hidden, seed)
        return means[keep].float() @ projection.to(words.device)


def image_encoder_loss(
    model,
    pixel_values: torch.Tensor,
    input_ids: torch.Tensor,
    *,
    segment_ids: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    temperature: float = 0.07,
    queue: torch.Tensor | None = None,
    seed: int = 0,
) -> tuple[torch.Tensor, int]:
    """EIM's lossIE: InfoNCE between each image's pooled vision-tower output (mean over its patch
    tokens) and its caption's text feature (`caption_features`). Images come in the order of their
    samples, one per sample that has one."""
    text = caption_features(model, input_ids, segment_ids, attention_mask, seed)
    n = text.shape[0]
    if n != pixel_values.shape[0]:
        raise ValueError(
            f"lossIE: {pixel_values.shape[0]} images for {n} samples with an image and a caption"
        )
    pooled = model.vision(pixel_values)[:, 1:].mean(1)  # patch tokens, after BLIP-2's ln_vision
    if n < 2:
        return pooled.sum() * 0.0, n
    return info_nce(pooled, text, temperature, queue), n
