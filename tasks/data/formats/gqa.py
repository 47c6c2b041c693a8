"""GQA balanced questions -> vqa.

Format as published: <split>_balanced_questions.json = {question_id: {"imageId", "question", "answer",
"fullAnswer", "types": {"structural", "semantic", "detailed"}, ...}}; train_all comes as a folder of such
files (read in name order). Images are images/<imageId>.jpg (image_root: that images/ folder). The short
"answer" is the target, as in MiniGPT-v2; full_answer=True trains on "fullAnswer" instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, read_json, text_field

EXPECTED = 'GQA questions json: {question_id: {"imageId", "question", "answer", "fullAnswer"}}'


def _files(annotations: Path) -> list[Path]:
    if annotations.is_dir():
        files = sorted(annotations.glob("*.json"))
        if not files:
            raise FormatError(f"{annotations}: folder holds no .json files; expected {EXPECTED}")
        return files
    return [annotations]


def load_gqa(
    annotations: Path, image_root: Path | None, *, dataset: str, full_answer: bool = False
) -> Iterator[TaskExample]:
    for path in _files(annotations):
        data = read_json(path, EXPECTED)
        if not isinstance(data, dict):
            raise FormatError(f"{path}: top level is {type(data).__name__}; expected {EXPECTED}")
        for qid, record in data.items():
            where = f"question {qid}"
            question = text_field(record, "question", path, where)
            short = text_field(record, "answer", path, where)
            full = text_field(record, "fullAnswer", path, where) if full_answer else record.get("fullAnswer")
            meta: dict[str, Any] = {"answers": [short], "question_id": qid, "full_answer": full}
            types = record.get("types")
            if isinstance(types, dict) and types.get("structural"):
                meta["qtype"] = types["structural"]
            yield TaskExample(
                task="vqa",
                turns=[Turn(question, full if full_answer else short)],
                image=f"{text_field(record, 'imageId', path, where)}.jpg",
                dataset=dataset,
                meta=meta,
            )
