"""OCR-VQA (book covers) -> vqa.

Format as published: dataset.json = {book_id: {"imageURL", "questions": [...], "answers": [...], "title",
"authorName", "genre", "split": 1 train | 2 val | 3 test}}. The download script saves each cover as
<book_id><extension of imageURL> (image_root: that images/ folder); MiniGPT-v2's copy saved all as .jpg,
hence image_extension=".jpg". One example per question, questions and answers paired by position.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, field, read_json, text_field

EXPECTED = 'OCR-VQA dataset.json: {book_id: {"imageURL", "questions", "answers", "split"}}'
SPLITS = {"train": 1, "val": 2, "test": 3}


def load_ocrvqa(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    split: str = "train",
    image_extension: str | None = None,
) -> Iterator[TaskExample]:
    if split != "all" and split not in SPLITS:
        raise FormatError(f"{annotations}: unknown split {split!r}; expected all or {', '.join(SPLITS)}")
    data = read_json(annotations, EXPECTED)
    if not isinstance(data, dict):
        raise FormatError(f"{annotations}: top level is {type(data).__name__}; expected {EXPECTED}")
    for book_id, record in data.items():
        where = f"book {book_id}"
        if split != "all" and field(record, "split", annotations, where, int) != SPLITS[split]:
            continue
        url = text_field(record, "imageURL", annotations, where)
        extension = image_extension or PurePosixPath(url.split("?", 1)[0]).suffix or ".jpg"
        questions = field(record, "questions", annotations, where, list)
        answers = field(record, "answers", annotations, where, list)
        if len(questions) != len(answers):
            raise FormatError(
                f"{annotations}: {where} has {len(questions)} questions but {len(answers)} answers"
            )
        for j, (question, answer) in enumerate(zip(questions, answers, strict=True)):
            q = text_field({"question": question}, "question", annotations, f"{where} questions[{j}]")
            a = text_field({"answer": answer}, "answer", annotations, f"{where} answers[{j}]")
            yield TaskExample(
                task="vqa",
                turns=[Turn(q, a)],
                image=f"{book_id}{extension}",
                dataset=dataset,
                meta={
                    "answers": [a],
                    "book_id": book_id,
                    "title": record.get("title"),
                    "genre": record.get("genre"),
                },
            )
