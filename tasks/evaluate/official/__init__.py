"""Official vision-language benchmarks: readers for each release's own file layout and the metrics
computed as each benchmark's evaluation code does, registered in `BENCHMARKS` by name.

Each entry (`OfficialBenchmark`) knows the project task the model is asked with, its prompt,
`read(root, split) -> [Item]`, `extract(raw_model_text, item) -> prediction` and
`score(items, predictions) -> {metric: value}`. Accuracies are fractions in [0, 1], `n` is the number
of items scored, MME subtask scores are (accuracy + accuracy+) * 100 and CIDEr-D is on the COCO code's
scale (x10 included). `paper_metric` names the metric to set beside the TinyGPT-V paper's Table 2 column
for the benchmark (None where that table has no column for it).
"""

from __future__ import annotations

from . import coco_captions, gqa, hateful_memes, iconqa, mme, refcoco, scienceqa, vizwiz, vqav2, vsr
from .base import BenchmarkDataError, Item, OfficialBenchmark, format_choices

SHORT_ANSWER = "Based on the image, respond to this question with a short answer: {question}"

_VQA_LAYOUT = "the official {title} release: {questions}, {annotations} and COCO {split}/ images"


def _vqa_entry(name: str, title: str, questions: str, annotations: str) -> OfficialBenchmark:
    layout = _VQA_LAYOUT.format(
        title=title,
        questions=questions.format(split=vqav2.DEFAULT_SPLIT),
        annotations=annotations.format(split=vqav2.DEFAULT_SPLIT),
        split=vqav2.DEFAULT_SPLIT,
    )
    return OfficialBenchmark(
        name=name,
        task="vqa",
        default_prompt=SHORT_ANSWER,
        max_new_tokens=10,
        read=vqav2.make_reader(name, questions, annotations, layout),
        extract=vqav2.extract,
        score=vqav2.score,
        paper_metric=None,
        default_split=vqav2.DEFAULT_SPLIT,
        layout=layout,
    )


def _refer_entry(name: str, folders: tuple[str, ...]) -> OfficialBenchmark:
    return OfficialBenchmark(
        name=name,
        task="refer",
        default_prompt="give me the location of {question}",
        max_new_tokens=24,
        read=refcoco.make_reader(name, folders),
        extract=refcoco.extract,
        score=refcoco.score,
        paper_metric=None,
        default_split=refcoco.DEFAULT_SPLIT,
        layout=f"{folders[0]}/<split>.json (MiniGPT-v2's JSON export) and COCO train2014/",
    )


_ENTRIES = [
    OfficialBenchmark(
        name=gqa.NAME,
        task="vqa",
        default_prompt=SHORT_ANSWER,
        max_new_tokens=10,
        read=gqa.read,
        extract=gqa.extract,
        score=gqa.score,
        paper_metric="accuracy",
        default_split=gqa.DEFAULT_SPLIT,
        layout=gqa.LAYOUT,
    ),
    OfficialBenchmark(
        name=vsr.NAME,
        task="vqa",
        default_prompt="Based on the image, is this statement true or false? {question}",
        max_new_tokens=10,
        read=vsr.read,
        extract=vsr.extract,
        score=vsr.score,
        paper_metric="accuracy",
        default_split=vsr.DEFAULT_SPLIT,
        layout=vsr.LAYOUT,
    ),
    OfficialBenchmark(
        name=iconqa.NAME,
        task="vqa",
        default_prompt=(
            "Based on the image, choose the right option for this question: {question} "
            "Options: {choices}. Answer with the option's letter."
        ),
        open_prompt=SHORT_ANSWER,
        max_new_tokens=10,
        read=iconqa.read,
        extract=iconqa.extract,
        score=iconqa.score,
        paper_metric="accuracy",
        default_split=iconqa.DEFAULT_SPLIT,
        layout=iconqa.LAYOUT,
    ),
    OfficialBenchmark(
        name=vizwiz.NAME,
        task="vqa",
        default_prompt=(
            "Based on the image, respond to this question with a single word or phrase: {question} "
            "Reply unanswerable if the image does not show the answer."
        ),
        max_new_tokens=10,
        read=vizwiz.read,
        extract=vizwiz.extract,
        score=vizwiz.score,
        paper_metric="accuracy",
        default_split=vizwiz.DEFAULT_SPLIT,
        layout=vizwiz.LAYOUT,
    ),
    OfficialBenchmark(
        name=hateful_memes.NAME,
        task="vqa",
        default_prompt='This is an image with: "{question}" written on it. Is it hateful? Answer yes or no.',
        max_new_tokens=10,
        read=hateful_memes.read,
        extract=hateful_memes.extract,
        score=hateful_memes.score,
        paper_metric="accuracy",
        default_split=hateful_memes.DEFAULT_SPLIT,
        layout=hateful_memes.LAYOUT,
    ),
    _vqa_entry(
        "vqav2", "VQAv2", "v2_OpenEnded_mscoco_{split}_questions.json", "v2_mscoco_{split}_annotations.json"
    ),
    _vqa_entry(
        "okvqa", "OK-VQA", "OpenEnded_mscoco_{split}_questions.json", "mscoco_{split}_annotations.json"
    ),
    OfficialBenchmark(
        name=scienceqa.NAME,
        task="vqa",
        default_prompt=(
            "Context: {context}\n{question}\nOptions: {choices}\n"
            "Answer with the option's letter from the given choices directly."
        ),
        max_new_tokens=10,
        read=scienceqa.read,
        extract=scienceqa.extract,
        score=scienceqa.score,
        paper_metric=None,
        default_split=scienceqa.DEFAULT_SPLIT,
        layout=scienceqa.LAYOUT,
    ),
    OfficialBenchmark(
        name=coco_captions.NAME,
        task="caption",
        default_prompt="Briefly describe this image.",
        max_new_tokens=30,
        read=coco_captions.read,
        extract=coco_captions.extract,
        score=coco_captions.score,
        paper_metric=None,
        default_split=coco_captions.DEFAULT_SPLIT,
        layout=coco_captions.LAYOUT_KARPATHY,
        unavailable=coco_captions.unavailable,
    ),
    OfficialBenchmark(
        name=mme.NAME,
        task="vqa",
        default_prompt="{question}",
        max_new_tokens=10,
        read=mme.read,
        extract=mme.extract,
        score=mme.score,
        paper_metric=None,
        default_split=None,
        layout=mme.LAYOUT,
    ),
    _refer_entry("refcoco", ("refcoco",)),
    _refer_entry("refcocop", ("refcoco+", "refcocop")),
    _refer_entry("refcocog", ("refcocog",)),
]

BENCHMARKS: dict[str, OfficialBenchmark] = {b.name: b for b in _ENTRIES}


def get_benchmark(name: str) -> OfficialBenchmark:
    if name not in BENCHMARKS:
        raise KeyError(f"unknown official benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[name]


__all__ = ["BENCHMARKS", "BenchmarkDataError", "Item", "OfficialBenchmark", "format_choices", "get_benchmark"]
