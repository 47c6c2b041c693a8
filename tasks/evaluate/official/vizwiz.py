"""VizWiz VQA: `<split>.json`, a list of {image, question, answers: 10 x {answer, answer_confidence},
answerable, answer_type}, with the images in `<split>/`. VQA accuracy over the 10 answers
("unanswerable" is an answer like any other), overall and per answer type (yes/no, number, other,
unanswerable)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Item, find_file, first_line, get, load_json, require_type
from .scoring import check_lengths, grouped_means, mean
from .vqa_accuracy import vqa_question_accuracy

NAME = "vizwiz"
DEFAULT_SPLIT = "val"
LAYOUT = "the VizWiz VQA release: Annotations/val.json (or val.json) and val/ images"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    layout = LAYOUT.replace("val", split)
    path = find_file(
        NAME, root, [f"Annotations/{split}.json", f"{split}.json", f"annotations/{split}.json"], layout
    )
    images = find_file(NAME, root, [split, f"images/{split}"], layout, is_dir=True)
    records = require_type(NAME, path, load_json(NAME, path), list, "the top level")
    items = []
    for index, r in enumerate(records):
        name = get(NAME, path, r, "image", f"record {index}", str)
        where = f"record {index} ({name})"
        answers = []
        for a in get(NAME, path, r, "answers", where, list):
            answers.append(get(NAME, path, a, "answer", f"{where} answers", str))
        items.append(
            Item(
                id=name,
                image=images / name,
                question=get(NAME, path, r, "question", where, str),
                choices=None,
                answers=answers,
                meta={
                    "answer_type": get(NAME, path, r, "answer_type", where, str),
                    "answerable": get(NAME, path, r, "answerable", where, (int, bool), default=None),
                },
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> str:
    return first_line(raw, end_sym)


def score(items: Sequence[Item], predictions: Sequence[str | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    accs = [vqa_question_accuracy(p, it.answers) for it, p in zip(items, predictions, strict=True)]
    out = {"accuracy": mean(accs), "n": float(len(items))}
    out |= grouped_means("accuracy", accs, [it.meta.get("answer_type") for it in items])
    return out
