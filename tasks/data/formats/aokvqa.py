"""A-OKVQA -> vqa.

Format as published: aokvqa_v1p0_<split>.json = [{"question_id", "image_id", "question", "choices" (4),
"correct_choice_idx", "direct_answers" (10), "rationales", "split", ...}]; images are COCO 2017,
<image_id:012d>.jpg (image_root: coco/<split>2017). The target is the correct choice (MiniGPT-v2 takes the
choice found among the direct answers, which is nearly always it); the direct answers, the choices and the
rationales go to meta so a template can show the choices. Test records lack answers and are rejected.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, field, read_json, text_field

EXPECTED = 'A-OKVQA json: [{"question_id", "image_id", "question", "choices", "correct_choice_idx", "direct_answers"}]'


def load_aokvqa(annotations: Path, image_root: Path | None, *, dataset: str) -> Iterator[TaskExample]:
    data = read_json(annotations, EXPECTED)
    if not isinstance(data, list):
        raise FormatError(f"{annotations}: top level is {type(data).__name__}; expected {EXPECTED}")
    for i, record in enumerate(data):
        where = f"record {i}"
        qid = text_field(record, "question_id", annotations, where)
        where = f"record {i} (question_id {qid})"
        image_id = field(record, "image_id", annotations, where, int)
        question = text_field(record, "question", annotations, where)
        choices = [str(c) for c in field(record, "choices", annotations, where, list)]
        index = field(record, "correct_choice_idx", annotations, where, int)
        if not 0 <= index < len(choices):
            raise FormatError(
                f"{annotations}: {where} correct_choice_idx {index} outside its {len(choices)} choices"
            )
        direct = [str(a) for a in field(record, "direct_answers", annotations, where, list)]
        meta: dict[str, Any] = {
            "answers": direct,
            "choices": choices,
            "correct_choice_idx": index,
            "rationales": list(record.get("rationales") or []),
            "question_id": qid,
        }
        yield TaskExample(
            task="vqa",
            turns=[Turn(question, choices[index])],
            image=f"{image_id:012d}.jpg",
            dataset=dataset,
            meta=meta,
        )
