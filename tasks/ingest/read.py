"""Read an ingested source back: the samples of the shards its manifest lists, as records with a
decoded image, caption, annotations and split, in a fixed order (manifest order, then sample key).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import webdataset as wds
from PIL import Image

MANIFEST = "manifest.json"
IMAGE_EXTS = ("jpg", "png", "webp")


def load_manifest(output_dir: str | Path) -> dict:
    path = Path(output_dir) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no manifest; run `vlmpipe ingest SOURCE_SPEC --output {output_dir}` first"
        )
    return json.loads(path.read_text())


def _raw_samples(tar_path: Path) -> list[dict]:
    # webdataset groups a tar's members into samples by key; no shuffling, no decoding yet; every
    # data-parallel rank reads the whole tar it is given (nodesplitter=None): the ranks split batches
    dataset = wds.WebDataset(str(tar_path), shardshuffle=False, empty_check=False, nodesplitter=None)
    return sorted(dataset, key=lambda s: s["__key__"])


def record_text(sample_key: str, meta: dict, txt: bytes | None) -> dict:
    """A sample's text fields from its `.json` (decoded) and `.txt` members: key, caption,
    annotations, split, url. Shared by `read_records` and the stage data's index."""
    annotations = meta.get("annotations")
    if isinstance(annotations, str):
        annotations = json.loads(annotations)
    return {
        "key": meta.get("source_key") or sample_key,
        "caption": txt.decode("utf-8") if txt is not None else (meta.get("caption") or ""),
        "annotations": annotations or {},
        "split": meta.get("split") or "train",
        "url": meta.get("url"),
    }


def _record(raw: dict) -> dict:
    meta = json.loads(raw["json"]) if "json" in raw else {}
    ext = next(e for e in IMAGE_EXTS if e in raw)
    image = Image.open(io.BytesIO(raw[ext]))
    return {
        **record_text(raw["__key__"], meta, raw.get("txt")),
        "sample_key": raw["__key__"],
        "image": image.convert("RGB"),
    }


def read_records(output_dir: str | Path, split: str | None = None) -> Iterator[dict]:
    """Records (key, image as RGB PIL.Image, caption, annotations dict, split, url) of every shard
    in the manifest; `split` keeps only that split ("train" for sources without splits)."""
    output_dir = Path(output_dir)
    manifest = load_manifest(output_dir)
    for shard in manifest["shards"]:
        if split is not None and not shard.get("splits", {}).get(split, 0) and shard.get("splits"):
            continue  # the manifest knows this shard has none of the split
        for raw in _raw_samples(output_dir / shard["path"]):
            record = _record(raw)
            if split is None or record["split"] == split:
                yield record
