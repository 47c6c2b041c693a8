"""MiniGPT-4's stage-2 aligned pairs (cc_sbu_align, ~3.5k detailed descriptions) -> detailed_description.

Format as published: `cc_sbu_align/filter_cap.json` = {"annotations": [{"image_id": "2", "caption": ...}]},
images at `cc_sbu_align/image/<image_id>.jpg`. image_root is that `image/` folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import field, read_json, text_field

EXPECTED = 'MiniGPT-4 filter_cap.json: {"annotations": [{"image_id", "caption"}]}'


def load_cc_sbu_align(annotations: Path, image_root: Path | None, *, dataset: str) -> Iterator[TaskExample]:
    data = read_json(annotations, EXPECTED)
    items = field(data, "annotations", annotations, "top level", list)
    for i, record in enumerate(items):
        where = f"annotations[{i}]"
        image_id = text_field(record, "image_id", annotations, where)
        caption = text_field(record, "caption", annotations, where)
        yield TaskExample(
            task="detailed_description",
            turns=[Turn(None, caption)],
            image=f"{image_id}.jpg",
            dataset=dataset,
            meta={"image_id": image_id},
        )
