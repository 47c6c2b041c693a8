"""GQA (testdev-balanced by default): `<split>_questions.json`, a dict question id -> {imageId, question,
answer, types, ...}, with `images/<imageId>.jpg`. Exact-match accuracy after the VQA answer
normalisation, overall and per structural and semantic question type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import Item, find_file, first_line, get, load_json, require_type
from .scoring import check_lengths, grouped_means, mean
from .vqa_accuracy import normalise_vqa_answer

NAME = "gqa"
DEFAULT_SPLIT = "testdev_balanced"
LAYOUT = "the official GQA release: questions/ and images/"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    filename = f"{split or DEFAULT_SPLIT}_questions.json"
    path = find_file(NAME, root, [filename, f"questions/{filename}"], LAYOUT)
    images = find_file(NAME, root, ["images"], LAYOUT, is_dir=True)
    questions = require_type(NAME, path, load_json(NAME, path), dict, "the top level")
    items = []
    for qid, q in questions.items():
        where = f"question {qid}"
        image_id = get(NAME, path, q, "imageId", where, (str, int))
        types = get(NAME, path, q, "types", where, dict, default={})
        items.append(
            Item(
                id=str(qid),
                image=images / f"{image_id}.jpg",
                question=get(NAME, path, q, "question", where, str),
                choices=None,
                answers=get(NAME, path, q, "answer", where, str),
                meta={"structural": types.get("structural"), "semantic": types.get("semantic")},
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> str:
    return first_line(raw, end_sym)


def score(items: Sequence[Item], predictions: Sequence[str | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    hits = [
        float(p is not None and normalise_vqa_answer(p) == normalise_vqa_answer(it.answers))
        for it, p in zip(items, predictions, strict=True)
    ]
    out = {"accuracy": mean(hits), "n": float(len(items))}
    out |= grouped_means("accuracy_structural", hits, [it.meta.get("structural") for it in items])
    out |= grouped_means("accuracy_semantic", hits, [it.meta.get("semantic") for it in items])
    return out
