"""The one record every dataset-format reader produces and every template consumes.

A reader turns an official annotation format into `TaskExample`s holding only content
(questions, answers, boxes as text); the stage's template and instruction pool decide how the
model sees them (see tasks/data/templates.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from data_specs.registry import TASK_TYPES

# Task type -> the MiniGPT-v2 identifier it is trained with ("" = none); the registry defines both.
TASK_IDENTIFIERS: dict[str, str] = {name: t.identifier for name, t in TASK_TYPES.items()}
TASKS = tuple(TASK_TYPES)


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
