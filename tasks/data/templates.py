"""The one prompt-template registry used by training, evaluation and generation.

A `TaskExample` is rendered into text segments, each marked as prompt or answer; training puts
the loss on answer segments only, evaluation and generation stop after the last prompt. Task
identifiers ([vqa], [refer], ...) are prefixed here, never written into data or spec pools.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from data_specs.registry import TEMPLATES
from tasks.data.examples import TASK_IDENTIFIERS, TaskExample, Turn

IMAGE_PLACEHOLDER = "<ImageHere>"
IMAGE_BLOCK = f"<Img>{IMAGE_PLACEHOLDER}</Img>"

# Instruction pools without identifiers; `{}` takes the turn's query.
_SHORT_ANSWER = ["{}", "Based on the image, answer with a short answer: {}"]
DEFAULT_INSTRUCTIONS: dict[str, list[str]] = {
    "image_text": [""],
    "caption": ["Briefly describe this image.", "A short caption for this image:", "Summarise the image."],
    "detailed_description": [
        "Describe this image in detail.",
        "Take a close look at the image and describe it.",
    ],
    "vqa": _SHORT_ANSWER,
    "vqa_turns": _SHORT_ANSWER,  # merged questions are asked as single ones are
    "refer": ["{}", "where is {}?", "give me the location of {}"],
    "identify": ["{}", "what is in the region {}?"],
    "grounding": [
        "Describe this image with the location of each object.",
        "describe the image and ground each object",
    ],
    "detection": ["{}"],
    "conversation": ["{}"],
    "text_instruction": ["{}"],
}
TEMPLATE_NAMES = tuple(TEMPLATES)  # the registry's names; render() below implements each
HUMAN = "###Human: "
ASSISTANT = " ###Assistant: "


@dataclass(frozen=True)
class Segment:
    text: str
    is_answer: bool


def _fill(instruction: str, query: str | None) -> str:
    if "{}" in instruction:
        if query is None:
            raise ValueError(f"instruction {instruction!r} has a {{}} slot but the example has no query")
        return instruction.replace("{}", query)
    return f"{instruction} {query}".strip() if query else instruction


def instruction_text(task: str, turn: Turn, instruction: str) -> str:
    """Identifier + instruction with the query filled in, e.g. `[vqa] what colour is the square?`."""
    ident = TASK_IDENTIFIERS[task]
    body = _fill(instruction, turn.query)
    return f"{ident} {body}".strip() if ident else body


def render(
    example: TaskExample,
    template: str,
    *,
    end_sym: str,
    instructions: list[str] | None = None,
    rng: random.Random | None = None,
    with_answer: bool = True,
) -> list[Segment]:
    """Render an example as prompt/answer segments.

    with_answer=False renders every turn but the last answer: the prompt for generation.
    """
    if template not in TEMPLATE_NAMES:
        raise ValueError(f"unknown template {template!r}; known: {', '.join(TEMPLATE_NAMES)}")
    pool = instructions or DEFAULT_INSTRUCTIONS[example.task]
    rng = rng or random.Random(0)
    segments: list[Segment] = []
    if template == "image_text":
        # stages 1-2: the caption follows the image directly; no instruction, no identifier
        prompt = IMAGE_BLOCK + " " if example.has_image else ""
        segments.append(Segment(prompt, False))
        if with_answer:
            segments.append(Segment(example.turns[0].answer + end_sym, True))
        return segments
    for i, turn in enumerate(example.turns):
        text = instruction_text(example.task, turn, pool[rng.randrange(len(pool))] if i == 0 else "{}")
        image = f"{IMAGE_BLOCK} " if i == 0 and example.has_image else ""
        # an answer already ends with "###" when that is the end symbol: do not double it
        opener = HUMAN.removeprefix("###") if i > 0 and end_sym == "###" else HUMAN
        segments.append(Segment(f"{opener}{image}{text}{ASSISTANT}", False))
        if with_answer or i < len(example.turns) - 1:
            segments.append(Segment(turn.answer + end_sym, True))
    return segments


def identifier_line() -> str:
    """Every task identifier, space-separated (text for the tiny tokenizer to learn them from)."""
    return " ".join(i for i in TASK_IDENTIFIERS.values() if i)


def clean_answer(text: str, end_sym: str) -> str:
    """Generated text -> answer: cut at the end symbol, trim spaces."""
    if end_sym and end_sym.strip() and end_sym in text:
        text = text.split(end_sym, 1)[0]
    return text.strip()
