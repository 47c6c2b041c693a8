"""Packed rows without a dense mask: the block-diagonal causal attention of model/packing.py as a
FlexAttention block mask, so the kernel skips every block between two samples instead of
masking an [L, L] matrix.

The language model is switched to an attention function registered with transformers under
PACKED_ATTENTION: a BlockMask goes to FlexAttention, anything else (a dense 4-D mask, or none) to
SDPA exactly as before, so generation and padded prompts are unchanged. FlexAttention is compiled
on CUDA (its fast path). On the CPU it runs eagerly, forward only (torch has no CPU backward for it):
exact, but it materialises the scores, so `attention: auto` picks it on CUDA only and a training
stage refuses it elsewhere.
"""

from __future__ import annotations

import functools
import warnings

import torch

PACKED_ATTENTION = "vlmpipe_packed"
BLOCK = 128  # FlexAttention's default tile: a block of 128 queries x 128 keys is skipped or computed


def flex_available() -> bool:
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def packed_block_mask(segment_ids: torch.Tensor):
    """BlockMask for rows of contiguous samples (segment 0 = padding, which attends to itself only):
    the same allowed pairs as model.packing.packed_attention_mask."""
    from torch.nn.attention.flex_attention import create_block_mask

    segs = segment_ids
    batch, length = segs.shape

    def allowed(b, h, q, kv):
        same = (segs[b, q] == segs[b, kv]) & (segs[b, q] > 0) & (q >= kv)
        return same | (q == kv)

    return create_block_mask(allowed, batch, None, length, length, device=segs.device, BLOCK_SIZE=BLOCK)


def _packed_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from torch.nn.attention.flex_attention import BlockMask
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if not isinstance(attention_mask, BlockMask):
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, **kwargs
        )
    if dropout:
        raise ValueError(
            "block-sparse attention has no attention dropout; set the LM's attention_dropout to 0"
        )
    kwargs = {"block_mask": attention_mask, "scale": scaling, "enable_gqa": query.shape[1] != key.shape[1]}
    if query.device.type == "cuda":
        out = _compiled_flex()(query, key, value, **kwargs)
    else:  # eager: exact, unfused (torch warns about that on every call; this is what we chose)
        from torch.nn.attention.flex_attention import flex_attention

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*flex_attention called without torch.compile")
            out = flex_attention(query, key, value, **kwargs)
    return out.transpose(1, 2).contiguous(), None


def register() -> None:
    """Make PACKED_ATTENTION a name transformers' models accept (idempotent)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(PACKED_ATTENTION, _packed_attention)
    if PACKED_ATTENTION not in ALL_MASK_ATTENTION_FUNCTIONS:
        AttentionMaskInterface.register(PACKED_ATTENTION, sdpa_mask)
