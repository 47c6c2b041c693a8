"""RefCOCO, RefCOCO+ and RefCOCOg from the JSON export MiniGPT-v2's evaluation reads (the official
`refs(*).p` is a pickle and is not loaded): `<dataset>/<split>.json` (or `<dataset>/<dataset>_<split>.json`),
a list of {img_id, sents, bbox [x, y, w, h] in pixels, height, width}, with COCO `train2014/` images.
A prediction is the first `{<x1><y1><x2><y2>}` box of the answer (0-100, relative to the image size);
accuracy is the share with IoU >= 0.5 against the gold box, an answer without a box counting wrong and
also in `malformed_rate`."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from tasks.data.boxes import iou, parse_boxes

from .base import BenchmarkDataError, Item, find_file, get, load_json, strip_end
from .scoring import check_lengths, mean

DEFAULT_SPLIT = "val"
IOU_THRESHOLD = 0.5
Box = tuple[int, int, int, int]


def _image_name(img_id: int | str) -> str:
    text = str(img_id)
    if text.isdigit():
        return f"COCO_train2014_{int(text):012d}.jpg"
    if text.startswith("COCO_") and len(text) >= 27:
        return text[:27] + ".jpg"  # MiniGPT-v2's ids append a suffix to COCO_train2014_<12 digits>
    return text if text.lower().endswith((".jpg", ".png")) else f"{text}.jpg"


def make_reader(name: str, folders: Sequence[str]) -> Callable[..., list[Item]]:
    """A reader for one of the three datasets; `folders` are the folder names it may have under root."""
    layout = f"the MiniGPT-v2 JSON export: {folders[0]}/<split>.json with COCO train2014/ images"

    def read(root: Path | str, split: str | None = None) -> list[Item]:
        root = Path(root).absolute()
        split = split or DEFAULT_SPLIT
        candidates = [f"{d}/{split}.json" for d in folders] + [f"{d}/{d}_{split}.json" for d in folders]
        path = find_file(name, root, candidates + [f"{split}.json"], layout)
        images = find_file(
            name, root, ["train2014", "images/train2014", "coco/train2014"], layout, is_dir=True
        )
        data = load_json(name, path)
        records = list(data.values()) if isinstance(data, dict) else data
        if not isinstance(records, list):
            raise BenchmarkDataError(f"{name}: {path}: the top level should be a JSON list")
        items = []
        for index, r in enumerate(records):
            where = f"record {index}"
            img_id = get(name, path, r, "img_id", where, (int, str))
            sents = get(name, path, r, "sents", where, (str, list))
            bbox = get(name, path, r, "bbox", where, list)
            if len(bbox) != 4 or not all(isinstance(v, (int, float)) for v in bbox):
                raise BenchmarkDataError(
                    f"{name}: {path} {where}: field 'bbox' should be 4 numbers [x, y, w, h]"
                )
            x, y, w, h = (float(v) for v in bbox)
            width = float(get(name, path, r, "width", where, (int, float)))
            height = float(get(name, path, r, "height", where, (int, float)))
            sentences = [sents] if isinstance(sents, str) else [str(s) for s in sents]
            for j, sent in enumerate(sentences):
                items.append(
                    Item(
                        id=f"{index}" if len(sentences) == 1 else f"{index}:{j}",
                        image=images / _image_name(img_id),
                        question=sent,
                        choices=None,
                        answers=(x, y, x + w, y + h),
                        meta={"img_id": str(img_id), "width": width, "height": height, "dataset": name},
                    )
                )
        return items

    return read


def extract(raw: str, item: Item, end_sym: str | None = None) -> Box | None:
    """The first well-formed box of the answer, or None."""
    boxes = parse_boxes(strip_end(raw, end_sym))
    return boxes[0] if boxes else None


def to_pixels(box: Sequence[float], width: float, height: float) -> tuple[float, float, float, float]:
    """A 0-100 box in image pixels, corners ordered."""
    x1, x2 = sorted((box[0] / 100 * width, box[2] / 100 * width))
    y1, y2 = sorted((box[1] / 100 * height, box[3] / 100 * height))
    return (x1, y1, x2, y2)


def score(items: Sequence[Item], predictions: Sequence[Box | str | None]) -> dict[str, float]:
    """accuracy (IoU >= 0.5), malformed_rate (no parsable box) and n; a string prediction is parsed."""
    check_lengths("refcoco", items, predictions)
    hits, malformed = [], []
    for it, p in zip(items, predictions, strict=True):
        if isinstance(p, str):
            p = extract(p, it)
        malformed.append(float(p is None))
        if p is None:
            hits.append(0.0)
            continue
        pred = to_pixels(p, it.meta["width"], it.meta["height"])
        hits.append(float(iou(pred, it.answers) >= IOU_THRESHOLD))  # type: ignore[arg-type]
    return {"accuracy": mean(hits), "malformed_rate": mean(malformed), "n": float(len(items))}
