"""The benchmarks a pipeline can close with, keyed by the names of `data_specs.registry.BENCHMARKS`,
and `evaluate_checkpoint`, which builds a stage checkpoint's model and runs one of them.

The shapes world is the first entry; a new benchmark adds its name to the registry and a runner
here: `runner(built, *, data_dir, split, tasks, max_images, batch_size, seed, template, end_sym,
log) -> (metrics, prediction table)`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from model.build import BuiltModel, build_model
from model.checkpoint import read_manifest
from tasks import shapes_world
from tasks.data.records import SourceRecords
from tasks.evaluate.shapes import evaluate_shapes
from tasks.ingest import read_records

Metrics = tuple[dict[str, float], list[dict]]


def _shapes_world(
    built: BuiltModel,
    *,
    data_dir: str | Path,
    split: str,
    tasks: list[str],
    max_images: int,
    batch_size: int,
    seed: int,
    template: str,
    end_sym: str,
    log: Callable[[str], None],
) -> Metrics:
    records = list(itertools.islice(read_records(Path(data_dir), split=split), max_images))
    if not records:
        raise ValueError(f"no records in split {split!r} of {data_dir}")
    train = SourceRecords(data_dir, "train")  # annotations only (no image is decoded): the majority baseline
    train_annotations = [train.meta(i)["annotations"] for i in range(len(train))]
    return evaluate_shapes(
        built.model,
        built.tokenizer,
        built.preprocess,
        records,
        tasks=tasks,
        num_query_tokens=built.preset.num_query_tokens,
        template=template,
        end_sym=end_sym,
        batch_size=batch_size,
        seed=seed,
        train_annotations=train_annotations,
        log=log,
    )


RUNNERS: dict[str, Callable[..., Metrics]] = {"shapes_world": _shapes_world}


def evaluate_checkpoint(
    checkpoint: str | Path,
    model_spec: Any,
    *,
    benchmark: str = "shapes_world",
    data_dir: str | Path,
    split: str,
    tasks: list[str],
    max_images: int,
    batch_size: int,
    seed: int,
    template: str = "human_assistant",
    end_sym: str = "###",
    log: Callable[[str], None] = print,
) -> Metrics:
    """Load a stage checkpoint and evaluate it with `benchmark` on an ingested source's split."""
    runner = RUNNERS[benchmark]
    built, _ = build_model(
        model_spec,
        image_size=_checkpoint_image_size(checkpoint),
        init_checkpoint=checkpoint,
        tokenizer_corpus=shapes_world.tokenizer_corpus,
        log=log,
    )
    return runner(
        built,
        data_dir=data_dir,
        split=split,
        tasks=tasks,
        max_images=max_images,
        batch_size=batch_size,
        seed=seed,
        template=template,
        end_sym=end_sym,
        log=log,
    )


def _checkpoint_image_size(checkpoint: str | Path) -> int | None:
    return read_manifest(checkpoint).get("metadata", {}).get("image_size")
