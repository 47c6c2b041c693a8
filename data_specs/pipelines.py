"""Typed pipeline specs: which sources to ingest, which stages to run in which order, on which
model preset, and which evaluations close the run.

`load_pipeline` also loads every referenced file and checks them against each other, so a stage
that names an unknown source fails at load with the stage file and field in the message.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator

from data_specs.loader import Seed, SpecError, SpecModel, load_spec
from data_specs.registry import BENCHMARKS, OFFICIAL_BENCHMARKS, PRESETS, TASK_TYPES, Name, check_name
from data_specs.sources import SourceSpec, check_source_files, load_source_spec, splits_of
from data_specs.stages import StageSpec, check_stage_files, load_stage_spec, projection_warmup_stage
from model.lora import DEFAULT_LORA, DEFAULT_MM_ADAPTER
from model.presets import ABLATIONS


class LoraSpec(SpecModel):
    """LoRA on the LM's attention (model/lora.py holds the defaults and builds nothing else)."""

    r: int = Field(DEFAULT_LORA.r, gt=0, description="Rank; memory and compute grow linearly with it.")
    alpha: float = Field(DEFAULT_LORA.alpha, gt=0, description="The update is scaled by alpha / r.")
    dropout: float = Field(DEFAULT_LORA.dropout, ge=0, lt=1)
    target_modules: list[str] = Field(list(DEFAULT_LORA.target_modules), min_length=1)


class MMAdapterSpec(SpecModel):
    """LaVIN's Mixture-of-Modality Adapter (model/mm_adapter.py), used when `adapter: mm_adapter`."""

    dim: int = Field(DEFAULT_MM_ADAPTER.dim, gt=0, description="Bottleneck width of the adapters.")
    temperature: float = Field(
        DEFAULT_MM_ADAPTER.temperature, gt=0, description="Router softmax temperature (LaVIN: 10 for 7B)."
    )
    scale: float = Field(DEFAULT_MM_ADAPTER.scale, gt=0, description="Weight of the adapters' output.")
    dropout: float = Field(DEFAULT_MM_ADAPTER.dropout, ge=0, lt=1)
    vision: bool = Field(
        DEFAULT_MM_ADAPTER.vision,
        description="Also put MM-Adapters in the vision tower's blocks (group mm_adapter); each routes "
        "an image by its own class token.",
    )


class ModelSpec(SpecModel):
    preset: Name(PRESETS, "model preset") = Field(  # type: ignore[valid-type]
        description="Model preset: tiny (CPU demo), tinygptv-phi2, tinygptv-phi1_5 (model/presets.py)."
    )
    pretrained: bool = Field(False, description="Load the preset's published weights (needs the hub).")
    adapter: Literal["lora", "mm_adapter"] = Field(
        "lora",
        description="The LM's trainable adapters: lora (TinyGPT-V) or mm_adapter (LaVIN's MM-Adapter, "
        "routed by modality; stages then train group `mm_adapter` instead of `lora`).",
    )
    lora: LoraSpec = LoraSpec()
    mm_adapter: MMAdapterSpec = MMAdapterSpec()
    seed: Seed = Field(0, description="Seed of the random initialisation (pretrained: false).")
    ablate: list[Name(ABLATIONS, "ablation")] = Field(  # type: ignore[valid-type]
        default_factory=list,
        description=(
            "The paper's ablations, each removing exactly one module of TinyGPT-V's LM: lora (no "
            "adapters), input_layernorm (Identity instead of each layer's input LayerNorm), "
            "post_attention_norm (no RMSNorm after attention), qk_norm (Phi without QK LayerNorm). "
            "Stages that name a removed group in `trainable` train the rest."
        ),
    )

    @field_validator("ablate")
    @classmethod
    def _ablate_once(cls, value: list[str]) -> list[str]:
        twice = sorted({a for a in value if value.count(a) > 1})
        if twice:
            raise ValueError(f"ablation(s) named twice: {', '.join(twice)}")
        return value

    projection_init: Path | None = Field(
        None,
        description=(
            "MiniGPT-4 checkpoint (.pth, or .safetensors) whose llama_proj (768 -> 4096) starts the "
            "first projection, as TinyGPT-V's stage 1 does; relative to the pipeline spec. Read once, "
            "when the first stage builds the model; the projection is then in every checkpoint."
        ),
    )


