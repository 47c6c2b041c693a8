"""Typed pipeline specs: which sources to ingest, which stages to run in which order, on which
model preset, and which evaluations close the run.

`load_pipeline` also loads every referenced file and checks them against each other, so a stage
that names an unknown source fails at load with the stage file and field in the message.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from data_specs.loader import SpecError, SpecModel, load_spec
from data_specs.registry import BENCHMARKS, PRESETS, Name
from data_specs.sources import SourceSpec, load_source_spec
from data_specs.stages import StageSpec, load_stage_spec
from model.lora import DEFAULT_LORA


class LoraSpec(SpecModel):
    """LoRA on the LM's attention (model/lora.py holds the defaults and builds nothing else)."""

    r: int = Field(DEFAULT_LORA.r, gt=0, description="Rank; memory and compute grow linearly with it.")
    alpha: float = Field(DEFAULT_LORA.alpha, gt=0, description="The update is scaled by alpha / r.")
    dropout: float = Field(DEFAULT_LORA.dropout, ge=0, lt=1)
    target_modules: list[str] = Field(list(DEFAULT_LORA.target_modules), min_length=1)


class ModelSpec(SpecModel):
    preset: Name(PRESETS, "model preset") = Field(  # type: ignore[valid-type]
        description="Model preset: tiny (CPU demo), tinygptv-phi2, tinygptv-phi1_5 (model/presets.py)."
    )
    pretrained: bool = Field(False, description="Load the preset's published weights (needs the hub).")
    lora: LoraSpec = LoraSpec()
    seed: int = Field(0, description="Seed of the random initialisation (pretrained: false).")


class EvaluationSpec(SpecModel):
    benchmark: Name(BENCHMARKS, "benchmark") = Field(  # type: ignore[valid-type]
        "shapes_world", description="Benchmark from the registry (data_specs/registry.py BENCHMARKS)."
    )
    source: str = Field(description="Ingested source holding the held-out images.")
    split: str = Field("heldout", description="Split of that source to evaluate on.")
    tasks: list[str] = Field(
        ["vqa", "refer", "caption"], min_length=1, description="The benchmark's tasks to score."
    )
    max_images: int = Field(200, gt=0, description="Held-out images to use (each gives several questions).")
    batch_size: int = Field(64, gt=0)
    seed: int = 0

    @field_validator("tasks")
    @classmethod
    def _benchmark_tasks(cls, value: list[str], info: ValidationInfo) -> list[str]:
        benchmark = info.data.get("benchmark")
        if benchmark is None:  # the benchmark itself is wrong: that error is the one reported
            return value
        known = BENCHMARKS[benchmark].tasks
        for task in value:
            if task not in known:
                raise ValueError(f"benchmark {benchmark} has no task {task!r}; its tasks: {', '.join(known)}")
        return value


class TrackingSpec(SpecModel):
    experiment: str = Field("vlmpipe", description="MLflow experiment of the parent run.")
    registered_model: str | None = Field(None, description="Register the final checkpoint under this name.")


class PipelineSpec(SpecModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    model: ModelSpec
    sources: list[Path] = Field(min_length=1, description="Source spec files; relative to this file.")
    stages: list[Path] = Field(min_length=1, description="Stage spec files, run in this order.")
    evaluation: EvaluationSpec | None = None
    tracking: TrackingSpec = TrackingSpec()

    @field_validator("sources", "stages")
    @classmethod
    def _relative(cls, value: list[Path], info: ValidationInfo) -> list[Path]:
        base = Path((info.context or {}).get("spec_path", ".")).parent
        return [p if p.is_absolute() else (base / p).resolve() for p in value]


@dataclass
class ResolvedPipeline:
    """A pipeline with every referenced spec loaded and cross-checked."""

    path: Path
    spec: PipelineSpec
    sources: dict[str, SourceSpec]
    source_paths: dict[str, Path]
    stages: list[StageSpec]
    stage_paths: list[Path]


def load_pipeline(path: str | Path) -> ResolvedPipeline:
    path = Path(path).resolve()
    spec = load_spec(PipelineSpec, path)
    sources: dict[str, SourceSpec] = {}
    source_paths: dict[str, Path] = {}
    for i, src_path in enumerate(spec.sources):
        if not src_path.is_file():
            raise SpecError(path, f"sources[{i}]", f"no such source spec {src_path}")
        src = load_source_spec(src_path)
        if src.name in sources:
            raise SpecError(path, f"sources[{i}]", f"source name {src.name!r} appears twice")
        sources[src.name], source_paths[src.name] = src, src_path
    stages: list[StageSpec] = []
    for i, stage_path in enumerate(spec.stages):
        if not stage_path.is_file():
            raise SpecError(path, f"stages[{i}]", f"no such stage spec {stage_path}")
        stage = load_stage_spec(stage_path)
        for j, ds in enumerate(stage.mixture.datasets):
            if ds.source is not None and ds.source not in sources:
                raise SpecError(
                    stage_path,
                    f"mixture.datasets[{j}].source",
                    f"unknown source {ds.source!r}; the pipeline {path.name} ingests "
                    f"{', '.join(sorted(sources))}",
                )
        if stage.name in {s.name for s in stages}:
            raise SpecError(path, f"stages[{i}]", f"stage name {stage.name!r} appears twice")
        stages.append(stage)
    if spec.evaluation is not None and spec.evaluation.source not in sources:
        raise SpecError(
            path,
            "evaluation.source",
            f"unknown source {spec.evaluation.source!r}; expected one of {', '.join(sorted(sources))}",
        )
    return ResolvedPipeline(path, spec, sources, source_paths, stages, list(spec.stages))


SpecKind = Literal["pipeline", "stage", "source"]


def detect_kind(data: dict) -> SpecKind:
    """Tell a spec file's kind from its top-level fields (each kind has one it alone requires)."""
    if "stages" in data and "model" in data:
        return "pipeline"
    if "mixture" in data or "schedule" in data or "template" in data:
        return "stage"
    return "source"
