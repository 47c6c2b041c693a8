"""IconQA: `problems.json` (pid -> {question, choices, answer, ques_type, grade, ...}) and
`pid_splits.json`, images at `iconqa/<split>/<ques_type>/<pid>/image.png`. Reads the text-choice
(choose_txt: answer is the option index) and fill-in-the-blank (answer is a string) problems; accuracy
overall and per type."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, choice_index, find_file, first_line, get, load_json, require_type
from .scoring import check_lengths, grouped_means, mean
from .vqa_accuracy import normalise_vqa_answer

NAME = "iconqa"
DEFAULT_SPLIT = "test"
TYPES = ("choose_txt", "fill_in_blank")
LAYOUT = "the IconQA release: problems.json, pid_splits.json and iconqa/<split>/<ques_type>/<pid>/image.png"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    path = find_file(NAME, root, ["problems.json", "iconqa_data/problems.json"], LAYOUT)
    base = path.parent
    splits_path = find_file(NAME, base, ["pid_splits.json"], LAYOUT)
    problems = require_type(NAME, path, load_json(NAME, path), dict, "the top level")
    splits = require_type(NAME, splits_path, load_json(NAME, splits_path), dict, "the top level")
    if all(f"{t}_{split}" in splits for t in TYPES):
        pids = [p for t in TYPES for p in splits[f"{t}_{split}"]]
    elif split in splits:
        pids = list(splits[split])
    else:
        raise BenchmarkDataError(f"{NAME}: {splits_path}: field {split!r} is missing (no such split)")
    images = find_file(NAME, base, [f"iconqa/{split}", split], LAYOUT, is_dir=True)
    items = []
    for pid in pids:
        pid = str(pid)
        if pid not in problems:
            raise BenchmarkDataError(
                f"{NAME}: {path}: field {pid!r} is missing (a pid listed in {splits_path.name})"
            )
        p = problems[pid]
        where = f"problem {pid}"
        qtype = get(NAME, path, p, "ques_type", where, str)
        if qtype not in TYPES:
            continue
        if qtype == "choose_txt":
            choices = [str(c) for c in get(NAME, path, p, "choices", where, list)]
            answer = get(NAME, path, p, "answer", where, int)
            if not 0 <= answer < len(choices):
                raise BenchmarkDataError(
                    f"{NAME}: {path} {where}: field 'answer' {answer} is not an option index"
                )
        else:
            choices, answer = None, str(get(NAME, path, p, "answer", where, (str, int, float)))
        items.append(
            Item(
                id=pid,
                image=images / qtype / pid / "image.png",
                question=get(NAME, path, p, "question", where, str),
                choices=choices,
                answers=answer,
                meta={"ques_type": qtype, "grade": get(NAME, path, p, "grade", where, str, default=None)},
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> int | str | None:
    """The option index for a text-choice problem, the first answer line for a fill-in-the-blank."""
    if item.choices:
        return choice_index(raw, item.choices, end_sym)
    return first_line(raw, end_sym)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def same_blank(prediction: str, gold: str) -> bool:
    """Equal after the VQA normalisation, or equal as numbers ("7.0" = "7")."""
    p, g = normalise_vqa_answer(prediction), normalise_vqa_answer(gold)
    if p == g:
        return True
    pn, gn = _number(p), _number(g)
    return pn is not None and gn is not None and pn == gn


def score(items: Sequence[Item], predictions: Sequence[int | str | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    hits = []
    for it, p in zip(items, predictions, strict=True):
        if p is None:
            hits.append(0.0)
        elif it.choices:
            hits.append(float(isinstance(p, int) and p == it.answers))
        else:
            hits.append(float(same_blank(str(p), it.answers)))
    out = {"accuracy": mean(hits), "n": float(len(items))}
    out |= grouped_means("accuracy", hits, [it.meta["ques_type"] for it in items])
    return out
