"""Shared plumbing for the dataset-format readers: reading annotation files, one-line errors that name the
file, record and key, image sizes (from the annotation or read from the image), and box text.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from tasks.data.boxes import Box, format_box, normalise_box

# MiniGPT-v2 separates several boxes of one phrase with this token: `<p>two dogs</p> {..}<delim>{..}`.
BOX_DELIM = "<delim>"


class FormatError(ValueError):
    """An annotation file is missing or does not hold what its reader expects. One line of text."""

    def __init__(self, message: str):
        super().__init__(" ".join(message.split()))  # always one line, whatever the record held


def need_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise FormatError(f"{path}: file not found; expected {expected}")
    return path


def need_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise FormatError(f"{path}: folder not found; expected {expected}")
    return path


def read_json(path: Path, expected: str) -> Any:
    need_file(path, expected)
    try:
        with path.open(encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise FormatError(f"{path}: not valid JSON ({e.msg}, line {e.lineno}); expected {expected}") from e
    except UnicodeDecodeError as e:
        raise FormatError(f"{path}: not UTF-8 text; expected {expected}") from e


def read_jsonl(path: Path, expected: str) -> Iterator[tuple[int, Any]]:
    """(line number, record) for every non-blank line."""
    need_file(path, expected)
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as e:
                raise FormatError(
                    f"{path}: line {number} is not valid JSON ({e.msg}); expected {expected}"
                ) from e


class _PlainDataUnpickler(pickle.Unpickler):
    # refs(unc).p holds only lists, dicts, strings and numbers; refusing every class keeps a
    # tampered pickle from running code.
    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def read_pickle(path: Path, expected: str) -> Any:
    need_file(path, expected)
    # The RefCOCO pickles were written by Python 2: their str objects come back through `encoding`.
    for encoding in ("utf-8", "latin-1"):
        try:
            with path.open("rb") as f:
                return _PlainDataUnpickler(f, encoding=encoding).load()
        except UnicodeDecodeError:
            continue
        except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as e:
            raise FormatError(f"{path}: not a readable pickle ({e}); expected {expected}") from e
    raise FormatError(f"{path}: undecodable strings in pickle; expected {expected}")


Kind = type | tuple[type, ...]


def _is(value: Any, kind: Kind) -> bool:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # JSON true/false are ints to isinstance; they are never a valid id, size or coordinate here
    return isinstance(value, kinds) and not (isinstance(value, bool) and bool not in kinds)


def field(record: Any, key: str, path: Path, where: str, kind: Kind | None = None) -> Any:
    """record[key], or an FormatError naming the file, the record and the key."""
    if not isinstance(record, Mapping):
        raise FormatError(f"{path}: {where} is {type(record).__name__}; expected an object with {key!r}")
    if key not in record:
        raise FormatError(f"{path}: {where} has no {key!r}")
    value = record[key]
    if kind is not None and not _is(value, kind):
        names = "/".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise FormatError(f"{path}: {where} key {key!r} is {type(value).__name__}; expected {names}")
    return value


def text_field(record: Any, key: str, path: Path, where: str) -> str:
    """A non-empty string (ids written as numbers are accepted and turned into text)."""
    text = str(field(record, key, path, where, (str, int, float))).strip()
    if not text:
        raise FormatError(f"{path}: {where} key {key!r} is empty")
    return text


class ImageSizes:
    """Width and height of images under `image_root`, read once each (PIL reads only the header)."""

    def __init__(self, image_root: Path | None, dataset: str):
        self.image_root = image_root
        self.dataset = dataset
        self._cache: dict[str, tuple[int, int]] = {}

    def get(self, image: str, path: Path, where: str) -> tuple[int, int]:
        if image in self._cache:
            return self._cache[image]
        if self.image_root is None:
            raise FormatError(
                f"{path}: {where} gives no image size; pass image_root so {self.dataset} can read it from {image}"
            )
        file = self.image_root / image
        try:
            with Image.open(file) as im:
                size = im.size
        except FileNotFoundError as e:
            raise FormatError(f"{file}: image not found; {where} of {path} needs its size") from e
        except (UnidentifiedImageError, OSError) as e:
            raise FormatError(f"{file}: not a readable image ({e}); {where} of {path} needs its size") from e
        self._cache[image] = size
        return size


def positive_size(width: Any, height: Any, path: Path, where: str) -> tuple[float, float]:
    for name, v in (("width", width), ("height", height)):
        if not _is(v, (int, float)) or v <= 0:
            raise FormatError(f"{path}: {where} has {name} {v!r}; expected a positive number")
    return float(width), float(height)


def xywh_box(xywh: Any, width: float, height: float, path: Path, where: str) -> Box:
    """COCO/VG-style [x, y, w, h] in pixels -> integer box on 0-100."""
    if not _is(xywh, (list, tuple)) or len(xywh) != 4 or not all(_is(v, (int, float)) for v in xywh):
        raise FormatError(f"{path}: {where} box is {xywh!r}; expected [x, y, width, height] in pixels")
    x, y, w, h = xywh
    return normalise_box(x, y, x + w, y + h, width, height)


def grounded_phrase(phrase: str, boxes: Sequence[Box]) -> str:
    """`<p>phrase</p> {box}`, several boxes joined by <delim> (the MiniGPT-v2 form)."""
    return f"<p>{phrase}</p> {BOX_DELIM.join(format_box(b) for b in boxes)}"


def strip_image_marker(text: str) -> str:
    # LLaVA puts "<image>\n" before or after the first question; the template places the image itself.
    return text.replace("<image>", "").strip()
