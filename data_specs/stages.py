"""Typed stage specs: what one training stage reads (its weighted mixture), how it frames the data
(template, lengths), what trains, and on what schedule.

Loaded from `data_specs/stages/*.yaml`; `vlmpipe spec validate` checks a file against this.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationInfo, field_validator, model_validator

from data_specs.loader import Seed, SpecModel, load_spec
from data_specs.registry import (
    CONTRASTIVE_LOSSES,
    DATASET_FORMATS,
    GROUPS,
    TASK_TYPES,
    TEMPLATES,
    Name,
    unknown_name,
)

TaskName = Name(TASK_TYPES, "task type")
FormatName = Name(DATASET_FORMATS, "dataset format")
GroupName = Name(GROUPS, "trainable group")
TemplateName = Name(TEMPLATES, "template")
LossName = Name(CONTRASTIVE_LOSSES, "contrastive loss")


class MixtureDataset(SpecModel):
    """One dataset in a stage's mixture: where its examples come from and how much of it to use."""

    name: str = Field(description="Name shown in previews and metrics; unique within the stage.")
    task: TaskName = Field(description="Task type; decides the identifier ([vqa], [refer], ...).")
    weight: float = Field(
        gt=0,
        description="Share of examples (normalised over the stage), or of batches "
        "when mixture.semantics is 'batches'.",
    )
    source: str | None = Field(None, description="An ingested source named in the pipeline (shards).")
    format: FormatName | None = Field(
        None,
        # `adapter` was this field's first name; specs that use it still load
        validation_alias=AliasChoices("format", "adapter"),
        description="A dataset in its official annotation format (data_specs/registry.py "
        "DATASET_FORMATS; read by tasks/data/formats/).",
    )
    annotations: Path | None = Field(None, description="Annotation file for `format`; relative to this spec.")
    image_root: Path | None = Field(None, description="Folder of the format's images; relative to this spec.")
    split: str | None = Field(None, description="Split of the source to read (shapes world: train).")
    batch_size: int = Field(1, ge=1, description="Examples per draw; only used with semantics 'batches'.")
    instructions: list[str] | None = Field(
        None,
        description="Instruction pool, each with at most one `{}` for the query; default: the "
        "template registry's pool for the task.",
    )

    @field_validator("annotations", "image_root")
    @classmethod
    def _relative_to_spec(cls, value: Path | None, info: ValidationInfo) -> Path | None:
        spec_path = (info.context or {}).get("spec_path")
        if value is not None and spec_path is not None and not value.is_absolute():
            return (Path(spec_path).parent / value).resolve()
        return value

    @field_validator("instructions")
    @classmethod
    def _one_slot(cls, value: list[str] | None) -> list[str] | None:
        for text in value or []:
            if text.count("{}") > 1:
                raise ValueError(f"instruction {text!r} has more than one {{}} slot")
        if value is not None and not value:
            raise ValueError("instruction pool is empty; leave the field out for the default pool")
        return value

    @model_validator(mode="after")
    def _one_origin(self) -> MixtureDataset:
        if (self.source is None) == (self.format is None):
            raise ValueError("give exactly one of `source` (ingested shards) or `format` (official format)")
        if self.format is not None:
            if self.annotations is None:
                raise ValueError("`format` needs `annotations` (the annotation file)")
            gives = DATASET_FORMATS[self.format].task
            if gives != self.task:
                raise ValueError(f"format {self.format} gives {gives} examples, but task is {self.task}")
        return self


class Mixture(SpecModel):
    semantics: Literal["examples", "batches"] = Field(
        "examples",
        description="'examples': weight = share of examples (exact, stratified); 'batches': "
        "the original code's per-step dataset choice, one dataset per batch.",
    )
    datasets: list[MixtureDataset] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> Mixture:
        names = [d.name for d in self.datasets]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"dataset names must be unique, repeated: {', '.join(dupes)}")
        return self


