"""Visual Genome region descriptions -> refer / identify (MiniGPT-v2's "refvg").

Format as published: region_descriptions.json = [{"id": image_id, "regions": [{"region_id", "image_id",
"phrase", "x", "y", "width", "height"}]}] (pixels) and image_data.json = [{"image_id" (v1.0: "id"), "url",
"width", "height"}]. Images are VG_100K/<id>.jpg or VG_100K_2/<id>.jpg, the folder given by the last two
parts of the url (image_root: the folder holding both). Without image_data.json sizes are read from the
images and the folder found by looking in both. Like MiniGPT-v2 (after OFA) only regions under 16384 px^2
are kept for referring; regions with an empty phrase are skipped (noise in the release, not a format error).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tasks.adapters._common import (
    AdapterError,
    ImageSizes,
    field,
    positive_size,
    read_json,
    text_field,
    xywh_box,
)
from tasks.boxes import format_box
from tasks.examples import TaskExample, Turn

REGIONS_EXPECTED = (
    'VG region_descriptions.json: [{"id", "regions": [{"image_id", "phrase", "x", "y", "width", "height"}]}]'
)
IMAGES_EXPECTED = 'VG image_data.json: [{"image_id", "url", "width", "height"}]'
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


def _image_index(path: Path) -> dict[int, dict[str, Any]]:
    data = read_json(path, IMAGES_EXPECTED)
    if not isinstance(data, list):
        raise AdapterError(f"{path}: top level is {type(data).__name__}; expected {IMAGES_EXPECTED}")
    index = {}
    for i, image in enumerate(data):
        key = "image_id" if isinstance(image, dict) and "image_id" in image else "id"
        index[field(image, key, path, f"image {i}", int)] = image
    return index


def _find_image(image_id: int, image_root: Path | None, path: Path) -> str:
    if image_root is None:
        raise AdapterError(
            f"{path}: no image_data.json beside it; pass image_root to locate image {image_id}"
        )
    for folder in IMAGE_FOLDERS:
        if (image_root / folder / f"{image_id}.jpg").is_file():
            return f"{folder}/{image_id}.jpg"
    raise AdapterError(f"{image_root}: image {image_id}.jpg in neither {' nor '.join(IMAGE_FOLDERS)}")


def load_visual_genome(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    task: str = "refer",
    image_data: str | Path | None = None,
    max_region_area: float | None = 16384,
) -> Iterator[TaskExample]:
    if task not in ("refer", "identify"):
        raise AdapterError(
            f"{annotations}: task {task!r} not produced by Visual Genome; expected refer or identify"
        )
    images_path = Path(image_data) if image_data is not None else annotations.with_name("image_data.json")
    # image_data.json is optional only when not asked for by name: then sizes come from the images
    index = _image_index(images_path) if image_data is not None or images_path.is_file() else None
    regions_by_image = read_json(annotations, REGIONS_EXPECTED)
    if not isinstance(regions_by_image, list):
        raise AdapterError(
            f"{annotations}: top level is {type(regions_by_image).__name__}; expected {REGIONS_EXPECTED}"
        )
    sizes = ImageSizes(image_root, dataset)
    located: dict[int, str] = {}  # image_id -> folder/file, looked up once per image
    for i, entry in enumerate(regions_by_image):
        regions = field(entry, "regions", annotations, f"image entry {i}", list)
        for j, region in enumerate(regions):
            where = f"image entry {i} regions[{j}]"
            image_id = field(region, "image_id", annotations, where, int)
            x, y = (
                field(region, "x", annotations, where, (int, float)),
                field(region, "y", annotations, where, (int, float)),
            )
            w = field(region, "width", annotations, where, (int, float))
            h = field(region, "height", annotations, where, (int, float))
            if max_region_area is not None and w * h >= max_region_area:
                continue
            phrase = str(field(region, "phrase", annotations, where, str)).strip()
            if not phrase:
                continue
            if index is not None:
                if image_id not in index:
                    raise AdapterError(
                        f"{annotations}: {where} has image_id {image_id}, absent from {images_path.name}"
                    )
                meta_image = index[image_id]
                url = text_field(meta_image, "url", images_path, f"image {image_id}")
                image = "/".join(url.rstrip("/").split("/")[-2:])
                width, height = positive_size(
                    meta_image.get("width"), meta_image.get("height"), images_path, f"image {image_id}"
                )
            else:
                if image_id not in located:
                    located[image_id] = _find_image(image_id, image_root, annotations)
                image = located[image_id]
                width, height = sizes.get(image, annotations, where)
            box = xywh_box([x, y, w, h], width, height, annotations, where)
            turn = Turn(phrase, format_box(box)) if task == "refer" else Turn(format_box(box), phrase)
            yield TaskExample(
                task=task,
                turns=[turn],
                image=image,
                dataset=dataset,
                meta={"box": box, "region_id": region.get("region_id"), "image_id": image_id},
            )
