"""Dataset adapters: each reads one dataset in its official annotation format and yields `TaskExample`s
(content only; the template registry adds identifiers and instructions). Names follow TinyGPT-V's stage-4
mixture (refcocop = RefCOCO+); `load_examples(name, annotations, image_root, **options)` is the one entry.
Image paths in the examples are relative to the adapter's image_root (see each AdapterInfo.image_root).
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from tasks.adapters._common import AdapterError
from tasks.adapters.aokvqa import load_aokvqa
from tasks.adapters.cc_sbu_align import load_cc_sbu_align
from tasks.adapters.coco import load_coco_captions, load_coco_vqa
from tasks.adapters.flickr import load_flickr
from tasks.adapters.gqa import load_gqa
from tasks.adapters.llava import load_llava
from tasks.adapters.ocrvqa import load_ocrvqa
from tasks.adapters.refcoco import load_refcoco
from tasks.adapters.textcaps import load_textcaps
from tasks.adapters.unnatural import load_unnatural
from tasks.adapters.visual_genome import load_visual_genome
from tasks.examples import TaskExample

__all__ = ["ADAPTERS", "AdapterError", "AdapterInfo", "adapter_options", "load_examples"]

Loader = Callable[..., Iterator[TaskExample]]


@dataclass(frozen=True)
class AdapterInfo:
    name: str
    loader: Loader  # loader(annotations: Path, image_root: Path | None, *, dataset: str, **options)
    tasks: tuple[str, ...]  # task types its examples carry
    annotations: str  # what `annotations` must point at
    image_root: str  # the folder example.image is relative to
    fixed: Mapping[str, Any] = field(default_factory=dict)  # options this name pins (e.g. task=identify)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # option defaults that differ from the loader's


def _info(name: str, loader: Loader, task: str, annotations: str, image_root: str, **kw: Any) -> AdapterInfo:
    frozen = {k: MappingProxyType(dict(v)) for k, v in kw.items()}
    return AdapterInfo(name, loader, (task,), annotations, image_root, **frozen)


_COCO2014 = "COCO train2014/ (COCO_train2014_*.jpg)"
_COCO2017 = "COCO train2017/"
_VQA = "{} (the OpenEnded questions file beside it, or option questions=)"
_FLICKR = "flickr30k_entities folder (Sentences/, Annotations/, train.txt)"
_VG = "region_descriptions.json (image_data.json beside it)"
_VG_IMAGES = "Visual Genome folder holding VG_100K/ and VG_100K_2/"
# name -> (title, split_by); the inv- twin of each pins task=identify
_REFCOCO = {"refcoco": ("RefCOCO", "unc"), "refcocop": ("RefCOCO+", "unc"), "refcocog": ("RefCOCOg", "umd")}
_LLAVA = {  # name -> (file, task, images)
    "llava_conversation": ("conversation_58k.json", "conversation", _COCO2017),
    "llava_reason": ("complex_reasoning_77k.json", "conversation", _COCO2017),
    "llava_instruct": ("llava_instruct_150k.json", "conversation", _COCO2017),
    "llava_detail": ("detail_23k.json", "detailed_description", _COCO2017),
    "multitask_conversation": ("MiniGPT-v2 multitask_conversation.json", "conversation", _COCO2014),
}
_FLICKR_VARIANTS = {
    "flickr_grounded_caption": ("grounded_caption", "grounding"),
    "flickr_CaptionToPhrase": ("caption_to_phrase", "detection"),
    "flickr_ObjectToPhrase": ("object_to_phrase", "detection"),
}

_ALL = [
    _info(
        "cc_sbu_align", load_cc_sbu_align, "detailed_description", "filter_cap.json", "cc_sbu_align/image/"
    ),
    _info("coco_caption", load_coco_captions, "caption", "captions_train2017.json", _COCO2017),
    _info("coco_vqa", load_coco_vqa, "vqa", _VQA.format("v2_mscoco_train2014_annotations.json"), _COCO2014),
    _info("ok_vqa", load_coco_vqa, "vqa", _VQA.format("mscoco_train2014_annotations.json"), _COCO2014),
    _info("aok_vqa", load_aokvqa, "vqa", "aokvqa_v1p0_train.json", _COCO2017),
    _info("gqa", load_gqa, "vqa", "train_balanced_questions.json (or a folder of such files)", "gqa/images/"),
    _info("ocr_vqa", load_ocrvqa, "vqa", "dataset.json", "ocr_vqa/images/"),
    _info("textcaps_caption", load_textcaps, "caption", "TextCaps_0.1_train.json", "TextVQA train_images/"),
    *[
        _info(
            f"{inv}{name}",
            load_refcoco,
            task,
            f"{title} folder: refs({by}).p, instances.json",
            _COCO2014,
            fixed={"task": task},
            defaults={"split_by": by},
        )  # fmt: skip
        for name, (title, by) in _REFCOCO.items()
        for inv, task in (("", "refer"), ("inv", "identify"))
    ],
    _info("refvg", load_visual_genome, "refer", _VG, _VG_IMAGES, fixed={"task": "refer"}),
    _info("invrefvg", load_visual_genome, "identify", _VG, _VG_IMAGES, fixed={"task": "identify"}),
    *[
        _info(name, load_llava, task, f"LLaVA {file}", images, fixed={"task": task})
        for name, (file, task, images) in _LLAVA.items()
    ],
    *[
        _info(name, load_flickr, task, _FLICKR, "flickr30k_images/", fixed={"variant": variant})
        for name, (variant, task) in _FLICKR_VARIANTS.items()
    ],
    _info("unnatural_instruction", load_unnatural, "text_instruction", "core_data.jsonl", "none (text only)"),
]
ADAPTERS: dict[str, AdapterInfo] = {info.name: info for info in _ALL}


def adapter_options(name: str) -> dict[str, Any]:
    """The options `load_examples` accepts for this adapter, with their defaults."""
    info = _lookup(name)
    params = inspect.signature(info.loader).parameters
    options = {
        p.name: p.default
        for p in params.values()
        if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in info.fixed
    }
    options.update(info.defaults)
    options["dataset"] = name
    return options


def _lookup(name: str) -> AdapterInfo:
    if name not in ADAPTERS:
        raise AdapterError(f"unknown dataset adapter {name!r}; known: {', '.join(sorted(ADAPTERS))}")
    return ADAPTERS[name]


def load_examples(
    adapter_name: str, annotations: str | Path, image_root: str | Path | None = None, **options: Any
) -> Iterator[TaskExample]:
    """Examples of one dataset, in the file's order. Missing files and malformed first records raise
    here; later malformed records raise when reached. An option given as None means the adapter's
    default (specs pass e.g. split=None to every adapter); split="all" reads every split."""
    info = _lookup(adapter_name)
    accepted = adapter_options(adapter_name)
    options = {k: v for k, v in options.items() if v is not None}
    for key in options:
        if key in info.fixed:
            raise AdapterError(f"adapter {adapter_name} fixes {key}={info.fixed[key]!r}; it cannot be set")
        if key not in accepted:
            raise AdapterError(
                f"adapter {adapter_name} has no option {key!r}; options: {', '.join(sorted(accepted))}"
            )
    root = Path(image_root) if image_root is not None else None
    stream = info.loader(Path(annotations), root, **{**accepted, **options, **info.fixed})
    # pull the first example now, so a missing or unreadable file fails at the call, not mid-training
    first = next(stream, None)
    return stream if first is None else itertools.chain([first], stream)