class AskSpec(SpecModel):
    """How one official benchmark is asked (tasks/evaluate/official holds each one's default)."""

    prompt: str | None = Field(
        None,
        description="Prompt template: {question}, {choices} (lettered options) and the item's text fields "
        "(e.g. ScienceQA's {context}); None: the benchmark's default.",
    )
    task: Name(TASK_TYPES, "task type") | None = Field(  # type: ignore[valid-type]
        None, description="Task whose identifier the prompt carries ([vqa], [refer], ...); None: the default."
    )
    split: str | None = Field(
        None, description="Split of the release; None: the benchmark's evaluation split."
    )
    max_items: int | None = Field(None, gt=0, description="Evaluate the first N items only.")
    max_new_tokens: int | None = Field(None, gt=0)


class OfficialEvaluationSpec(SpecModel):
    data_root: Path = Field(
        description="Folder holding each release in a sub-folder named after the benchmark (refcoco, "
        "refcocop and refcocog share refcoco/); relative to the pipeline spec."
    )
    benchmarks: dict[str, AskSpec] = Field(
        min_length=1, description="Benchmark name -> how to ask it ({} for the defaults)."
    )
    batch_size: int = Field(16, gt=0)

    @field_validator("benchmarks")
    @classmethod
    def _known(cls, value: dict[str, AskSpec]) -> dict[str, AskSpec]:
        for name in value:
            check_name(name, OFFICIAL_BENCHMARKS, "official benchmark")
        return value


class EvaluationSpec(SpecModel):
    benchmark: Name(BENCHMARKS, "benchmark") = Field(  # type: ignore[valid-type]
        "shapes_world", description="Benchmark from the registry (data_specs/registry.py BENCHMARKS)."
    )
    source: str = Field(description="Ingested source holding the held-out images.")
    split: str = Field("heldout", description="Split of that source to evaluate on (its scores are gated).")
    extra_splits: list[str] = Field(
        [],
        description="More splits scored the same way and reported beside, not gated (metrics named "
        "`<split>.<metric>`), e.g. the shapes world's heldout_novel.",
    )
    tasks: list[str] = Field(
        ["vqa", "refer", "caption"], min_length=1, description="The benchmark's tasks to score."
    )
    max_images: int = Field(200, gt=0, description="Held-out images to use (each gives several questions).")
    batch_size: int = Field(64, gt=0)
    seed: Seed = 0
    official: OfficialEvaluationSpec | None = Field(
        None,
        description="Official benchmarks (GQA, VSR, ...) run after the benchmark above, each a mapped "
        "Prefect task, beside the paper's Table 2.",
    )

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
    experiment: str = Field(
        "vlmpipe", description="MLflow experiment of the parent run (1-500 characters, not blank)."
    )
    registered_model: str | None = Field(
        None,
        description="Register the final checkpoint under this name: letters, digits, '.', '_', '-' "
        "(MLflow refuses '/' and ':'), at most 200 characters.",
    )
    champion_metric: str | None = Field(
        None,
        description=(
            "Evaluation metric that decides the registry alias `champion`: every new version gets "
            "`candidate`; `champion` moves to it only when it beats the current champion on this metric "
            "(the first version becomes champion). None: `champion` is set on the first version only."
        ),
    )
    champion_mode: Literal["max", "min"] = Field("max", description="Whether higher or lower is better.")

    @field_validator("experiment")
    @classmethod
    def _experiment_name(cls, value: str) -> str:
        if not value.strip() or len(value) > 500 or any(ord(c) < 32 for c in value):
            raise ValueError(
                f"{value!r}: an MLflow experiment name is 1-500 characters, not blank, no control characters"
            )
        return value

    @field_validator("registered_model")
    @classmethod
    def _model_name(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,199}", value):
            raise ValueError(
                f"{value!r}: a registered-model name takes letters, digits, '.', '_' and '-' (MLflow refuses "
                "'/' and ':'), starts with a letter or digit, at most 200 characters"
            )
        return value


POOL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"


