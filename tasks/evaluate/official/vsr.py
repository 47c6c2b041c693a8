"""VSR, the zero-shot split: `<split>.jsonl` lines {image, caption, label 0/1, relation} with `images/`.
The model judges the caption true or false; accuracy overall and per relation, and the share of
answers with neither yes/true nor no/false (counted wrong)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, find_file, get, load_jsonl, parse_yes_no
from .scoring import check_lengths, grouped_means, mean

NAME = "vsr"
DEFAULT_SPLIT = "test"
LAYOUT = "the VSR zero-shot split: test.jsonl (or splits/zeroshot/test.jsonl) and images/"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    path = find_file(
        NAME, root, [f"{split}.jsonl", f"zeroshot/{split}.jsonl", f"splits/zeroshot/{split}.jsonl"], LAYOUT
    )
    images = find_file(NAME, root, ["images"], LAYOUT, is_dir=True)
    items = []
    for number, row in enumerate(load_jsonl(NAME, path), 1):
        where = f"line {number}"
        label = get(NAME, path, row, "label", where, (int, bool))
        if label not in (0, 1):
            raise BenchmarkDataError(f"{NAME}: {path} {where}: field 'label' should be 0 or 1, got {label!r}")
        items.append(
            Item(
                id=f"{split}-{number}",
                image=images / get(NAME, path, row, "image", where, str),
                question=get(NAME, path, row, "caption", where, str),
                choices=None,
                answers=bool(label),
                meta={"relation": get(NAME, path, row, "relation", where, str, default=None)},
            )
        )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> bool | None:
    return parse_yes_no(raw, end_sym)


def score(items: Sequence[Item], predictions: Sequence[bool | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    hits = [float(p is not None and bool(p) == it.answers) for it, p in zip(items, predictions, strict=True)]
    out = {
        "accuracy": mean(hits),
        "unparsed_rate": mean([float(p is None) for p in predictions]),
        "n": float(len(items)),
    }
    out |= grouped_means("accuracy_relation", hits, [it.meta.get("relation") for it in items])
    return out
