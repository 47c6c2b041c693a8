"""The smoke override of a pipeline: the same stages, groups, templates, resolutions and packing at
toy size, on data made here, so a recipe that needs terabytes can be tried in minutes.

    vlmpipe run data_specs/pipelines/tinygptv_phi2.yaml --smoke                # random real-size weights, one GPU
    vlmpipe run data_specs/pipelines/tinygptv_phi2.yaml --smoke --smoke-preset tiny   # any CPU

What changes, and nothing else:
  model       pretrained: false (random weights of the preset's real sizes), no projection_init file;
              --smoke-preset swaps the preset (max_len is then cut to the preset's positions)
  sources     the embedded shapes world (a few hundred scenes, served on loopback and ingested)
  mixtures    every dataset reads the shapes world's examples of its own task, at its own weight;
              a task the shapes world cannot make (text-only instructions) is left out, and the
              written stage spec says so in its description
  schedules   `steps` optimiser steps (2 by default) of 2 packed rows, one process, warm-up of one step
  evaluation  the shapes world's held-out split, a few images
The specs are written as YAML files (under the run's home) and run like any other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from data_specs.pipelines import ResolvedPipeline
from data_specs.registry import PRESETS

SHAPES_SOURCE = Path(__file__).resolve().parent / "sources" / "shapes_world.yaml"
SHAPES_TASKS = (
    "image_text",
    "caption",
    "vqa",
    "vqa_turns",
    "refer",
    "identify",
    "grounding",
    "detection",
    "detailed_description",
    "conversation",
)


def _stage(stage, steps: int, positions: int) -> tuple[dict[str, Any], list[str]]:
    data = stage.model_dump(mode="json", exclude_none=True)
    data.pop("projection_warmup", None)  # the warm-up is a stage of rp.stages already, written on its own
    kept, dropped = [], []
    for ds in stage.mixture.datasets:
        if ds.task not in SHAPES_TASKS:
            dropped.append(f"{ds.name} ({ds.task})")
            continue
        entry = {
            "name": ds.name,
            "source": "shapes_world",
            "split": "train",
            "task": ds.task,
            "weight": ds.weight,
        }
        if ds.batch_size != 1:
            entry["batch_size"] = ds.batch_size
        if ds.instructions:
            entry["instructions"] = ds.instructions
        kept.append(entry)
    if not kept:
        raise ValueError(
            f"stage {stage.name}: the shapes world makes none of its tasks; nothing to smoke-test"
        )
    data["mixture"]["datasets"] = kept
    data["max_len"] = min(stage.max_len, positions)
    schedule = data["schedule"]
    for key in ("epochs", "iters_per_epoch"):
        schedule.pop(key, None)
    schedule.update(steps=steps, batch_size=2, accumulation_steps=1, warmup_steps=1, restart_each_epoch=False)
    data.update(processes=1, fsdp=False, checkpoint_every=0, log_every=1)
    data["loader"] = {**data.get("loader", {}), "workers": 0}
    note = f"smoke override of {stage.name}"
    if dropped:
        note += f"; left out (the shapes world has no such task): {', '.join(dropped)}"
    data["description"] = note
    return data, dropped


def write_smoke_specs(
    rp: ResolvedPipeline, out_dir: str | Path, *, steps: int = 2, preset: str | None = None
) -> Path:
    """Write the smoke version of `rp` under `out_dir`; returns the pipeline spec's path."""
    out_dir = Path(out_dir)
    (out_dir / "stages").mkdir(parents=True, exist_ok=True)
    model = rp.spec.model.model_dump(mode="json", exclude_none=True)
    model.update(pretrained=False)
    model.pop("projection_init", None)
    if preset is not None:
        if preset not in PRESETS:
            raise ValueError(f"--smoke-preset {preset!r}: known presets are {', '.join(sorted(PRESETS))}")
        model["preset"] = preset
    positions = int(PRESETS[model["preset"]].lm_kwargs.get("max_position_embeddings", 10**9))
    source = yaml.safe_load(SHAPES_SOURCE.read_text())
    source["shapes_world"].update(num_train=96, num_heldout=16, num_heldout_novel=16)
    source["number_sample_per_shard"] = 64
    (out_dir / "shapes_world.yaml").write_text(yaml.safe_dump(source, sort_keys=False))
    stage_files = []
    for stage in rp.stages:
        data, _ = _stage(stage, steps, positions)
        path = out_dir / "stages" / f"{stage.name}.yaml"
        path.write_text(yaml.safe_dump(data, sort_keys=False))
        stage_files.append(f"stages/{stage.name}.yaml")
    pipeline = {
        "name": f"{rp.spec.name}-smoke",
        "description": f"smoke override of {rp.path} (data_specs/smoke.py)",
        "model": model,
        "sources": ["shapes_world.yaml"],
        "stages": stage_files,
        "evaluation": {
            "benchmark": "shapes_world",
            "source": "shapes_world",
            "split": "heldout",
            "tasks": ["vqa", "refer", "caption"],
            "max_images": 8,
            "batch_size": 8,
        },
        "tracking": {
            **rp.spec.tracking.model_dump(mode="json", exclude_none=True),
            "experiment": f"{rp.spec.tracking.experiment}-smoke",
        },
    }
    if pipeline["tracking"].get("registered_model"):
        pipeline["tracking"]["registered_model"] += "-smoke"
    path = out_dir / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipeline, sort_keys=False))
    return path
