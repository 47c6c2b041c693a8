"""COCO captions, either Karpathy's split file `dataset_coco.json` ({images: [{filepath, filename,
cocoid, split, sentences: [{raw}]}]}, splits train/val/test/restval; images at `<filepath>/<filename>`)
or the official `captions_<split>.json` ({images: [{id, file_name}], annotations: [{image_id,
caption}]}; images at `<split>/<file_name>`). BLEU-1..4 and CIDEr-D as the COCO caption code computes
them; METEOR and SPICE are reported as not computed, with the reason."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

from .base import BenchmarkDataError, Item, find_file, first_line, get, java_absent_reasons, load_json
from .caption_metrics import caption_scores
from .scoring import check_lengths

NAME = "coco_caption"
DEFAULT_SPLIT = "test"
KARPATHY_SPLITS = ("train", "val", "test", "restval")
LAYOUT_KARPATHY = "Karpathy's dataset_coco.json beside the COCO 2014 image folders val2014/ and train2014/"
LAYOUT_OFFICIAL = "the COCO release: annotations/captions_{split}.json and {split}/ images"


def read(root: Path | str, split: str | None = None) -> list[Item]:
    root = Path(root).absolute()
    split = split or DEFAULT_SPLIT
    if split in KARPATHY_SPLITS:
        return _read_karpathy(root, split)
    return _read_official(root, split)


def _read_karpathy(root: Path, split: str) -> list[Item]:
    path = find_file(NAME, root, ["dataset_coco.json", "annotations/dataset_coco.json"], LAYOUT_KARPATHY)
    images = get(NAME, path, load_json(NAME, path), "images", "", list)
    items = []
    for index, im in enumerate(images):
        where = f"image {index}"
        if get(NAME, path, im, "split", where, str) != split:
            continue
        refs = []
        for s in get(NAME, path, im, "sentences", where, list):
            raw = get(NAME, path, s, "raw", f"{where} sentences", str, default=None)
            refs.append(raw if raw is not None else " ".join(get(NAME, path, s, "tokens", where, list)))
        if not refs:
            raise BenchmarkDataError(f"{NAME}: {path} {where}: field 'sentences' is empty")
        cocoid = get(NAME, path, im, "cocoid", where, (int, str))
        filepath = get(NAME, path, im, "filepath", where, str)
        filename = get(NAME, path, im, "filename", where, str)
        items.append(Item(str(cocoid), root / filepath / filename, "", None, refs, {"split": split}))
    return items


def _read_official(root: Path, split: str) -> list[Item]:
    layout = LAYOUT_OFFICIAL.format(split=split)
    filename = f"captions_{split}.json"
    path = find_file(NAME, root, [f"annotations/{filename}", filename], layout)
    image_dir = find_file(NAME, root, [split, f"images/{split}"], layout, is_dir=True)
    data = load_json(NAME, path)
    refs: dict[int, list[str]] = defaultdict(list)
    for index, a in enumerate(get(NAME, path, data, "annotations", "", list)):
        where = f"annotation {index}"
        refs[get(NAME, path, a, "image_id", where, int)].append(get(NAME, path, a, "caption", where, str))
    items = []
    for index, im in enumerate(get(NAME, path, data, "images", "", list)):
        where = f"image {index}"
        image_id = get(NAME, path, im, "id", where, int)
        if not refs.get(image_id):
            raise BenchmarkDataError(
                f"{NAME}: {path}: no caption in field 'annotations' for image id {image_id}"
            )
        file_name = get(NAME, path, im, "file_name", where, str)
        items.append(Item(str(image_id), image_dir / file_name, "", None, refs[image_id], {"split": split}))
    return items


def extract(raw: str, item: Item, end_sym: str | None = None) -> str:
    return first_line(raw, end_sym)


def score(items: Sequence[Item], predictions: Sequence[str | None]) -> dict[str, float]:
    check_lengths(NAME, items, predictions)
    out = caption_scores(predictions, [it.answers for it in items])
    out["n"] = float(len(items))
    return out


def unavailable() -> dict[str, str]:
    return java_absent_reasons(["meteor", "spice"])