class PlacementSpec(SpecModel):
    """Where the stages and the evaluation run (flows/placement.py)."""

    mode: Literal["auto", "local", "deployments"] = Field(
        "auto",
        description=(
            "auto: each stage and the evaluation as a flow run of its deployment on a work pool when a "
            "Prefect server is configured (PREFECT_API_URL, or `vlmpipe servers up`) and holds those "
            "deployments, else in the pipeline's own process; local: always in-process; deployments: "
            "always on pools (an error without a server or the deployments)."
        ),
    )
    stages: str = Field(
        "gpu",
        pattern=POOL_NAME,
        description="Work pool of the training stages: each runs as deployment train-stage/<pool>.",
    )
    evaluation: str = Field(
        "gpu", pattern=POOL_NAME, description="Work pool of the evaluation (deployment evaluate/<pool>)."
    )
    stage_pools: dict[str, str] = Field(
        {}, description="Per-stage pool, by stage name (e.g. {stage1_warmup: cpu}); the others use `stages`."
    )
    retries: int = Field(
        2,
        ge=0,
        le=10,
        description=(
            "Times a placed stage or evaluation is run again when its process crashed or an I/O error "
            "stopped it (a retried stage resumes from its last saved step); a bad spec, bad data or a "
            "training guard is not retried."
        ),
    )
    retry_delay_s: float = Field(30.0, ge=0, description="Wait before the first retry; doubled each time.")

    @field_validator("stage_pools")
    @classmethod
    def _pool_names(cls, value: dict[str, str]) -> dict[str, str]:
        for stage, pool in value.items():
            if not re.fullmatch(POOL_NAME, pool):
                raise ValueError(
                    f"{stage}: {pool!r} is not a work-pool name (letters, digits, '.', '_', '-')"
                )
        return value


class PipelineSpec(SpecModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]*$")
    description: str = ""
    model: ModelSpec
    sources: list[Path] = Field(min_length=1, description="Source spec files; relative to this file.")
    stages: list[Path] = Field(min_length=1, description="Stage spec files, run in this order.")
    evaluation: EvaluationSpec | None = None
    tracking: TrackingSpec = TrackingSpec()
    placement: PlacementSpec = PlacementSpec()

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
    stages: list[StageSpec]  # in run order; a stage's projection warm-up comes just before it
    stage_paths: list[Path]  # the spec file of each (a warm-up's is its stage's)


def _check_split(source: SourceSpec, split: str, path: Path, field: str) -> None:
    known = splits_of(source)
    if known is not None and split not in known:
        raise SpecError(
            path, field, f"source {source.name} has no split {split!r}; its splits: {', '.join(known)}"
        )


def _check_stage_fits_model(stage: StageSpec, path: Path, model: ModelSpec) -> None:
    """What a stage asks of the pipeline's model: image size on the patch grid, room for text
    after the image tokens, no more tokens than the LM has positions, the adapter the model has."""
    preset = PRESETS[model.preset]
    patch = int(preset.vision_kwargs["patch_size"])
    if stage.image_size is not None and stage.image_size % patch:
        raise SpecError(
            path,
            "image_size",
            f"{stage.image_size} is not a multiple of preset {preset.name}'s patch size {patch}",
        )
    if stage.image_size is not None and preset.visual_tokens == "merge":  # merged tokens follow the size
        try:
            preset = preset.with_image_size(stage.image_size)
        except ValueError as exc:
            raise SpecError(path, "image_size", str(exc)) from None
    queries = preset.num_query_tokens
    if stage.max_len <= queries + 8:
        raise SpecError(
            path,
            "max_len",
            f"{stage.max_len} leaves no room for text after the {queries} image tokens of preset {preset.name}",
        )
    other = {"lora": "mm_adapter", "mm_adapter": "lora"}[model.adapter]
    if other in stage.trainable and not (other == "lora" and "lora" in model.ablate):
        raise SpecError(
            path,
            "trainable",
            f"trains {other!r} but the pipeline's model.adapter is {model.adapter!r} (train {model.adapter!r})",
        )
    positions = int(preset.lm_kwargs.get("max_position_embeddings", stage.max_len))
    if stage.max_len > positions:
        raise SpecError(
            path,
            "max_len",
            f"{stage.max_len} is more than preset {preset.name}'s LM has positions ({positions})",
        )


def missing_data_files(rp: ResolvedPipeline) -> list[str]:
    """Every data or weight file a pipeline names that is not on this machine, one
    `FILE: field: what is missing` line each (what `spec validate --skip-files` reports)."""
    missing: list[str] = []
    init = rp.spec.model.projection_init
    if init is not None and not init.is_file():
        missing.append(f"{rp.path}: model.projection_init: no such file {init}")
    official = rp.spec.evaluation.official if rp.spec.evaluation is not None else None
    if official is not None and not official.data_root.is_dir():
        missing.append(f"{rp.path}: evaluation.official.data_root: no such folder {official.data_root}")
    for name, source in rp.sources.items():
        if source.url_list is not None and not source.url_list.exists():
            missing.append(f"{rp.source_paths[name]}: url_list: no such file or folder {source.url_list}")
    for stage, stage_path in zip(rp.stages, rp.stage_paths, strict=True):
        for j, ds in enumerate(stage.mixture.datasets):
            if ds.annotations is not None and not ds.annotations.exists():
                missing.append(
                    f"{stage_path}: mixture.datasets[{j}].annotations: no such file or folder {ds.annotations}"
                )
            if ds.image_root is not None and not ds.image_root.is_dir():
                missing.append(
                    f"{stage_path}: mixture.datasets[{j}].image_root: no such folder {ds.image_root}"
                )
    return missing