class Schedule(SpecModel):
    """Optimiser and learning-rate schedule: linear warm-up from warmup_lr to lr, then cosine to min_lr.

    Length: `steps`, or the paper's `epochs` x `iters_per_epoch` (then steps is their product).
    `restart_each_epoch` runs the warm-up and the cosine again in every epoch (the paper's stage 1:
    the lr restarts low and rises within each of its epochs)."""

    steps: int | None = Field(None, gt=0, description="Optimiser steps; null = epochs x iters_per_epoch.")
    epochs: int | None = Field(None, gt=0, description="Epochs of iters_per_epoch steps (the paper's unit).")
    iters_per_epoch: int | None = Field(None, gt=0, description="Optimiser steps per epoch.")
    restart_each_epoch: bool = Field(
        False, description="Warm-up and cosine start again each epoch (warmup_steps counts within an epoch)."
    )
    batch_size: int = Field(
        gt=0,
        description="Sequences per optimiser step over all processes (packed rows when packing is on).",
    )
    accumulation_steps: int = Field(
        1,
        ge=1,
        description=(
            "Micro-batches per process per step: each holds batch_size / (accumulation_steps x "
            "processes) rows; the update equals one batch of batch_size (losses summed over label tokens)."
        ),
    )
    optimizer: Literal["adamw", "adamw_8bit"] = Field(
        "adamw",
        description="adamw (torch) or adamw_8bit (bitsandbytes: 8-bit optimizer states for weights of 4096+ elements).",
    )
    lr: float = Field(gt=0)
    min_lr: float = Field(ge=0)
    warmup_lr: float = Field(1e-6, ge=0)
    warmup_steps: int = Field(0, ge=0)
    weight_decay: float = Field(0.05, ge=0)
    grad_clip: float | None = Field(1.0, gt=0, description="Max global grad norm; null = no clipping.")
    betas: tuple[float, float] = (0.9, 0.999)
    lr_scale: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Per-group learning-rate multipliers, e.g. {vision: 0.1}: the group follows the same "
            "schedule at lr x scale. Groups not named use 1.0; every named group must be trainable."
        ),
    )

    @field_validator("min_lr")
    @classmethod
    def _min_below_peak(cls, value: float, info: ValidationInfo) -> float:
        lr = info.data.get("lr")
        if lr is not None and value > lr:
            raise ValueError(f"{value:g} is above lr {lr:g} (the cosine decays from lr down to min_lr)")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        for beta in value:
            if not 0 <= beta < 1:
                raise ValueError(f"each beta must be in [0, 1), got {beta:g}")
        return value

    @field_validator("lr_scale")
    @classmethod
    def _scales(cls, value: dict[str, float]) -> dict[str, float]:
        for group, scale in value.items():
            if group not in GROUPS:
                raise ValueError(unknown_name("trainable group", group, GROUPS))
            if not scale > 0:
                raise ValueError(
                    f"{group}: scale must be > 0 (freeze a group by leaving it out of trainable)"
                )
        return value

    @model_validator(mode="after")
    def _length(self) -> Schedule:
        if self.epochs is not None or self.iters_per_epoch is not None:
            if self.epochs is None or self.iters_per_epoch is None:
                raise ValueError("epochs and iters_per_epoch go together")
            total = self.epochs * self.iters_per_epoch
            if self.steps is not None and self.steps != total:
                raise ValueError(
                    f"steps {self.steps} != epochs x iters_per_epoch = {total} (give one or the other)"
                )
            self.steps = total
        elif self.steps is None:
            raise ValueError("give steps, or epochs and iters_per_epoch")
        elif self.restart_each_epoch:
            raise ValueError("restart_each_epoch needs epochs and iters_per_epoch")
        period = self.iters_per_epoch if self.restart_each_epoch else self.steps
        if self.warmup_steps > period:
            where = "an epoch (iters_per_epoch)" if self.restart_each_epoch else "steps"
            raise ValueError(f"warmup_steps {self.warmup_steps} exceeds {where}")
        return self

    def lr_at(self, step: int) -> float:
        """The learning rate of 0-based optimiser step `step`."""
        period = self.iters_per_epoch if self.restart_each_epoch else self.steps
        step = step % period if self.restart_each_epoch else step
        if step < self.warmup_steps:
            return self.warmup_lr + (self.lr - self.warmup_lr) * step / max(1, self.warmup_steps)
        progress = (step - self.warmup_steps) / max(1, period - self.warmup_steps)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


class Guards(SpecModel):
    """What stops a stage that has gone wrong. A non-finite loss or gradient always stops it."""

    grad_norm_floor: float | None = Field(
        None,
        gt=0,
        description=(
            "Stop when the global gradient norm (before clipping) stays below this for "
            "floor_steps steps in a row: gradients have vanished. null = no floor."
        ),
    )
    floor_steps: int = Field(50, ge=1, description="Steps in a row under grad_norm_floor before stopping.")


