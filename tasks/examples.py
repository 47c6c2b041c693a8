"""The one record every dataset adapter produces and every template consumes.

An adapter turns an official annotation format into `TaskExample`s holding only content
(questions, answers, boxes as text); the stage's template and instruction pool decide how the
model sees them (see tasks/templates.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Task types and the MiniGPT-v2 identifier each one is trained with ("" = no identifier).
TASK_IDENTIFIERS: dict[str, str] = {
    "image_text": "",  # stages 1-2: caption right after the image, no prompt
    "caption": "[caption]",
    "detailed_description": "",  # stage 3 (cc_sbu_align), LLaVA detail
    "vqa": "[vqa]",
    "refer": "[refer]",
    "identify": "[identify]",
    "grounding": "[grounding]",
    "detection": "[detection]",
    "conversation": "",  # multi-turn, LLaVA conversation / reasoning
    "text_instruction": "",  # no image (Unnatural Instructions), mixed into image batches
}
TASKS = tuple(TASK_IDENTIFIERS)


@dataclass(frozen=True)
class Turn:
    """One exchange. `query` fills the instruction's `{}` (None: the instruction has no slot)."""

    query: str | None
    answer: str


@dataclass
class TaskExample:
    task: str
    turns: list[Turn]
    image: str | None = None  # key or path of the image; None for text-only samples
    dataset: str = ""
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. qtype, gold box, all answers

    def __post_init__(self) -> None:
        if self.task not in TASK_IDENTIFIERS:
            raise ValueError(f"unknown task {self.task!r}; known: {', '.join(TASKS)}")
        if not self.turns:
            raise ValueError(f"{self.task} example from {self.dataset or '?'} has no turns")

    @property
    def has_image(self) -> bool:
        return self.image is not None