def load_pipeline(path: str | Path, *, check_files: bool = True) -> ResolvedPipeline:
    """Load and cross-check a pipeline and every spec it names. `check_files=False` checks
    everything but the presence of the data and weight files (URL lists, annotations, image
    folders, projection_init): a spec for another machine validates on this one."""
    path = Path(path).resolve()
    spec = load_spec(PipelineSpec, path)
    official = spec.evaluation.official if spec.evaluation is not None else None
    if official is not None and not official.data_root.is_absolute():
        official.data_root = (path.parent / official.data_root).resolve()
    init = spec.model.projection_init
    if init is not None and not init.is_absolute():
        spec.model.projection_init = init = (path.parent / init).resolve()
    if check_files and init is not None and not init.is_file():
        raise SpecError(path, "model.projection_init", f"no such file {init}")
    if check_files and official is not None and not official.data_root.is_dir():
        raise SpecError(path, "evaluation.official.data_root", f"no such folder {official.data_root}")
    sources: dict[str, SourceSpec] = {}
    source_paths: dict[str, Path] = {}
    for i, src_path in enumerate(spec.sources):
        if not src_path.is_file():
            raise SpecError(path, f"sources[{i}]", f"no such source spec {src_path}")
        src = load_source_spec(src_path)
        if check_files:
            check_source_files(src, src_path)
        if src.name in sources:
            raise SpecError(path, f"sources[{i}]", f"source name {src.name!r} appears twice")
        sources[src.name], source_paths[src.name] = src, src_path
    stages: list[StageSpec] = []
    stage_paths: list[Path] = []
    for i, stage_path in enumerate(spec.stages):
        if not stage_path.is_file():
            raise SpecError(path, f"stages[{i}]", f"no such stage spec {stage_path}")
        stage = load_stage_spec(stage_path)
        if check_files:
            check_stage_files(stage, stage_path)
        _check_stage_fits_model(stage, stage_path, spec.model)
        for j, ds in enumerate(stage.mixture.datasets):
            if ds.source is not None and ds.source not in sources:
                raise SpecError(
                    stage_path,
                    f"mixture.datasets[{j}].source",
                    f"unknown source {ds.source!r}; the pipeline {path.name} ingests "
                    f"{', '.join(sorted(sources))}",
                )
            if ds.source is not None:
                _check_split(
                    sources[ds.source], ds.split or "train", stage_path, f"mixture.datasets[{j}].split"
                )
        # a projection warm-up (VPGTrans) is a stage of its own, just before the one that asks for it
        expanded = [stage] if stage.projection_warmup is None else [projection_warmup_stage(stage), stage]
        for one in expanded:
            if one.name in {s.name for s in stages}:
                raise SpecError(path, f"stages[{i}]", f"stage name {one.name!r} appears twice")
            stages.append(one)
            stage_paths.append(stage_path)
    if spec.evaluation is not None and spec.evaluation.source not in sources:
        raise SpecError(
            path,
            "evaluation.source",
            f"unknown source {spec.evaluation.source!r}; expected one of {', '.join(sorted(sources))}",
        )
    if spec.evaluation is not None:
        _check_split(sources[spec.evaluation.source], spec.evaluation.split, path, "evaluation.split")
        for j, extra in enumerate(spec.evaluation.extra_splits):
            _check_split(sources[spec.evaluation.source], extra, path, f"evaluation.extra_splits[{j}]")
    names = [s.name for s in stages]
    for stage_name in spec.placement.stage_pools:
        if stage_name not in names:
            raise SpecError(
                path,
                f"placement.stage_pools.{stage_name}",
                f"no stage {stage_name!r} in this pipeline; its stages: {', '.join(names)}",
            )
    if spec.tracking.champion_metric is not None and spec.tracking.registered_model is None:
        raise SpecError(
            path, "tracking.champion_metric", "needs tracking.registered_model (no version to promote)"
        )
    return ResolvedPipeline(path, spec, sources, source_paths, stages, stage_paths)


SpecKind = Literal["pipeline", "stage", "source"]


def detect_kind(data: dict) -> SpecKind:
    """Tell a spec file's kind from its top-level fields (each kind has one it alone requires)."""
    if "stages" in data and "model" in data:
        return "pipeline"
    if "mixture" in data or "schedule" in data or "template" in data:
        return "stage"
    return "source"
