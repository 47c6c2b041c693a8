"""Attention masks and position ids for packed rows, left-padded prompts and KV-cache decoding.

We always hand Phi an explicit additive 4-D mask [B,1,Tq,Tk] (0 = attend, dtype-min = blocked):
transformers returns 4-D masks untouched (masking_utils._preprocess_mask_arguments), and both the sdpa
and eager kernels accept an additive float mask, so the same mask is exact on either.

Packing, one row holding samples A (3 tokens), B (2 tokens) and padding:

    segment_ids  1 1 1 2 2 0 0
    position_ids 0 1 2 0 1 0 1
    mask (x = attend)   A: lower triangle of A only; B: lower triangle of B only; pad: itself only
"""

from __future__ import annotations

import torch


def _additive(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # dtype-min rather than -inf: a softmax over a row of finite values never yields NaN.
    mask = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)


def segment_positions(segment_ids: torch.Tensor) -> torch.Tensor:
    """Position ids restarting at 0 wherever the segment id changes (padding counts as a segment)."""
    batch, length = segment_ids.shape
    index = torch.arange(length, device=segment_ids.device).expand(batch, length)
    starts = torch.ones_like(segment_ids, dtype=torch.bool)
    starts[:, 1:] = segment_ids[:, 1:] != segment_ids[:, :-1]
    # Index of the most recent segment start at or before each position.
    start_index = torch.where(starts, index, torch.zeros_like(index)).cummax(dim=-1).values
    return index - start_index


def packed_attention_mask(segment_ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Block-diagonal causal mask [B,1,T,T]: a token sees earlier tokens of its own segment only.

    Segments must be contiguous runs (the packer's layout). Padding (0) attends only to itself, which
    keeps its softmax finite and leaks nothing into real tokens (nobody attends to padding).
    """
    length = segment_ids.shape[1]
    device = segment_ids.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    same = segment_ids[:, :, None] == segment_ids[:, None, :]
    real = (segment_ids > 0)[:, :, None]
    allowed = same & causal & real
    allowed |= torch.eye(length, dtype=torch.bool, device=device)
    return _additive(allowed[:, None], dtype)


def padded_prompt_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Causal mask [B,1,T,T] for (left- or right-) padded rows: keys that are padding are blocked."""
    length = attention_mask.shape[1]
    device = attention_mask.device
    causal = torch.ones(length, length, dtype=torch.bool, device=device).tril()
    allowed = causal & attention_mask.bool()[:, None, :]
    allowed |= torch.eye(length, dtype=torch.bool, device=device)
    return _additive(allowed[:, None], dtype)


def decode_step_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mask [B,1,1,K] for one new token attending to all cached keys that are not padding."""
    return _additive(attention_mask.bool()[:, None, None, :], dtype)


def padded_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counting real tokens only, so a left-padded prompt sees the same positions as alone."""
    return (attention_mask.long().cumsum(dim=-1) - 1).clamp(min=0)


def same_segment_targets(segment_ids: torch.Tensor) -> torch.Tensor:
    """[B, T-1] bool: whether position t+1's label may be predicted from position t.

    False across a segment boundary (the last token of one sample must not be trained to predict the
    first token of the next) and into padding.
    """
    return (segment_ids[:, 1:] == segment_ids[:, :-1]) & (segment_ids[:, 1:] > 0)