class Contrastive(SpecModel):
    """An auxiliary contrastive loss added to the autoregressive one (EIM)."""

    loss: LossName = Field(
        "semantic_transform",
        description="; ".join(f"{name}: {text}" for name, text in CONTRASTIVE_LOSSES.items()) + ".",
    )
    weight: float = Field(1.0, gt=0, description="Added to the LM loss as weight x contrastive loss.")
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature (EIM: 0.07).")
    queue: int = Field(
        0,
        ge=0,
        le=65536,
        description="Keys built once per stage from its first training samples (kept beside its "
        "checkpoints, contrastive_keys.safetensors) and used as extra negatives; 0 = within the step only.",
    )


class ProjectionWarmup(SpecModel):
    """VPGTrans's projector warm-up: the projection alone, at a large learning rate, on the stage's
    own data, before the stage proper (a stage of its own, `<name>_projection_warmup`)."""

    steps: int = Field(gt=0, description="Steps of the warm-up stage.")
    lr: float = Field(gt=0, description="Its learning rate, constant after warmup_steps (VPGTrans: ~10x).")
    warmup_steps: int = Field(0, ge=0, description="Linear ramp from the stage's warmup_lr to lr.")


class Loader(SpecModel):
    """How the stage's images reach the model: worker processes, lookahead, and a bounded cache.
    None of it changes which batches a stage sees (resumes may change it)."""

    workers: int = Field(
        1,
        ge=0,
        le=64,
        description=(
            "DataLoader worker processes that decode and preprocess images (or read cached features) "
            "while the model computes; 0 = in the training process. About 4 per GPU at 448 px."
        ),
    )
    prefetch: int = Field(2, ge=1, le=64, description="Batches each worker prepares ahead of the step.")
    image_cache_mb: int = Field(
        256,
        ge=0,
        description=(
            "Preprocessed images kept in memory per worker (least recently used out first); 0 = none. "
            "A 224 px image is 0.6 MB in float32, a 448 px one 2.4 MB."
        ),
    )


