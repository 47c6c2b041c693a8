"""Flickr30k Entities -> MiniGPT-v2's three Flickr sets: grounded captions ([grounding]),
caption -> its phrases with boxes (flickr_CaptionToPhrase, [detection]) and phrase -> box
(flickr_ObjectToPhrase, [detection]).

Format as published (BryanPlummer/flickr30k_entities): Sentences/<image_id>.txt, one caption a line with
phrases marked `[/EN#<chain id>/<type>[/<type>...] words]` (chain 0 = notvisual), and
Annotations/<image_id>.xml, PASCAL-VOC-like: <size><width/><height/></size> and <object>s with one or more
<name> (chain ids) and a 1-based <bndbox> (xmin..ymax) or scene/nobndbox flags; train.txt, val.txt and
test.txt list the image ids (split="all": every Sentences file). annotations is that folder, image_root the
flickr30k_images/ folder (<image_id>.jpg). A phrase with several boxes gets them all, joined by <delim> as
MiniGPT-v2 writes detections; captions with no boxed phrase are skipped.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tasks.data.boxes import Box, normalise_box
from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import (
    FormatError,
    ImageSizes,
    grounded_phrase,
    need_dir,
    need_file,
    positive_size,
)

VARIANTS = ("grounded_caption", "caption_to_phrase", "object_to_phrase")
EXPECTED_DIR = "the flickr30k_entities folder with Sentences/, Annotations/ and <split>.txt"
_PHRASE = re.compile(r"\[/EN#(\d+)((?:/[^\s/\]]+)+)\s+([^\]]+)\]")


@dataclass(frozen=True)
class Phrase:
    chain: str
    text: str
    boxes: tuple[Box, ...]


def parse_sentence(
    line: str, boxes: dict[str, list[Box]], path: Path, where: str
) -> tuple[str, str, list[Phrase]]:
    """Marked-up caption -> (plain caption, grounded caption, its phrases in order)."""
    phrases: list[Phrase] = []

    def grounded(match: re.Match[str]) -> str:
        phrase = Phrase(match.group(1), match.group(3).strip(), tuple(boxes.get(match.group(1), ())))
        phrases.append(phrase)
        return grounded_phrase(phrase.text, phrase.boxes) if phrase.boxes else phrase.text

    grounded_text = _PHRASE.sub(grounded, line)
    if "[/EN#" in grounded_text:
        raise FormatError(f"{path}: {where} has an unclosed or malformed [/EN#id/type words] phrase")
    plain = _PHRASE.sub(lambda m: m.group(3).strip(), line)
    return " ".join(plain.split()), " ".join(grounded_text.split()), phrases


def _int(element: ET.Element, tag: str, path: Path, where: str) -> int:
    text = element.findtext(tag)
    try:
        return int(float(text))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise FormatError(f"{path}: {where} <{tag}> is {text!r}; expected a pixel coordinate") from None


def parse_annotation(path: Path, sizes: ImageSizes, image: str) -> dict[str, list[Box]]:
    """chain id -> its boxes on 0-100 (objects shared by several chains count for each)."""
    need_file(path, "a Flickr30k Entities Annotations/<image_id>.xml")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as e:
        raise FormatError(f"{path}: not valid XML ({e}); expected a Flickr30k Entities annotation") from e
    size = root.find("size")
    if size is not None and size.findtext("width") and size.findtext("height"):
        width, height = positive_size(
            _int(size, "width", path, "<size>"), _int(size, "height", path, "<size>"), path, "<size>"
        )
    else:
        width, height = sizes.get(image, path, "<size>")
    boxes: dict[str, list[Box]] = {}
    for k, obj in enumerate(root.findall("object")):
        names = [n.text.strip() for n in obj.findall("name") if n.text and n.text.strip()]
        if not names:
            raise FormatError(f"{path}: object {k} has no <name> (chain id)")
        bndbox = obj.find("bndbox")
        if bndbox is None:
            continue  # scene or nobndbox: the phrase stays plain text
        # 1-based inclusive pixel indices, made 0-based as the dataset's own reader does
        x1, y1, x2, y2 = (_int(bndbox, t, path, f"object {k}") - 1 for t in ("xmin", "ymin", "xmax", "ymax"))
        box = normalise_box(x1, y1, x2, y2, width, height)
        for name in names:
            boxes.setdefault(name, []).append(box)
    return boxes


def _image_ids(root: Path, split: str) -> list[str]:
    if split == "all":
        return sorted(p.stem for p in need_dir(root / "Sentences", EXPECTED_DIR).glob("*.txt"))
    listing = need_file(root / f"{split}.txt", f"the {split} image-id list of {EXPECTED_DIR}")
    return [line.strip() for line in listing.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_flickr(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    variant: str = "grounded_caption",
    split: str = "train",
) -> Iterator[TaskExample]:
    if variant not in VARIANTS:
        raise FormatError(
            f"{annotations}: unknown Flickr variant {variant!r}; expected {', '.join(VARIANTS)}"
        )
    need_dir(annotations, EXPECTED_DIR)
    sizes = ImageSizes(image_root, dataset)
    for image_id in _image_ids(annotations, split):
        image = f"{image_id}.jpg"
        boxes = parse_annotation(annotations / "Annotations" / f"{image_id}.xml", sizes, image)
        sentences = need_file(
            annotations / "Sentences" / f"{image_id}.txt", "a Flickr30k Entities Sentences/<image_id>.txt"
        )
        seen: set[tuple[str, str]] = set()
        for n, line in enumerate(sentences.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            plain, grounded_text, phrases = parse_sentence(line, boxes, sentences, f"line {n}")
            boxed = [p for p in phrases if p.boxes]
            if not boxed:
                continue
            meta = {
                "image_id": image_id,
                "sentence": n,
                "phrases": [{"phrase": p.text, "boxes": list(p.boxes)} for p in boxed],
            }
            if variant == "grounded_caption":
                yield TaskExample(
                    "grounding", [Turn(None, grounded_text)], image, dataset, {**meta, "caption": plain}
                )
            elif variant == "caption_to_phrase":
                first = {p.chain: p for p in reversed(boxed)}  # first mention of each chain
                answer = " ".join(grounded_phrase(p.text, p.boxes) for p in boxed if first[p.chain] is p)
                yield TaskExample("detection", [Turn(plain, answer)], image, dataset, meta)
            else:
                for p in boxed:
                    if (p.chain, p.text.lower()) in seen:
                        continue
                    seen.add((p.chain, p.text.lower()))
                    yield TaskExample(
                        "detection",
                        [Turn(p.text, grounded_phrase(p.text, p.boxes))],
                        image,
                        dataset,
                        {"image_id": image_id, "sentence": n, "boxes": list(p.boxes)},
                    )
