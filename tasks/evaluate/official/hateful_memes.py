"""Hateful Memes: `<split>.jsonl` lines {id, img, label, text} where img is a path under the release
folder (`img/01235.png`). The model answers whether the meme is hateful; the prediction is a score in
[0, 1] (1.0 for yes, 0.0 for no, or the number the model wrote). Accuracy (score >= 0.5 means hateful,
an unreadable answer is wrong) and AUROC (an unreadable answer scores 0.5)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, find_file, first_line, get, load_jsonl, parse_yes_no
from .scoring import auroc, check_lengths, mean

NAME = "hateful_memes"
DEFAULT_SPLIT = "dev_seen"
LAYOUT = "the Hateful Memes release: dev_seen.jsonl beside img/"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    path = find_file(NAME, root, [f"{split}.jsonl", f"data/{split}.jsonl"], LAYOUT.replace("dev_seen", split))
    find_file(NAME, path.parent, ["img"], LAYOUT, is_dir=True)
    items = []
    for number, row in enumerate(load_jsonl(NAME, path), 1):
        where = f"line {number}"
        label = get(NAME, path, row, "label", where, (int, bool))
        if label not in (0, 1):
            raise BenchmarkDataError(f"{NAME}: {path} {where}: field 'label' should be 0 or 1, got {label!r}")
        items.append(
            Item(
                id=str(get(NAME, path, row, "id", where, (int, str))),
                image=path.parent / get(NAME, path, row, "img", where, str),
                question=get(NAME, path, row, "text", where, str),
                choices=None,
                answers=int(label),
                meta={},
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> float | None:
    """A number in [0, 1] written as the answer, else 1.0 for yes/true and 0.0 for no/false, else None."""
    text = first_line(raw, end_sym).rstrip(".")
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None and 0.0 <= value <= 1.0:
        return value
    said = parse_yes_no(raw, end_sym)
    return None if said is None else float(said)


def score(items: Sequence[Item], predictions: Sequence[float | bool | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    labels = [int(it.answers) for it in items]
    hits = [
        float(p is not None and int(float(p) >= 0.5) == y) for p, y in zip(predictions, labels, strict=True)
    ]
    out = {
        "accuracy": mean(hits),
        "unparsed_rate": mean([float(p is None) for p in predictions]),
        "n": float(len(items)),
    }
    area = auroc(labels, [0.5 if p is None else float(p) for p in predictions])
    if area is not None:
        out["auroc"] = area
    return out
