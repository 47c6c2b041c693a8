"""ScienceQA-IMG: the problems of a split that come with an image, from `problems.json` (pid ->
{question, choices, answer (index), hint, image, subject, grade, split, ...}; the split's pids from
`pid_splits.json` when it is there), images at `images/<split>/<pid>/<image>`. Accuracy overall and by
the ScienceQA paper's groups: subject (NAT, SOC, LAN), context modality (TXT: a hint; IMG: an image;
NO: neither) and grade (G1-6, G7-12)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, choice_index, find_file, get, load_json, require_type
from .scoring import check_lengths, mean

NAME = "scienceqa_img"
DEFAULT_SPLIT = "test"
LAYOUT = "the ScienceQA release: problems.json, pid_splits.json and images/<split>/<pid>/image.png"
SUBJECTS = {"natural science": "nat", "social science": "soc", "language science": "lan"}
GRADES_1_6 = {f"grade{g}" for g in range(1, 7)}
GRADES_7_12 = {f"grade{g}" for g in range(7, 13)}


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    path = find_file(
        NAME, root, ["problems.json", "scienceqa/problems.json", "data/scienceqa/problems.json"], LAYOUT
    )
    problems = require_type(NAME, path, load_json(NAME, path), dict, "the top level")
    splits_path = path.parent / "pid_splits.json"
    if splits_path.is_file():
        splits = require_type(NAME, splits_path, load_json(NAME, splits_path), dict, "the top level")
        if split not in splits:
            raise BenchmarkDataError(f"{NAME}: {splits_path}: field {split!r} is missing (no such split)")
        pids = [str(p) for p in splits[split]]
    else:
        pids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == split]
    here = path.parent.relative_to(root).as_posix()
    folders = [f"images/{split}", split] + (
        [f"{here}/images/{split}", f"{here}/{split}"] if here != "." else []
    )
    images = find_file(NAME, root, folders, LAYOUT, is_dir=True)
    items = []
    for pid in pids:
        if pid not in problems:
            raise BenchmarkDataError(f"{NAME}: {path}: field {pid!r} is missing (a pid of split {split!r})")
        p = problems[pid]
        where = f"problem {pid}"
        image = get(NAME, path, p, "image", where, str, default="")
        if not image:
            continue
        choices = [str(c) for c in get(NAME, path, p, "choices", where, list)]
        answer = get(NAME, path, p, "answer", where, int)
        if not 0 <= answer < len(choices):
            raise BenchmarkDataError(
                f"{NAME}: {path} {where}: field 'answer' {answer} is not an option index"
            )
        hint = get(NAME, path, p, "hint", where, str, default="").strip()
        items.append(
            Item(
                id=pid,
                image=images / pid / image,
                question=get(NAME, path, p, "question", where, str),
                choices=choices,
                answers=answer,
                meta={
                    "subject": get(NAME, path, p, "subject", where, str),
                    "grade": get(NAME, path, p, "grade", where, str),
                    "hint": hint,
                    "context": hint or "N/A",
                    "has_image": True,
                },
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> int | None:
    return choice_index(raw, item.choices or [], end_sym)


def score(items: Sequence[Item], predictions: Sequence[int | None]) -> dict[str, float]:
    """accuracy, accuracy_{nat,soc,lan,txt,img,no,g1_6,g7_12} (a group without items is left out),
    unparsed_rate and n."""
    check_lengths(NAME, items, predictions)
    hits = [float(p is not None and p == it.answers) for it, p in zip(items, predictions, strict=True)]
    groups: dict[str, list[float]] = {}
    for it, hit in zip(items, hits, strict=True):
        has_text = bool(it.meta.get("hint"))
        has_image = bool(it.meta.get("has_image", it.image is not None))
        names = [SUBJECTS.get(it.meta.get("subject", ""))]
        names += ["txt" if has_text else None, "img" if has_image else None]
        names += ["no" if not (has_text or has_image) else None]
        grade = it.meta.get("grade")
        names += ["g1_6" if grade in GRADES_1_6 else "g7_12" if grade in GRADES_7_12 else None]
        for name in names:
            if name:
                groups.setdefault(name, []).append(hit)
    out = {
        "accuracy": mean(hits),
        "unparsed_rate": mean([float(p is None) for p in predictions]),
        "n": float(len(items)),
    }
    order = ["nat", "soc", "lan", "txt", "img", "no", "g1_6", "g7_12"]
    out |= {f"accuracy_{g}": mean(groups[g]) for g in order if g in groups}
    return out
