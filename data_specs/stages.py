"""Typed stage specs: what one training stage reads (its weighted mixture), how it frames the data
(template, lengths), what trains, and on what schedule.

Loaded from `data_specs/stages/*.yaml`; `vlmpipe spec validate` checks a file against this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator, model_validator

from data_specs.loader import SpecModel, load_spec
from tasks.examples import TASKS

TRAINABLE_GROUPS = (
    "vision",
    "qformer",
    "projection",
    "lora",
    "qk_norm",
    "post_attention_norm",
    "input_layernorm",
    "final_layernorm",
    "language_model",
)
TEMPLATES = ("image_text", "human_assistant")


class MixtureDataset(SpecModel):
    """One dataset in a stage's mixture: where its examples come from and how much of it to use."""

    name: str = Field(description="Name shown in previews and metrics; unique within the stage.")
    task: Literal[TASKS] = Field(description="Task type; decides the identifier ([vqa], [refer], ...).")  # type: ignore[valid-type]
    weight: float = Field(
        gt=0,
        description="Share of examples (normalised over the stage), or of batches "
        "when mixture.semantics is 'batches'.",
    )
    source: str | None = Field(None, description="An ingested source named in the pipeline (shards).")
    adapter: str | None = Field(
        None, description="A dataset adapter in its official format (tasks/adapters)."
    )
    annotations: Path | None = Field(
        None, description="Annotation file for `adapter`; relative to this spec."
    )
    image_root: Path | None = Field(
        None, description="Folder of the adapter's images; relative to this spec."
    )
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
        if (self.source is None) == (self.adapter is None):
            raise ValueError("give exactly one of `source` (ingested shards) or `adapter` (official format)")
        if self.adapter is not None and self.annotations is None:
            raise ValueError("`adapter` needs `annotations` (the annotation file)")
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
    """Optimiser and learning-rate schedule: linear warm-up from warmup_lr to lr, then cosine to min_lr."""

    steps: int = Field(gt=0, description="Optimiser steps in this stage.")
    batch_size: int = Field(gt=0, description="Sequences per step (packed rows when packing is on).")
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

    @field_validator("lr_scale")
    @classmethod
    def _scales(cls, value: dict[str, float]) -> dict[str, float]:
        for group, scale in value.items():
            if group not in TRAINABLE_GROUPS:
                raise ValueError(f"unknown group {group!r}; expected one of {', '.join(TRAINABLE_GROUPS)}")
            if not scale > 0:
                raise ValueError(
                    f"{group}: scale must be > 0 (freeze a group by leaving it out of trainable)"
                )
        return value


class Contrastive(SpecModel):
    """An auxiliary contrastive loss added to the autoregressive one (EIM)."""

    loss: Literal["semantic_transform"] = Field(
        "semantic_transform",
        description=(
            "semantic_transform (EIM's lossST): each sample's mean image embedding against the mean "
            "LM input embedding of its own text, InfoNCE over the batch's samples."
        ),
    )
    weight: float = Field(1.0, gt=0, description="Added to the LM loss as weight x contrastive loss.")
    temperature: float = Field(0.07, gt=0, description="InfoNCE temperature (EIM: 0.07).")


class StageSpec(SpecModel):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$", description="Stage name, e.g. stage4_multitask.")
    description: str = ""
    template: Literal[TEMPLATES] = Field(  # type: ignore[valid-type]
        description="Prompt template from the registry: image_text (stages 1-2) or human_assistant."
    )
    end_sym: str = Field("###", description="Appended to every answer; generation stops at it.")
    max_len: int = Field(gt=8, description="Tokens per sequence, the image's query tokens included.")
    image_size: int | None = Field(None, gt=0, description="Input resolution; null = the preset's.")
    packing: bool = Field(True, description="Pack several samples per sequence (exact masking).")
    mixture: Mixture
    trainable: list[str] = Field(min_length=1, description=f"Groups to train: {', '.join(TRAINABLE_GROUPS)}.")
    schedule: Schedule
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
    precision: Literal["fp32", "bf16"] = Field("fp32", description="bf16 autocast halves activation memory.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations: less memory, ~30% slower."
    )
    seed: int = 42
    log_every: int = Field(10, gt=0)
    checkpoint_every: int = Field(0, ge=0, description="Steps between resumable checkpoints; 0 = end only.")

    @field_validator("trainable")
    @classmethod
    def _known_groups(cls, value: list[str]) -> list[str]:
        unknown = [g for g in value if g not in TRAINABLE_GROUPS]
        if unknown:
            raise ValueError(f"unknown group {unknown[0]!r}; expected one of {', '.join(TRAINABLE_GROUPS)}")
        return value

    @model_validator(mode="after")
    def _schedule_fits(self) -> StageSpec:
        if self.schedule.warmup_steps > self.schedule.steps:
            raise ValueError("schedule.warmup_steps exceeds schedule.steps")
        if not self.autoregressive and self.contrastive is None:
            raise ValueError(
                "autoregressive: false needs a contrastive loss, or the stage has nothing to train on"
            )
        idle = [g for g in self.schedule.lr_scale if g not in self.trainable]
        if idle:
            raise ValueError(f"schedule.lr_scale: group {idle[0]!r} is not in trainable, so it has no lr")
        return self


def load_stage_spec(path: str | Path) -> StageSpec:
    return load_spec(StageSpec, path)
