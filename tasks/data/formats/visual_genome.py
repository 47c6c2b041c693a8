"""Visual Genome region descriptions -> refer / identify (MiniGPT-v2's "refvg").

Format as published: region_descriptions.json = [{"id": image_id, "regions": [{"region_id", "image_id",
"phrase", "x", "y", "width", "height"}]}] (pixels) and image_data.json = [{"image_id" (v1.0: "id"), "url",
"width", "height"}]. Images are VG_100K/<id>.jpg or VG_100K_2/<id>.jpg, the folder being the url's last but
one part (image_root: the folder holding both); without image_data.json the file is looked for in both and
its size read. Like MiniGPT-v2 (after OFA) only regions under 16384 px^2 are kept (max_region_area=0 keeps
all); regions with an empty phrase are skipped (noise in the release, not a format error).
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
    positive_size,
    read_json,
    text_field,
    xywh_box,
)

REGIONS_EXPECTED = (
    'VG region_descriptions.json: [{"id", "regions": [{"image_id", "phrase", "x", "y", "width", "height"}]}]'
)
IMAGES_EXPECTED = 'VG image_data.json: [{"image_id", "url", "width", "height"}]'
IMAGE_FOLDERS = ("VG_100K", "VG_100K_2")


def _image_index(path: Path) -> dict[int, dict[str, Any]]:
    data = read_json(path, IMAGES_EXPECTED)
    if not isinstance(data, list):
        raise FormatError(f"{path}: top level is {type(data).__name__}; expected {IMAGES_EXPECTED}")
    index = {}
    for i, image in enumerate(data):
        key = "image_id" if isinstance(image, dict) and "image_id" in image else "id"
        index[field(image, key, path, f"image {i}", int)] = image
    return index


class _ImageLookup:
    """image_id -> (relative path, width, height): from image_data.json when there is one, else by
    finding the file under image_root and reading its size."""

    def __init__(
        self, index: dict[int, dict[str, Any]] | None, index_path: Path, image_root: Path | None, dataset: str
    ):
        self.index, self.index_path, self.image_root = index, index_path, image_root
        self.sizes = ImageSizes(image_root, dataset)
        self.found: dict[int, tuple[str, float, float]] = {}

    def __call__(self, image_id: int, path: Path, where: str) -> tuple[str, float, float]:
        if image_id not in self.found:
            self.found[image_id] = (
                self._from_index(image_id, path, where)
                if self.index is not None
                else self._from_files(image_id, path, where)
            )
        return self.found[image_id]

    def _from_index(self, image_id: int, path: Path, where: str) -> tuple[str, float, float]:
        assert self.index is not None
        if image_id not in self.index:
            raise FormatError(f"{path}: {where} has image_id {image_id}, absent from {self.index_path.name}")
        record, at = self.index[image_id], f"image {image_id}"
        url = text_field(record, "url", self.index_path, at)
        width, height = positive_size(record.get("width"), record.get("height"), self.index_path, at)
        return "/".join(url.rstrip("/").split("/")[-2:]), width, height

    def _from_files(self, image_id: int, path: Path, where: str) -> tuple[str, float, float]:
        if self.image_root is None:
            raise FormatError(
                f"{path}: no image_data.json beside it; pass image_root to locate image {image_id}"
            )
        for folder in IMAGE_FOLDERS:
            if (self.image_root / folder / f"{image_id}.jpg").is_file():
                image = f"{folder}/{image_id}.jpg"
                return (image, *self.sizes.get(image, path, where))
        raise FormatError(f"{self.image_root}: image {image_id}.jpg in neither {' nor '.join(IMAGE_FOLDERS)}")


def load_visual_genome(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    task: str = "refer",
    image_data: str | Path | None = None,
    max_region_area: float = 16384,  # px^2; 0 keeps every region
) -> Iterator[TaskExample]:
    if task not in ("refer", "identify"):
        raise FormatError(
            f"{annotations}: task {task!r} not produced by Visual Genome; expected refer or identify"
        )
    images_path = Path(image_data) if image_data is not None else annotations.with_name("image_data.json")
    # image_data.json is optional only when not asked for by name: then sizes come from the images
    index = _image_index(images_path) if image_data is not None or images_path.is_file() else None
    lookup = _ImageLookup(index, images_path, image_root, dataset)
    regions_by_image = read_json(annotations, REGIONS_EXPECTED)
    if not isinstance(regions_by_image, list):
        raise FormatError(
            f"{annotations}: top level is {type(regions_by_image).__name__}; expected {REGIONS_EXPECTED}"
        )
    for i, entry in enumerate(regions_by_image):
        for j, region in enumerate(field(entry, "regions", annotations, f"image entry {i}", list)):
            where = f"image entry {i} regions[{j}]"
            image_id = field(region, "image_id", annotations, where, int)
            x, y, w, h = (
                field(region, k, annotations, where, (int, float)) for k in ("x", "y", "width", "height")
            )
            phrase = field(region, "phrase", annotations, where, str).strip()
            if (max_region_area and w * h >= max_region_area) or not phrase:
                continue
            image, width, height = lookup(image_id, annotations, where)
            box = xywh_box([x, y, w, h], width, height, annotations, where)
            turn = Turn(phrase, format_box(box)) if task == "refer" else Turn(format_box(box), phrase)
            meta = {"box": box, "region_id": region.get("region_id"), "image_id": image_id}
            yield TaskExample(task=task, turns=[turn], image=image, dataset=dataset, meta=meta)
