"""TextCaps -> caption.

Format as published: TextCaps_0.1_<split>.json = {"data": [{"image_id", "image_name", "image_path"
("train/<image_id>.jpg"), "image_width", "image_height", "caption_id", "caption_str", ...}]}, one record
per caption. The images are TextVQA's (train_val_images.zip unpacks to train_images/<image_id>.jpg), so
image = the file name of image_path and image_root is that train_images/ folder.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path, PurePosixPath

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import field, read_json, text_field

EXPECTED = 'TextCaps json: {"data": [{"image_id", "image_path", "caption_str"}]}'


def load_textcaps(annotations: Path, image_root: Path | None, *, dataset: str) -> Iterator[TaskExample]:
    data = read_json(annotations, EXPECTED)
    for i, record in enumerate(field(data, "data", annotations, "top level", list)):
        where = f"data[{i}]"
        image_id = text_field(record, "image_id", annotations, where)
        path = record.get("image_path") if isinstance(record, dict) else None
        image = PurePosixPath(path).name if isinstance(path, str) and path else f"{image_id}.jpg"
        yield TaskExample(
            task="caption",
            turns=[Turn(None, text_field(record, "caption_str", annotations, where))],
            image=image,
            dataset=dataset,
            meta={"image_id": image_id, "caption_id": record.get("caption_id")},
        )