class StageSpec(SpecModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Stage name, e.g. stage4_multitask.")
    description: str = ""
    template: TemplateName = Field(
        description="Prompt template from the registry: image_text (stages 1-2) or human_assistant."
    )
    end_sym: str = Field("###", description="Appended to every answer; generation stops at it.")
    max_len: int = Field(gt=8, description="Tokens per sequence, the image's query tokens included.")
    image_size: int | None = Field(None, gt=0, description="Input resolution; null = the preset's.")
    packing: bool = Field(True, description="Pack several samples per sequence (exact masking).")
    mixture: Mixture
    trainable: list[GroupName] = Field(min_length=1, description=f"Groups to train: {', '.join(GROUPS)}.")
    schedule: Schedule
    projection_warmup: ProjectionWarmup | None = Field(
        None,
        description="Train the projection alone first, at a large learning rate, on this stage's data "
        "(VPGTrans's projector warm-up): the pipeline runs `<name>_projection_warmup` before the stage.",
    )
    contrastive: Contrastive | None = Field(
        None, description="Optional auxiliary contrastive loss; null = autoregressive loss only."
    )
    autoregressive: bool = Field(
        True,
        description=(
            "Train on the next-token loss. false = the contrastive loss alone (EIM's segmented "
            "training: one loss per stage); the LM's forward pass is then skipped."
        ),
    )
    precision: Literal["fp32", "bf16"] = Field(
        "fp32", description="bf16 autocast on the device in use (halves activation memory)."
    )
    device: str | None = Field(
        None,
        pattern=r"^(auto|cpu|cuda(:[0-9]+)?)$",
        description="cpu, cuda, cuda:N or auto; null = $VLMPIPE_DEVICE, else auto (cuda when present).",
    )
    processes: int = Field(
        1,
        ge=1,
        le=1024,
        description="Data-parallel processes (torchrun; DDP over gloo on CPU, NCCL on GPU).",
    )
    fsdp: bool = Field(
        False,
        description=(
            "Shard the language model's layers over the processes (FSDP2): each process holds 1/N of "
            "its weights, gradients and optimizer states; the rest of the model is replicated. Needs processes > 1."
        ),
    )
    compile: bool = Field(False, description="torch.compile the language model (slower start, faster steps).")
    attention: Literal["auto", "dense", "block_sparse"] = Field(
        "auto",
        description=(
            "Attention over packed rows. dense: an explicit [L, L] block-diagonal mask (any device, "
            "any kernel). block_sparse: FlexAttention with a block mask built from the samples' "
            "boundaries, skipping the blocks between samples; trains on CUDA only (no CPU backward). "
            "auto: block_sparse on CUDA when this torch has FlexAttention, dense elsewhere. Both "
            "compute the same logits."
        ),
    )
    frozen_features: Literal["auto", "off", "require"] = Field(
        "auto",
        description=(
            "Read cached vision-tower + Q-Former outputs instead of pixels when both towers are frozen "
            "in this stage. auto: use a source's feature cache made for the preset, this image size "
            "and exactly these tower weights; any other cache is refused with a line saying why, and "
            "pixels are used. require: stop when a source has no matching cache. off: always pixels."
        ),
    )
    loader: Loader = Field(default_factory=Loader)
    guards: Guards = Field(default_factory=Guards)
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations: less memory, ~30% slower."
    )
    seed: Seed = 42
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="Steps between resumable checkpoints; 0 = end only.")

    @model_validator(mode="after")
    def _schedule_fits(self) -> StageSpec:
        if self.fsdp and self.processes < 2:
            raise ValueError("fsdp: true shards the language model over processes; set processes >= 2")
        per_step = self.schedule.accumulation_steps * self.processes
        if self.schedule.batch_size % per_step:
            raise ValueError(
                f"schedule.batch_size {self.schedule.batch_size} is not a multiple of accumulation_steps "
                f"x processes = {per_step}"
            )
        if not self.autoregressive and self.contrastive is None:
            raise ValueError(
                "autoregressive: false needs a contrastive loss, or the stage has nothing to train on"
            )
        if self.contrastive is not None:
            # each EIM loss trains its own part (segmented training): a stage must let it
            reaches = {
                "semantic_transform": {"projection", "qformer", "vision"},
                "language_model": {
                    "lora",
                    "mm_adapter",
                    "language_model",
                    "qk_norm",
                    "post_attention_norm",
                    "input_layernorm",
                    "final_layernorm",
                },
                "image_encoder": {"vision"},
            }[self.contrastive.loss]
            if not reaches & set(self.trainable):
                raise ValueError(
                    f"contrastive.loss {self.contrastive.loss} trains only {', '.join(sorted(reaches))}; "
                    "none of them is in trainable"
                )
        idle = [g for g in self.schedule.lr_scale if g not in self.trainable]
        if idle:
            raise ValueError(f"schedule.lr_scale: group {idle[0]!r} is not in trainable, so it has no lr")
        return self


def projection_warmup_stage(stage: StageSpec) -> StageSpec:
    """The stage that `stage.projection_warmup` asks for: the same data and template, the projection
    alone, `steps` steps at a constant `lr` after `warmup_steps`, next-token loss only."""
    warm = stage.projection_warmup
    if warm is None:
        raise ValueError(f"stage {stage.name} has no projection_warmup")
    data = stage.model_dump(mode="json", exclude_none=True)
    data.update(
        name=f"{stage.name}_projection_warmup",
        description=f"projection warm-up before {stage.name} (VPGTrans): the projection alone at lr {warm.lr:g}",
        trainable=["projection"],
        autoregressive=True,
        checkpoint_every=0,
    )
    data.pop("contrastive", None)
    data.pop("projection_warmup", None)
    schedule = data["schedule"]
    for key in ("epochs", "iters_per_epoch", "restart_each_epoch", "lr_scale"):
        schedule.pop(key, None)
    schedule.update(
        steps=warm.steps,
        lr=warm.lr,
        min_lr=warm.lr,
        warmup_steps=warm.warmup_steps,
        warmup_lr=min(schedule.get("warmup_lr", 1e-6), warm.lr),
    )
    return StageSpec.model_validate(data)


def check_stage_files(stage: StageSpec, path: str | Path) -> None:
    """The files a stage reads must be there: each format's annotations and image folder."""
    from data_specs.loader import SpecError

    for j, ds in enumerate(stage.mixture.datasets):
        if ds.annotations is not None and not ds.annotations.exists():
            raise SpecError(
                path, f"mixture.datasets[{j}].annotations", f"no such file or folder {ds.annotations}"
            )
        if ds.image_root is not None and not ds.image_root.is_dir():
            raise SpecError(path, f"mixture.datasets[{j}].image_root", f"no such folder {ds.image_root}")


def load_stage_spec(path: str | Path) -> StageSpec:
    return load_spec(StageSpec, path)
