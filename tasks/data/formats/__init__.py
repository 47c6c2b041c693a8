"""Dataset-format readers: each reads one dataset in its official annotation format and yields
`TaskExample`s (content only; the template registry adds identifiers and instructions).

The format names, and what each one's files hold, are the registry `data_specs.registry.
DATASET_FORMATS` (a stage spec's `format:` is checked against it); `READERS` maps each format's
`reader` to its function here. `load_examples(name, annotations, image_root, **options)` is the one
entry. Image paths in the examples are relative to the format's image_root.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from data_specs.registry import DATASET_FORMATS, DatasetFormat, unknown_name
from tasks.data.examples import TaskExample
from tasks.data.formats._common import FormatError
from tasks.data.formats.aokvqa import load_aokvqa
from tasks.data.formats.cc_sbu_align import load_cc_sbu_align
from tasks.data.formats.coco import load_coco_captions, load_coco_vqa
from tasks.data.formats.flickr import load_flickr
from tasks.data.formats.gqa import load_gqa
from tasks.data.formats.llava import load_llava
from tasks.data.formats.ocrvqa import load_ocrvqa
from tasks.data.formats.refcoco import load_refcoco
from tasks.data.formats.textcaps import load_textcaps
from tasks.data.formats.unnatural import load_unnatural
from tasks.data.formats.visual_genome import load_visual_genome

__all__ = ["FORMATS", "READERS", "FormatError", "format_options", "load_examples"]

# reader(annotations: Path, image_root: Path | None, *, dataset: str, **options) -> examples
Reader = Callable[..., Iterator[TaskExample]]

READERS: dict[str, Reader] = {
    "aokvqa": load_aokvqa,
    "cc_sbu_align": load_cc_sbu_align,
    "coco_captions": load_coco_captions,
    "coco_vqa": load_coco_vqa,
    "flickr": load_flickr,
    "gqa": load_gqa,
    "llava": load_llava,
    "ocrvqa": load_ocrvqa,
    "refcoco": load_refcoco,
    "textcaps": load_textcaps,
    "unnatural": load_unnatural,
    "visual_genome": load_visual_genome,
}
FORMATS = DATASET_FORMATS


def format_options(name: str) -> dict[str, Any]:
    """The options `load_examples` accepts for this format, with their defaults."""
    info = _lookup(name)
    params = inspect.signature(READERS[info.reader]).parameters
    options = {
        p.name: p.default
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in info.fixed
    }
    options.update(info.defaults)
    options["dataset"] = name
    return options


def _lookup(name: str) -> DatasetFormat:
    if name not in FORMATS:
        raise FormatError(unknown_name("dataset format", name, FORMATS))
    return FORMATS[name]


def load_examples(
    format_name: str, annotations: str | Path, image_root: str | Path | None = None, **options: Any
) -> Iterator[TaskExample]:
    """Examples of one dataset, in the file's order. Missing files and malformed first records raise
    here; later malformed records raise when reached. An option given as None means the format's
    default (specs pass e.g. split=None to every format); split="all" reads every split."""
    info = _lookup(format_name)
    accepted = format_options(format_name)
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key in info.fixed:
            raise FormatError(f"format {format_name} fixes {key}={info.fixed[key]!r}; it cannot be set")
        if key not in accepted:
            raise FormatError(
                f"format {format_name} has no option {key!r}; options: {', '.join(sorted(accepted))}"
            )
    root = Path(image_root) if image_root is not None else None
    stream = READERS[info.reader](Path(annotations), root, **{**accepted, **options, **info.fixed})
    # pull the first example now, so a missing or unreadable file fails at the call, not mid-training
    first = next(stream, None)
    return stream if first is None else itertools.chain([first], stream)
