"""RefCOCO / RefCOCO+ / RefCOCOg (the refer toolkit's layout) -> refer ([refer] expression -> box) or
identify ([identify] box -> expression).

Format as published: a folder (refcoco/, refcoco+/, refcocog/) with `refs(<split_by>).p`, a Python-2 pickle
of [{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent_id", "sent", "raw", ...}], ...}] (split_by
unc for RefCOCO/RefCOCO+, umd or google for RefCOCOg), and `instances.json` (COCO layout: "images" with
id/file_name/width/height, "annotations" with id and bbox [x, y, w, h] in pixels). Splits: train, val,
test, testA, testB ("test" takes every test*, "all" every split). One example per expression, its "raw"
text as MiniGPT-v2 uses it ("sent" when raw is empty). Images are COCO train2014 (image_root: that folder).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.data.boxes import format_box
from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import (
    FormatError,
    ImageSizes,
    field,
    need_file,
    positive_size,
    read_json,
    read_pickle,
    text_field,
    xywh_box,
)

REFS_EXPECTED = (
    'refer-toolkit refs pickle: [{"ref_id", "ann_id", "image_id", "split", "sentences": [{"sent"}]}]'
)
INSTANCES_EXPECTED = 'COCO instances.json: {"images": [{"id", "file_name", "width", "height"}], "annotations": [{"id", "bbox"}]}'


def _split_matches(ref_split: str, wanted: str) -> bool:
    if wanted == "all":
        return True
    # the refer toolkit's convention: "test" covers testA/testB (and RefCOCOg's plain test)
    return ref_split == wanted or (wanted == "test" and ref_split.startswith("test"))


def _paths(annotations: Path, split_by: str) -> tuple[Path, Path]:
    if annotations.is_dir():
        refs = annotations / f"refs({split_by}).p"
        return need_file(refs, REFS_EXPECTED), need_file(annotations / "instances.json", INSTANCES_EXPECTED)
    need_file(
        annotations, f"a refs(...).p file or the folder holding it with instances.json ({REFS_EXPECTED})"
    )
    return annotations, need_file(annotations.with_name("instances.json"), INSTANCES_EXPECTED)


def _sentence(sentence: Any, path: Path, where: str) -> str:
    raw = sentence.get("raw") if isinstance(sentence, dict) else None
    if isinstance(raw, str) and raw.strip():
        return raw.strip()
    return text_field(sentence, "sent", path, where)


def load_refcoco(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    task: str = "refer",
    split: str = "train",
    split_by: str = "unc",
) -> Iterator[TaskExample]:
    if task not in ("refer", "identify"):
        raise FormatError(f"{annotations}: task {task!r} not produced by RefCOCO; expected refer or identify")
    refs_path, instances_path = _paths(annotations, split_by)
    refs = read_pickle(refs_path, REFS_EXPECTED)
    if not isinstance(refs, list):
        raise FormatError(f"{refs_path}: top level is {type(refs).__name__}; expected {REFS_EXPECTED}")
    instances = read_json(instances_path, INSTANCES_EXPECTED)
    images = {
        field(im, "id", instances_path, f"images[{i}]", (int, str)): im
        for i, im in enumerate(field(instances, "images", instances_path, "top level", list))
    }
    anns = {
        field(a, "id", instances_path, f"annotations[{i}]", (int, str)): a
        for i, a in enumerate(field(instances, "annotations", instances_path, "top level", list))
    }
    sizes = ImageSizes(image_root, dataset)
    for i, ref in enumerate(refs):
        where = f"ref {i}"
        ref_id = field(ref, "ref_id", refs_path, where, (int, str))
        where = f"ref_id {ref_id}"
        if not _split_matches(text_field(ref, "split", refs_path, where), split):
            continue
        ann_id = field(ref, "ann_id", refs_path, where, (int, str))
        image_id = field(ref, "image_id", refs_path, where, (int, str))
        if ann_id not in anns:
            raise FormatError(
                f"{refs_path}: {where} has ann_id {ann_id!r}, absent from {instances_path.name}"
            )
        if image_id not in images:
            raise FormatError(
                f"{refs_path}: {where} has image_id {image_id!r}, absent from {instances_path.name}"
            )
        image = images[image_id]
        file_name = text_field(image, "file_name", instances_path, f"image {image_id}")
        if "width" in image and "height" in image:
            width, height = positive_size(
                image["width"], image["height"], instances_path, f"image {image_id}"
            )
        else:
            width, height = sizes.get(file_name, instances_path, f"image {image_id}")
        box = xywh_box(
            field(anns[ann_id], "bbox", instances_path, f"annotation {ann_id}"),
            width,
            height,
            instances_path,
            f"annotation {ann_id}",
        )
        for j, sentence in enumerate(field(ref, "sentences", refs_path, where, list)):
            expression = _sentence(sentence, refs_path, f"{where} sentences[{j}]")
            turn = Turn(expression, format_box(box)) if task == "refer" else Turn(format_box(box), expression)
            yield TaskExample(
                task=task,
                turns=[turn],
                image=file_name,
                dataset=dataset,
                meta={"box": box, "ref_id": ref_id, "ann_id": ann_id, "sent_id": sentence.get("sent_id")},
            )
