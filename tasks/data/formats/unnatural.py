"""Unnatural Instructions -> text_instruction (no image), mixed into image batches in stage 4.

Format as published: core_data.jsonl (full_data.jsonl alike), one object per line: {"instruction",
"instances": [{"instruction_with_input", "input", "constraints", "output"}], ...}; a .json file holding a
list of those objects (MiniGPT-v2's copy) is read too. Like MiniGPT-v2 the query is instruction_with_input
followed by the constraints, except the data's literal "None." (MiniGPT-v2 appends it); one example
per instance.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, field, read_json, read_jsonl, text_field

EXPECTED = 'Unnatural Instructions jsonl: {"instruction", "instances": [{"instruction_with_input", "constraints", "output"}]}'


def _records(annotations: Path) -> Iterator[tuple[str, Any]]:
    if annotations.suffix == ".json":
        data = read_json(annotations, EXPECTED)
        if not isinstance(data, list):
            raise FormatError(
                f"{annotations}: top level is {type(data).__name__}; expected a list of {EXPECTED}"
            )
        yield from ((f"record {i}", r) for i, r in enumerate(data))
    else:
        yield from ((f"line {n}", r) for n, r in read_jsonl(annotations, EXPECTED))


def load_unnatural(annotations: Path, image_root: Path | None, *, dataset: str) -> Iterator[TaskExample]:
    for where, record in _records(annotations):
        for j, instance in enumerate(field(record, "instances", annotations, where, list)):
            at = f"{where} instances[{j}]"
            query = text_field(instance, "instruction_with_input", annotations, at)
            constraints = instance.get("constraints")
            if isinstance(constraints, str) and constraints.strip().rstrip(".").lower() not in ("", "none"):
                query = f"{query} {constraints.strip()}"
            yield TaskExample(
                task="text_instruction",
                turns=[Turn(query, text_field(instance, "output", annotations, at))],
                image=None,
                dataset=dataset,
                meta={"instruction": record.get("instruction")},
            )
