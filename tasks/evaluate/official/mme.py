"""MME: one folder per subtask in the release folder, either `<subtask>/images/` with
`<subtask>/questions_answers_YN/<image>.txt`, or flat `<subtask>/<image>.jpg|png` beside
`<subtask>/<image>.txt`; each text file holds the image's questions, one `question<TAB>Yes|No` a line.
Per subtask: accuracy over questions, accuracy+ over images (every question of the image right) and
score = (accuracy + accuracy+) * 100; perception and cognition totals are sums of subtask scores."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, missing, strip_end
from .scoring import check_lengths, key, mean

NAME = "mme"
PERCEPTION = (
    "existence",
    "count",
    "position",
    "color",
    "posters",
    "celebrity",
    "scene",
    "landmark",
    "artwork",
    "OCR",
)
COGNITION = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SUBTASKS = PERCEPTION + COGNITION
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
LAYOUT = "the MME release: one folder per subtask, e.g. existence/ with images and question .txt files"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    """Items of every subtask folder present (split None) or of the one subtask `split` names."""
    root = Path(root).absolute()
    if split is not None and split not in SUBTASKS:
        raise BenchmarkDataError(f"{NAME}: unknown subtask {split!r}; known: {', '.join(SUBTASKS)}")
    wanted = [split] if split else list(SUBTASKS)
    present = [s for s in wanted if (root / s).is_dir()]
    if not present:
        raise missing(NAME, f"{wanted[0]}/", root, LAYOUT)
    items: list[Item] = []
    for subtask in present:
        items += _read_subtask(root / subtask, subtask)
    return items


def _read_subtask(folder: Path, subtask: str) -> list[Item]:
    nested = folder / "questions_answers_YN"
    text_dir, image_dir = (nested, folder / "images") if nested.is_dir() else (folder, folder)
    images = {p.stem: p for p in sorted(image_dir.glob("*")) if p.suffix.lower() in IMAGE_SUFFIXES}
    category = "perception" if subtask in PERCEPTION else "cognition"
    items = []
    for txt in sorted(text_dir.glob("*.txt")):
        if txt.stem not in images:
            raise missing(NAME, f"an image named {txt.stem}.jpg or .png", image_dir, f"for {txt.name}")
        lines = [ln for ln in txt.read_text(encoding="utf-8").splitlines() if ln.strip()]
        for number, line in enumerate(lines, 1):
            question, tab, answer = line.partition("\t")
            answer = answer.strip().lower()
            if not tab or answer not in ("yes", "no"):
                raise BenchmarkDataError(
                    f"{NAME}: {txt} line {number}: field 'answer' should follow a tab and be Yes or No"
                )
            items.append(
                Item(
                    id=f"{subtask}/{txt.stem}/{number}",
                    image=images[txt.stem],
                    question=question.strip(),
                    choices=None,
                    answers=answer,
                    meta={"subtask": subtask, "category": category, "image_key": f"{subtask}/{txt.stem}"},
                )
            )
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> str:
    """ "yes" or "no" as MME's own parser reads it: the whole answer, or else its first four characters
    containing yes (then no); "other" when neither."""
    text = strip_end(raw, end_sym).lower().strip().replace(".", "")
    if text in ("yes", "no"):
        return text
    head = text[:4]
    return "yes" if "yes" in head else "no" if "no" in head else "other"


def score(items: Sequence[Item], predictions: Sequence[str | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    hits_by_task: dict[str, list[float]] = defaultdict(list)
    image_ok: dict[str, dict[str, bool]] = defaultdict(dict)
    all_hits = []
    for it, p in zip(items, predictions, strict=True):
        hit = p is not None and p.strip().lower() == it.answers
        subtask = it.meta["subtask"]
        hits_by_task[subtask].append(float(hit))
        image_ok[subtask][it.meta["image_key"]] = image_ok[subtask].get(it.meta["image_key"], True) and hit
        all_hits.append(float(hit))
    out = {"accuracy": mean(all_hits), "n": float(len(items))}
    totals = {"perception": 0.0, "cognition": 0.0}
    counts = {"perception": 0, "cognition": 0}
    for subtask in SUBTASKS:
        if subtask not in hits_by_task:
            continue
        acc = mean(hits_by_task[subtask])
        acc_plus = mean([float(ok) for ok in image_ok[subtask].values()])
        name = key(subtask)
        out[f"{name}_accuracy"] = acc
        out[f"{name}_accuracy_plus"] = acc_plus
        out[f"{name}_score"] = (acc + acc_plus) * 100
        group = "perception" if subtask in PERCEPTION else "cognition"
        totals[group] += (acc + acc_plus) * 100
        counts[group] += 1
    for group in ("perception", "cognition"):
        if counts[group]:
            out[f"{group}_total"] = totals[group]
            out[f"{group}_subtasks"] = float(counts[group])
    return out
