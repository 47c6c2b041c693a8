"""COCO captions -> caption, and the COCO-image VQA sets in the VQA layout (VQAv2, OK-VQA) -> vqa.

Captions: captions_<split>.json = {"images": [{"id", "file_name", "width", "height"}], "annotations":
[{"id", "image_id", "caption"}]}; one example per caption, image = file_name (image_root: the split's folder).
VQA: v2_mscoco_<sub>_annotations.json (OK-VQA: mscoco_<sub>_annotations.json) with {"annotations":
[{"question_id", "image_id", "question_type", "answer_type", "answers": [{"answer", ...}] x10,
"multiple_choice_answer"}]} + the matching *OpenEnded_mscoco_<sub>_questions.json with {"questions":
[{"question_id", "image_id", "question"}]}; both carry "data_subtype" (e.g. train2014), and images are
COCO_<sub>_<image_id:012d>.jpg in that folder. The answer is the most frequent annotator answer (ties: the
first given), where MiniGPT-v2 samples one by frequency each time; all ten go to meta["answers"].
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, field, read_json, text_field

CAPTIONS_EXPECTED = (
    'COCO captions json: {"images": [{"id", "file_name"}], "annotations": [{"image_id", "caption"}]}'
)
ANSWERS_EXPECTED = (
    'VQA annotations json: {"annotations": [{"question_id", "image_id", "answers": [{"answer"}]}]}'
)
QUESTIONS_EXPECTED = 'VQA questions json: {"questions": [{"question_id", "image_id", "question"}]}'
_SUBTYPE = re.compile(r"(train|val|test)(20\d\d)")


def load_coco_captions(annotations: Path, image_root: Path | None, *, dataset: str) -> Iterator[TaskExample]:
    data = read_json(annotations, CAPTIONS_EXPECTED)
    files: dict[Any, str] = {}
    for i, image in enumerate(field(data, "images", annotations, "top level", list)):
        files[field(image, "id", annotations, f"images[{i}]", (int, str))] = text_field(
            image, "file_name", annotations, f"images[{i}]"
        )
    for i, ann in enumerate(field(data, "annotations", annotations, "top level", list)):
        where = f"annotations[{i}]"
        image_id = field(ann, "image_id", annotations, where, (int, str))
        if image_id not in files:
            raise FormatError(f"{annotations}: {where} refers to image_id {image_id!r}, absent from 'images'")
        yield TaskExample(
            task="caption",
            turns=[Turn(None, text_field(ann, "caption", annotations, where))],
            image=files[image_id],
            dataset=dataset,
            meta={"image_id": image_id, "caption_id": ann.get("id")},
        )


def default_questions_path(annotations: Path) -> Path:
    """v2_mscoco_train2014_annotations.json -> v2_OpenEnded_mscoco_train2014_questions.json (OK-VQA alike)."""
    name = annotations.name.replace("mscoco_", "OpenEnded_mscoco_", 1).replace("_annotations", "_questions")
    return annotations.with_name(name)


def most_common_answer(answers: list[str]) -> str:
    # Counter keeps first-seen order among equal counts, so ties resolve the same way every run
    return Counter(answers).most_common(1)[0][0]


def _subtype(data: dict, questions: dict, annotations: Path) -> str:
    for source in (questions, data):
        if isinstance(source.get("data_subtype"), str):
            return source["data_subtype"]
    match = _SUBTYPE.search(annotations.name)
    if match is None:
        raise FormatError(
            f"{annotations}: no 'data_subtype' and none in the file name; expected e.g. train2014"
        )
    return match.group(0)


def load_coco_vqa(
    annotations: Path, image_root: Path | None, *, dataset: str, questions: str | Path | None = None
) -> Iterator[TaskExample]:
    """VQAv2 / OK-VQA. `questions` defaults to the OpenEnded questions file beside `annotations`."""
    questions_path = Path(questions) if questions is not None else default_questions_path(annotations)
    data = read_json(annotations, ANSWERS_EXPECTED)
    qdata = read_json(questions_path, QUESTIONS_EXPECTED)
    answer_records = field(data, "annotations", annotations, "top level", list)
    question_records = field(qdata, "questions", questions_path, "top level", list)
    subtype = _subtype(data, qdata, annotations)
    by_question: dict[Any, dict] = {}
    for i, ann in enumerate(answer_records):
        by_question[field(ann, "question_id", annotations, f"annotations[{i}]", (int, str))] = ann
    for i, q in enumerate(question_records):
        where = f"questions[{i}]"
        qid = field(q, "question_id", questions_path, where, (int, str))
        image_id = field(q, "image_id", questions_path, where, int)
        question = text_field(q, "question", questions_path, where)
        if qid not in by_question:
            raise FormatError(
                f"{annotations}: no annotation for question_id {qid!r} ({questions_path.name} {where})"
            )
        ann = by_question[qid]
        awhere = f"annotation of question_id {qid}"
        given = field(ann, "answers", annotations, awhere, list)
        # a blank annotator answer is noise, not a broken file: it just does not count
        answers = [
            a
            for j, record in enumerate(given)
            if (a := field(record, "answer", annotations, f"{awhere} answers[{j}]", str).strip())
        ]
        answer = (
            most_common_answer(answers)
            if answers
            else text_field(ann, "multiple_choice_answer", annotations, awhere)
        )
        meta: dict[str, Any] = {"answers": answers or [answer], "question_id": qid}
        if ann.get("question_type"):
            meta["qtype"] = ann["question_type"]
        if ann.get("answer_type"):
            meta["answer_type"] = ann["answer_type"]
        yield TaskExample(
            task="vqa",
            turns=[Turn(question, answer)],
            image=f"COCO_{subtype}_{image_id:012d}.jpg",
            dataset=dataset,
            meta=meta,
        )
