"""What every official benchmark shares: the `Item` a reader returns, the `OfficialBenchmark` registry
entry, the one-line `BenchmarkDataError`, file look-up and JSON loading that raise it, and the answer
extraction helpers (end symbol, first line, yes/no, choice letter or option text).
"""

from __future__ import annotations

import json
import re
import shutil
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TASKS = ("vqa", "refer", "caption", "conversation")
END_SYMBOLS = ("###", "</s>", "<|endoftext|>", "<|im_end|>")
LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


class BenchmarkDataError(FileNotFoundError, ValueError):
    """A benchmark file that is missing or malformed; `str()` is one line naming the benchmark and file."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))

    def __str__(self) -> str:
        return self.args[0]


def missing(benchmark: str, expected: str, root: Path | str, layout: str) -> BenchmarkDataError:
    return BenchmarkDataError(f"{benchmark}: expected {expected} in {root} ({layout})")


def malformed(
    benchmark: str, path: Path | str, where: str, field_name: str, problem: str
) -> BenchmarkDataError:
    place = f" {where}" if where else ""
    return BenchmarkDataError(f"{benchmark}: {path}{place}: field {field_name!r} {problem}")


@dataclass(frozen=True)
class Item:
    """One benchmark question: `image` is an absolute path (or None), `answers` the gold the metric needs."""

    id: str
    image: Path | None
    question: str
    choices: list[str] | None
    answers: Any
    meta: dict[str, Any] = field(default_factory=dict)


def format_choices(choices: Sequence[str] | None) -> str:
    """`(A) red (B) blue`; the empty string without choices."""
    if not choices:
        return ""
    return " ".join(f"({LETTERS[i]}) {c}" for i, c in enumerate(choices))


@dataclass(frozen=True)
class OfficialBenchmark:
    """A registry entry. `read(root, split)` returns items (split None: `default_split`),
    `extract(raw_text, item)` the prediction the metric takes, `score(items, predictions)` the metrics.
    `open_prompt` replaces `default_prompt` for an item without choices; `unavailable()` names metrics of
    the benchmark's official set that are not computed here, each with its reason."""

    name: str
    task: str
    default_prompt: str
    max_new_tokens: int
    read: Callable[..., list[Item]]
    extract: Callable[..., Any]
    score: Callable[[Sequence[Item], Sequence[Any]], dict[str, float]]
    paper_metric: str | None
    default_split: str | None
    layout: str
    open_prompt: str | None = None
    unavailable: Callable[[], dict[str, str]] = field(default=lambda: {})

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"{self.name}: task {self.task!r} is not one of {', '.join(TASKS)}")

    def format_prompt(self, item: Item, template: str | None = None) -> str:
        """The question text for the model: `template` (else the entry's prompt) filled with the item's
        question, its lettered choices and any string field of its meta."""
        if template is None:
            template = self.open_prompt if (self.open_prompt and not item.choices) else self.default_prompt
        extra = {k: v for k, v in item.meta.items() if isinstance(v, str)}
        return template.format(
            **{**extra, "question": item.question, "choices": format_choices(item.choices)}
        )


# --- files -------------------------------------------------------------------------------------------


def find_file(
    benchmark: str, root: Path, candidates: Iterable[str], layout: str, *, is_dir: bool = False
) -> Path:
    """The first candidate (relative to root) that exists; else the error names the first candidate."""
    candidates = list(candidates)
    for rel in candidates:
        path = root / rel
        if path.is_dir() if is_dir else path.is_file():
            return path
    shown = candidates[0] + ("/" if is_dir else "")
    raise missing(benchmark, shown, root, layout)


def load_json(benchmark: str, path: Path) -> Any:
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise BenchmarkDataError(
            f"{benchmark}: {path} is not valid JSON (line {exc.lineno} column {exc.colno}: {exc.msg})"
        ) from None


def load_jsonl(benchmark: str, path: Path) -> list[dict]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise BenchmarkDataError(
                    f"{benchmark}: {path} line {number} is not valid JSON ({exc.msg})"
                ) from None
            if not isinstance(row, dict):
                raise BenchmarkDataError(f"{benchmark}: {path} line {number} is not a JSON object")
            rows.append(row)
    return rows


_ABSENT = object()


