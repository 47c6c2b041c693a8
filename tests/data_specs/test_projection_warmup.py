"""VPGTrans's projector warm-up as a stage option: the pipeline runs `<name>_projection_warmup` (the
projection alone, constant large lr, the stage's data) just before the stage that asks for it."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.pipelines import ROOT

DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"


def pipeline_with_warmup(folder: Path, warmup: dict) -> Path:
    stage = yaml.safe_load((ROOT / "data_specs" / "stages" / "stage1_warmup.yaml").read_text())
    stage["projection_warmup"] = warmup
    (folder / "stage1_warmup.yaml").write_text(yaml.safe_dump(stage))
    pipe = yaml.safe_load(DEMO.read_text())
    pipe["sources"] = [str((DEMO.parent / s).resolve()) for s in pipe["sources"]]
    pipe["stages"] = [
        str(folder / "stage1_warmup.yaml")
        if s.endswith("/stage1_warmup.yaml")
        else str((DEMO.parent / s).resolve())
        for s in pipe["stages"]
    ]
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def test_the_warmup_is_its_own_stage_just_before_its_stage(tmp_path):
    from data_specs.pipelines import load_pipeline

    rp = load_pipeline(pipeline_with_warmup(tmp_path, {"steps": 20, "lr": 1e-2, "warmup_steps": 2}))
    names = [s.name for s in rp.stages]
    at = names.index("stage1_warmup")
    assert names[at - 1] == "stage1_warmup_projection_warmup"
    assert rp.stage_paths[at - 1] == rp.stage_paths[at]
    warm, stage = rp.stages[at - 1], rp.stages[at]
    assert warm.trainable == ["projection"] and warm.autoregressive and warm.contrastive is None
    assert warm.schedule.steps == 20 and warm.schedule.lr_at(2) == pytest.approx(1e-2)
    assert warm.schedule.lr_at(19) == pytest.approx(1e-2)  # constant after the ramp
    assert warm.mixture == stage.mixture and warm.template == stage.template


def test_a_bad_warmup_is_one_line_naming_the_field(tmp_path):
    import subprocess
    import sys

    path = pipeline_with_warmup(tmp_path, {"steps": 0, "lr": 1e-2})
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "spec", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "projection_warmup.steps" in proc.stderr, proc.stderr


def test_the_warmup_stage_trains_the_projection_alone(tmp_path, shapes_source):
    from data_specs.pipelines import ModelSpec, load_pipeline
    from model.build import build_model
    from tasks.shapes_world import tokenizer_corpus
    from tasks.train.stage import train_stage

    rp = load_pipeline(pipeline_with_warmup(tmp_path, {"steps": 3, "lr": 1e-2}))
    warm = next(s for s in rp.stages if s.name.endswith("_projection_warmup"))
    warm.schedule.batch_size = 2
    model = ModelSpec(preset="tiny", seed=0)
    out = train_stage(warm, model, data_dirs=shapes_source, output_dir=tmp_path / "warm", log=lambda _m: None)
    weights = load_file(Path(out["checkpoint"]) / "weights.safetensors")
    assert weights and all(n.startswith("projection.") for n in weights)
    start = dict(
        build_model(model, tokenizer_corpus=tokenizer_corpus, log=lambda _m: None)[0].model.named_parameters()
    )
    assert not torch.equal(weights["projection.proj_in.weight"], start["projection.proj_in.weight"].detach())
