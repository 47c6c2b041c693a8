"""Batched decoding with a KV cache for VisionLanguageModel (greedy or temperature/top-p sampling).

Our own short loop instead of HF `generate`: image embeddings enter through inputs_embeds, and we
control masks and positions for left padding exactly (see model.packing), which is what makes a
batched prompt decode the same tokens as the prompt alone.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from .packing import decode_step_mask, padded_positions, padded_prompt_mask

if TYPE_CHECKING:
    from .vlm import VisionLanguageModel


def _choose(logits: torch.Tensor, temperature: float, top_p: float) -> torch.Tensor:
    """Next token per row from last-position logits [B, V]."""
    if temperature <= 0.0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(dim=-1, descending=True)
        # Drop a token when the tokens ranked above it already reach top_p; the first always stays.
        drop = sorted_probs.cumsum(dim=-1) - sorted_probs >= top_p
        sorted_probs = sorted_probs.masked_fill(drop, 0.0)
        probs = torch.zeros_like(probs).scatter_(-1, order, sorted_probs)
    return torch.multinomial(probs, num_samples=1).squeeze(-1)


@torch.no_grad()
def generate_tokens(
    model: VisionLanguageModel,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pixel_values: torch.Tensor | None,
    max_new_tokens: int,
    eos_token_ids: list[int],
    temperature: float = 0.0,
    top_p: float = 1.0,
    use_cache: bool = True,
) -> list[list[int]]:
    """New token ids per row, stopping at (and excluding) the first eos. `use_cache=False` re-runs
    the whole sequence at every step (the reference the KV cache must agree with; slower)."""
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if not bool(attention_mask[:, -1].all()):
        raise ValueError(
            "generate expects left-padded prompts: the last column of attention_mask must be all 1"
        )
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    batch = input_ids.shape[0]
    results: list[list[int]] = [[] for _ in range(batch)]
    if max_new_tokens <= 0:
        return results

    was_training = model.training
    model.eval()  # dropout off, or greedy decoding would not be deterministic
    # MM-Adapters route every new token of a row as its prompt (image or text-only)
    with model.modality_of(input_ids.to(attention_mask.device)):
        try:
            return _decode(
                model,
                input_ids,
                attention_mask,
                pixel_values,
                max_new_tokens,
                eos_token_ids,
                temperature,
                top_p,
                use_cache,
                results,
            )
        finally:
            model.train(was_training)


def _decode(
    model,
    input_ids,
    attention_mask,
    pixel_values,
    max_new_tokens,
    eos_token_ids,
    temperature,
    top_p,
    use_cache,
    results,
) -> list[list[int]]:
    """The prefill and the decode loop of generate_tokens (its arguments, checked)."""
    batch = input_ids.shape[0]
    lm = model.language_model
    embeds = model.embed_inputs(input_ids, pixel_values)
    mask = attention_mask.to(device=embeds.device, dtype=torch.long)
    positions = padded_positions(mask)
    out = lm(
        inputs_embeds=embeds,
        attention_mask=padded_prompt_mask(mask, embeds.dtype),
        position_ids=positions,
        use_cache=use_cache,
    )
    cache = out.past_key_values if use_cache else None
    logits = out.logits[:, -1]
    next_position = positions[:, -1:] + 1
    eos = torch.tensor(sorted(set(eos_token_ids)), device=embeds.device, dtype=torch.long)
    finished = torch.zeros(batch, dtype=torch.bool, device=embeds.device)

    for step in range(max_new_tokens):
        tokens = _choose(logits, temperature, top_p)
        finished |= torch.isin(tokens, eos)
        for row in torch.nonzero(~finished).flatten().tolist():
            results[row].append(int(tokens[row]))
        if bool(finished.all()) or step == max_new_tokens - 1:
            break
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        if not use_cache:
            embeds = torch.cat([embeds, lm.get_input_embeddings()(tokens[:, None])], dim=1)
            out = lm(
                inputs_embeds=embeds,
                attention_mask=padded_prompt_mask(mask, embeds.dtype),
                position_ids=padded_positions(mask),
                use_cache=False,
            )
            logits = out.logits[:, -1]
            continue
        out = lm(
            inputs_embeds=lm.get_input_embeddings()(tokens[:, None]),
            attention_mask=decode_step_mask(mask, embeds.dtype),
            position_ids=next_position,
            past_key_values=cache,
            use_cache=True,
        )
        cache = out.past_key_values
        logits = out.logits[:, -1]
        next_position = next_position + 1
    return results