def get(
    benchmark: str,
    path: Path,
    record: Any,
    key: str,
    where: str,
    kind: type | tuple[type, ...] | None = None,
    default: Any = _ABSENT,
) -> Any:
    """record[key], checked for presence and (when given) type; errors name the file, record and field."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(
            f"{benchmark}: {path} {where}: expected a JSON object, got {type(record).__name__}"
        )
    if key not in record or record[key] is None:
        if default is not _ABSENT:
            return default
        raise malformed(benchmark, path, where, key, "is missing")
    value = record[key]
    if kind is not None and (
        not isinstance(value, kind) or (isinstance(value, bool) and bool not in _kinds(kind))
    ):
        names = "/".join(k.__name__ for k in _kinds(kind))
        raise malformed(benchmark, path, where, key, f"should be {names}, got {type(value).__name__}")
    return value


def _kinds(kind: type | tuple[type, ...]) -> tuple[type, ...]:
    return kind if isinstance(kind, tuple) else (kind,)


def require_type(benchmark: str, path: Path, value: Any, kind: type, what: str) -> Any:
    if not isinstance(value, kind):
        raise BenchmarkDataError(f"{benchmark}: {path}: {what} should be a JSON {kind.__name__}")
    return value


def java_absent_reasons(metrics: Iterable[str]) -> dict[str, str]:
    """Reasons for Java-based caption metrics (METEOR, SPICE) not being computed."""
    if shutil.which("java") is None:
        reason = "not computed: the COCO caption code runs it as a Java jar and java is not on PATH"
    else:
        reason = "not computed: the COCO caption code runs it as a Java jar, which this package does not ship"
    return {m: reason for m in metrics}


# --- answer extraction ---------------------------------------------------------------------------------


def strip_end(raw: str, end_sym: str | None = None) -> str:
    """Text before the first end symbol (`end_sym`, else any of END_SYMBOLS), without `<unk>`, trimmed."""
    text = raw.replace("<unk>", "")
    for sym in (end_sym,) if end_sym else END_SYMBOLS:
        if sym and sym in text:
            text = text.split(sym, 1)[0]
    return text.strip()


def first_line(raw: str, end_sym: str | None = None) -> str:
    """The first non-empty line of the text before the end symbol."""
    for line in strip_end(raw, end_sym).splitlines():
        if line.strip():
            return line.strip()
    return ""


_WORD_RE = re.compile(r"[a-z]+")
_YES = {"yes", "true", "correct"}
_NO = {"no", "false", "incorrect", "not"}


def parse_yes_no(raw: str, end_sym: str | None = None) -> bool | None:
    """True for yes/true/correct, False for no/false/incorrect/not: the first such word of the first line
    decides; None if there is none."""
    for word in _WORD_RE.findall(first_line(raw, end_sym).lower()):
        if word in _YES:
            return True
        if word in _NO:
            return False
    return None


def _norm_option(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


_LETTER_ALONE = re.compile(r"^\(?([A-Z])\)?[.:)]?$")
_LETTER_LEAD = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.:)])")
_LETTER_SAID = re.compile(
    r"\b(?:answer|option|choice)\s*(?:is|:)?\s*:?\s*\(?([A-Z])\)?(?![\w])", re.IGNORECASE
)


def choice_index(raw: str, choices: Sequence[str], end_sym: str | None = None) -> int | None:
    """The index of the option the text names: its whole text equal to an option, a leading letter
    (`B`, `(B)`, `B.`), `answer is B`, or a single option text contained in it; None otherwise."""
    text = first_line(raw, end_sym)
    normed = [_norm_option(c) for c in choices]
    said = _norm_option(text)
    if said in normed:
        return normed.index(said)
    for pattern in (_LETTER_ALONE, _LETTER_LEAD):
        m = pattern.match(text)
        if m:
            index = LETTERS.index(next(g for g in m.groups() if g))
            return index if index < len(choices) else None
    m = _LETTER_SAID.search(text)
    if m and m.group(1).isupper():
        index = LETTERS.index(m.group(1))
        if index < len(choices):
            return index
    padded = f" {said} "
    hits = [i for i, c in enumerate(normed) if c and f" {c} " in padded]
    if len(hits) > 1:  # keep the longest option when one contains another ("red" inside "dark red")
        longest = max(len(normed[i]) for i in hits)
        hits = [i for i in hits if len(normed[i]) == longest]
    return hits[0] if len(hits) == 1 else None
