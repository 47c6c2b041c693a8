"""Auxiliary training losses beside the autoregressive one.

`semantic_transform_loss` is EIM's lossST: the mean of a sample's projected image tokens should be
closer to the mean LM input embedding of that sample's own text than to any other sample's (InfoNCE,
both directions). It pulls the projection's output into the LM's word-embedding space, so the LM can
read an image token the way it reads a word. EIM keeps a queue of past text features; we contrast
within the batch (a packed batch holds tens of samples) and remove the part every sample shares (the
template's tokens) by centring both sides over the batch before the cosine.
"""

from __future__ import annotations

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
) -> tuple[torch.Tensor, int]:
    """InfoNCE between each sample's mean image embedding and its mean text embedding.

    inputs_embeds: the LM's input [B,T,H] with image embeddings already written in (gradients reach
    the projection, Q-Former and vision tower through them). A sample is a segment of a packed row
    (segment_ids > 0) or a whole padded row (attention_mask). Samples without an image or without text
    take no part. Returns (loss, number of samples contrasted); the loss is 0 below two samples.
    """
    batch, length = input_ids.shape
    if segment_ids is None:
        real = (
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool()
        )
        segments = real.long()  # one sample per row
    else:
        segments = segment_ids.long()
        real = segments > 0
    width = int(segments.max()) + 1 if segments.numel() else 1
    keys = torch.arange(batch, device=input_ids.device).unsqueeze(1) * width + segments
    num_keys = batch * width
    is_image = input_ids == image_token_id
    image_mean, image_count = segment_means(inputs_embeds, keys, real & is_image, num_keys)
    text_mean, text_count = segment_means(inputs_embeds, keys, real & ~is_image, num_keys)
    keep = (image_count > 0) & (text_count > 0)
    n = int(keep.sum())
    if n < 2:
        return inputs_embeds.sum() * 0.0, n
    image = image_mean[keep].float()
    text = text_mean[keep].float()
    image = F.normalize(image - image.mean(0, keepdim=True), dim=-1)
    text = F.normalize(text - text.mean(0, keepdim=True), dim=-1)
    logits = image @ text.T / temperature
    target = torch.arange(n, device=logits.device)
    loss = 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))
    return loss, n
