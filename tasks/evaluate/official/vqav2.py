"""VQAv2 and OK-VQA in the official VQA format: `<questions file>` {questions: [{image_id, question,
question_id}]} and `<annotations file>` {annotations: [{question_id, answers: 10 x {answer}, answer_type,
question_type}]}, with COCO images `<split>/COCO_<split>_%012d.jpg`. VQA accuracy, overall and per
answer type."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, find_file, first_line, get, load_json
from .scoring import check_lengths, grouped_means, mean
from .vqa_accuracy import vqa_question_accuracy

DEFAULT_SPLIT = "val2014"
_DIRS = ("", "Questions/", "Annotations/", "questions/", "annotations/")


def make_reader(
    name: str, questions_file: str, annotations_file: str, layout: str
) -> Callable[..., list[Item]]:
    """A reader for one VQA-format release; the file names take the split through `{split}`."""

    def read(root: Path | str, split: str | None = None) -> list[Item]:
        root = Path(root).absolute()
        split = split or DEFAULT_SPLIT
        qname, aname = questions_file.format(split=split), annotations_file.format(split=split)
        qpath = find_file(name, root, [d + qname for d in _DIRS], layout)
        apath = find_file(name, root, [d + aname for d in _DIRS], layout)
        images = find_file(name, root, [split, f"images/{split}"], layout, is_dir=True)
        questions = get(name, qpath, load_json(name, qpath), "questions", "", list)
        annotations = get(name, apath, load_json(name, apath), "annotations", "", list)
        by_id = {}
        for index, a in enumerate(annotations):
            by_id[get(name, apath, a, "question_id", f"annotation {index}", int)] = a
        items = []
        for index, q in enumerate(questions):
            qid = get(name, qpath, q, "question_id", f"question {index}", int)
            where = f"question {qid}"
            if qid not in by_id:
                raise BenchmarkDataError(f"{name}: {apath}: no annotation for question_id {qid}")
            a = by_id[qid]
            answers = [
                get(name, apath, x, "answer", where, str) for x in get(name, apath, a, "answers", where, list)
            ]
            image_id = get(name, qpath, q, "image_id", where, int)
            items.append(
                Item(
                    id=str(qid),
                    image=images / f"COCO_{split}_{image_id:012d}.jpg",
                    question=get(name, qpath, q, "question", where, str),
                    choices=None,
                    answers=answers,
                    meta={
                        "answer_type": get(name, apath, a, "answer_type", where, str, default=None),
                        "question_type": get(name, apath, a, "question_type", where, str, default=None),
                        "image_id": image_id,
                    },
                )
            )
        return items

    return read


def extract(raw: str, item: Item, end_sym: str | None = None) -> str:
    return first_line(raw, end_sym)


def score(items: Sequence[Item], predictions: Sequence[str | None]) -> dict[str, float]:
    check_lengths("vqa", items, predictions)
    accs = [vqa_question_accuracy(p, it.answers) for it, p in zip(items, predictions, strict=True)]
    out = {"accuracy": mean(accs), "n": float(len(items))}
    out |= grouped_means("accuracy", accs, [it.meta.get("answer_type") for it in items])
    return out
