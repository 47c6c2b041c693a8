"""Answers from a model (greedy unless a temperature is given) for (example, image) pairs: prompts rendered by the one template
registry (tasks/data/templates.py) and encoded as in training, left-padded, decoded to the end symbol.
"""

from __future__ import annotations

from typing import Any

import torch

from model.tokenizer import pad_token_id
from tasks.data.examples import TaskExample
from tasks.data.packing import encode_segments
from tasks.data.templates import clean_answer, render


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    preprocess,
    items: list[tuple[TaskExample, Any]],
    *,
    template: str,
    end_sym: str,
    num_query_tokens: int,
    max_new_tokens: int,
    batch_size: int,
    instructions: list[str] | None = None,
    temperature: float = 0.0,
    top_p: float = 1.0,
) -> list[str]:
    """Answers for (example, PIL image) pairs, prompts rendered by the template registry (with the
    task's default instructions, or `instructions`: ["{}"] asks the query as it is). Greedy by
    default; `temperature` > 0 samples, from the smallest set of tokens holding `top_p` of the mass."""
    model.eval()
    pad = pad_token_id(tokenizer)
    eos = [
        t
        for t in {tokenizer.eos_token_id, *tokenizer(end_sym, add_special_tokens=False)["input_ids"][:1]}
        if t is not None
    ]
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = []
        for example, _ in chunk:
            segments = render(
                example, template, end_sym=end_sym, instructions=instructions, with_answer=False
            )
            ids, _, _ = encode_segments(
                segments,
                tokenizer,
                image_token_id=model.image_token_id,
                num_query_tokens=num_query_tokens,
                max_len=10_000,
            )
            prompts.append(ids)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        # a text-only item (image None) has no image placeholder: only the others' pixels go in
        images = [image for _, image in chunk if image is not None]
        pixels = preprocess(images) if images else None
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            pixel_values=pixels,
            max_new_tokens=max_new_tokens,
            eos_token_ids=eos,
            temperature=temperature,
            top_p=top_p,
        )
        answers += [clean_answer(tokenizer.decode(t, skip_special_tokens=True), end_sym) for t in out]
    return answers
