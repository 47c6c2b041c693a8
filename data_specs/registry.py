"""Every name a spec may use, in one place, each checked when a spec is loaded.

Model names come from the model package, where they are defined: presets (`model/presets.py`) and
trainable groups (`model/trainable.py`), both read without loading torch. The names of the data
and training vocabulary are defined here, and the code that implements each is keyed by them
(and checked to cover them by the tests): task types and their identifiers (templates in
`tasks/data/templates.py`), prompt templates, contrastive losses (`tasks/train/stage.py`), dataset
formats with what their files hold (readers in `tasks/data/formats/`), and evaluation benchmarks
(`tasks/evaluate/`). A spec field typed `Name(REGISTRY, "kind")` rejects an unknown name with one
line that lists the known ones, and its JSON Schema carries them as an enum for editors.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Annotated, Any

from pydantic import AfterValidator, WithJsonSchema

from model.presets import PRESETS
from model.trainable import GROUPS


@dataclass(frozen=True)
class TaskType:
    identifier: str  # MiniGPT-v2's task identifier prefixed to the instruction ("" = none)
    description: str


# Task types and the identifier each is trained with.
TASK_TYPES: Mapping[str, TaskType] = MappingProxyType(
    {
        "image_text": TaskType("", "stages 1-2: the caption right after the image, no prompt"),
        "caption": TaskType("[caption]", "a short caption"),
        "detailed_description": TaskType("", "a long description (cc_sbu_align, LLaVA detail)"),
        "vqa": TaskType("[vqa]", "a short answer to a question about the image"),
        "refer": TaskType("[refer]", "the box of the object an expression names"),
        "identify": TaskType("[identify]", "the expression of the object in a box"),
        "grounding": TaskType("[grounding]", "a caption with a box after every object"),
        "detection": TaskType("[detection]", "the boxes of the objects named"),
        "conversation": TaskType("", "multi-turn dialogue (LLaVA conversation, reasoning)"),
        "text_instruction": TaskType("", "text only (Unnatural Instructions), mixed into image batches"),
    }
)

# Prompt templates (rendered by tasks/data/templates.py).
TEMPLATES: Mapping[str, str] = MappingProxyType(
    {
        "image_text": "stages 1-2: `<Img><ImageHere></Img> caption`, no instruction",
        "human_assistant": "`###Human: <Img><ImageHere></Img> instruction ###Assistant: answer`",
    }
)

# Auxiliary contrastive losses (implemented in model/losses.py, chosen in tasks/train/stage.py).
CONTRASTIVE_LOSSES: Mapping[str, str] = MappingProxyType(
    {
        "semantic_transform": "EIM's lossST: each sample's mean image embedding against the mean LM "
        "input embedding of its own text, InfoNCE over the step's samples",
    }
)


@dataclass(frozen=True)
class DatasetFormat:
    """A dataset in its official annotation format, read by `reader` (tasks/data/formats/)."""

    reader: str  # key of the reader function in tasks.data.formats.READERS
    task: str  # task type its examples carry
    annotations: str  # what a stage's `annotations` must point at
    image_root: str  # the folder example.image is relative to
    fixed: Mapping[str, Any] = field(default_factory=dict)  # options this name pins (e.g. task=identify)
    defaults: Mapping[str, Any] = field(default_factory=dict)  # option defaults that differ from the reader's

    @property
    def tasks(self) -> tuple[str, ...]:
        return (self.task,)


def _format(reader: str, task: str, annotations: str, image_root: str, **kw: Any) -> DatasetFormat:
    frozen = {k: MappingProxyType(dict(v)) for k, v in kw.items()}
    return DatasetFormat(reader, task, annotations, image_root, **frozen)


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

# Names follow TinyGPT-V's stage-4 mixture (refcocop = RefCOCO+).
DATASET_FORMATS: Mapping[str, DatasetFormat] = MappingProxyType(
    {
        "cc_sbu_align": _format(
            "cc_sbu_align", "detailed_description", "filter_cap.json", "cc_sbu_align/image/"
        ),
        "coco_caption": _format("coco_captions", "caption", "captions_train2017.json", _COCO2017),
        "coco_vqa": _format(
            "coco_vqa", "vqa", _VQA.format("v2_mscoco_train2014_annotations.json"), _COCO2014
        ),
        "ok_vqa": _format("coco_vqa", "vqa", _VQA.format("mscoco_train2014_annotations.json"), _COCO2014),
        "aok_vqa": _format("aokvqa", "vqa", "aokvqa_v1p0_train.json", _COCO2017),
        "gqa": _format(
            "gqa", "vqa", "train_balanced_questions.json (or a folder of such files)", "gqa/images/"
        ),
        "ocr_vqa": _format("ocrvqa", "vqa", "dataset.json", "ocr_vqa/images/"),
        "textcaps_caption": _format(
            "textcaps", "caption", "TextCaps_0.1_train.json", "TextVQA train_images/"
        ),
        **{
            f"{inv}{name}": _format(
                "refcoco",
                task,
                f"{title} folder: refs({by}).p, instances.json",
                _COCO2014,
                fixed={"task": task},
                defaults={"split_by": by},
            )
            for name, (title, by) in _REFCOCO.items()
            for inv, task in (("", "refer"), ("inv", "identify"))
        },
        "refvg": _format("visual_genome", "refer", _VG, _VG_IMAGES, fixed={"task": "refer"}),
        "invrefvg": _format("visual_genome", "identify", _VG, _VG_IMAGES, fixed={"task": "identify"}),
        **{
            name: _format("llava", task, f"LLaVA {file}", images, fixed={"task": task})
            for name, (file, task, images) in _LLAVA.items()
        },
        **{
            name: _format("flickr", task, _FLICKR, "flickr30k_images/", fixed={"variant": variant})
            for name, (variant, task) in _FLICKR_VARIANTS.items()
        },
        "unnatural_instruction": _format(
            "unnatural", "text_instruction", "core_data.jsonl", "none (text only)"
        ),
    }
)


@dataclass(frozen=True)
class Benchmark:
    """An evaluation a pipeline can close with (run by tasks/evaluate/benchmarks.py)."""

    tasks: tuple[str, ...]  # the evaluation tasks it scores; a spec picks a subset
    description: str


BENCHMARKS: Mapping[str, Benchmark] = MappingProxyType(
    {
        "shapes_world": Benchmark(
            ("vqa", "refer", "caption"),
            "held-out shapes-world scenes: closed VQA accuracy, referring accuracy (IoU >= 0.5) and "
            "caption BLEU-4, each beside its chance level",
        ),
    }
)


def unknown_name(kind: str, value: object, known: Mapping[str, Any] | tuple[str, ...]) -> str:
    """One line for a name that is not in its registry: the name, a close match, the known names."""
    names = sorted(known)
    close = difflib.get_close_matches(str(value), names, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    plural = kind + ("es" if kind.endswith("s") else "s")
    return f"unknown {kind} {value!r}{hint}; known {plural}: {', '.join(names)}"


def check_name(value: str, known: Mapping[str, Any] | tuple[str, ...], kind: str) -> str:
    if value not in known:
        raise ValueError(unknown_name(kind, value, known))
    return value


def Name(known: Mapping[str, Any] | tuple[str, ...], kind: str) -> Any:  # noqa: N802 (a type factory)
    """A string spec field that must be one of `known`'s names (an enum in the JSON Schema)."""
    return Annotated[
        str,
        AfterValidator(lambda value: check_name(value, known, kind)),
        WithJsonSchema({"type": "string", "enum": sorted(known)}),
    ]


__all__ = [
    "BENCHMARKS",
    "CONTRASTIVE_LOSSES",
    "DATASET_FORMATS",
    "GROUPS",
    "PRESETS",
    "TASK_TYPES",
    "TEMPLATES",
    "Benchmark",
    "DatasetFormat",
    "Name",
    "TaskType",
    "check_name",
    "unknown_name",
]
