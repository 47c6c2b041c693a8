"""A stage on two processes (torchrun, DDP over gloo on the CPU), on a real ingested source: the same
losses and weights as one process with the same global batch; a launcher SIGKILLed mid-way leaves
nothing running, and the rerun ends with the weights of a run never killed."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from data_specs.pipelines import ModelSpec
from data_specs.sources import load_source_spec
from data_specs.stages import load_stage_spec
from tasks.ingest import ingest_source
from tasks.train.stage import train_stage

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SPECS = ROOT / "data_specs" / "stages"
EXACT = ModelSpec(preset="tiny", seed=0, lora={"r": 8, "alpha": 16, "dropout": 0.0})
STEP_LINE = re.compile(r"step (\d+)/\d+ loss ([0-9.]+)")


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("dist")
    spec = {
        "name": "shapes_world",
        "kind": "shapes_world",
        "shapes_world": {"num_train": 96, "num_heldout": 8, "seed": 5, "canvas_size": 64, "max_shapes": 3},
        "encode_format": "png",
        "encode_quality": 1,
        "number_sample_per_shard": 64,
        "processes_count": 1,
        "thread_count": 8,
        "timeout": 2,
        "image_size": 64,
        "allowed_hosts": ["127.0.0.1"],
    }
    path = root / "shapes.yaml"
    path.write_text(yaml.safe_dump(spec))
    ingest_source(load_source_spec(path), root / "data", log=lambda _m: None, progress_s=5.0)
    return {"shapes_world": str(root / "data")}


def stage_spec(processes: int, checkpoint_every: int = 0):
    stage = load_stage_spec(SPECS / "stage4_multitask.yaml")
    stage.schedule.steps, stage.schedule.batch_size, stage.schedule.warmup_steps = 6, 4, 1
    stage.schedule.lr = 1e-3
    stage.processes, stage.device, stage.log_every = processes, "cpu", 1
    stage.checkpoint_every = checkpoint_every
    return stage


def trajectory(lines: list[str]) -> list[float]:
    return [float(m.group(2)) for line in lines if (m := STEP_LINE.search(line))]


@pytest.fixture(scope="module")
def one_process(shapes_dir, tmp_path_factory):
    lines: list[str] = []
    out = train_stage(
        stage_spec(1),
        EXACT,
        data_dirs=shapes_dir,
        output_dir=tmp_path_factory.mktemp("one"),
        log=lines.append,
    )
    return out, trajectory(lines)


def assert_same_weights(a_dir: str, b_dir: str) -> None:
    a = load_file(Path(a_dir) / "weights.safetensors")
    b = load_file(Path(b_dir) / "weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        if "k_layernorm.bias" in name:  # true gradient 0 (softmax shift): Adam scales rounding noise
            continue
        torch.testing.assert_close(a[name], b[name], rtol=1e-5, atol=5e-6)


def test_two_gloo_processes_match_one_with_the_same_global_batch(shapes_dir, one_process, tmp_path):
    single, single_losses = one_process
    lines: list[str] = []
    two = train_stage(
        stage_spec(2), EXACT, data_dirs=shapes_dir, output_dir=tmp_path / "two", log=lines.append
    )
    assert two["processes"] == 2 and any("2 processes (torchrun, DDP over gloo)" in m for m in lines)
    losses = trajectory(lines)
    assert len(losses) == len(single_losses) == 6
    assert losses == pytest.approx(single_losses, rel=1e-4)  # the log prints 4 decimals
    assert_same_weights(single["checkpoint"], two["checkpoint"])


def test_a_failed_rank_fails_the_stage_with_its_cause(shapes_dir, tmp_path):
    stage = stage_spec(2)
    stage.guards.grad_norm_floor, stage.guards.floor_steps = 1e9, 2
    from tasks.train.recipe import TrainingHalted

    with pytest.raises(TrainingHalted, match="gradient norm under 1e\\+09 for 2 steps") as caught:
        train_stage(stage, EXACT, data_dirs=shapes_dir, output_dir=tmp_path / "guard", log=lambda _m: None)
    assert caught.value.cause == "vanishing_gradient"
    assert not (tmp_path / "guard" / "checkpoint").exists()


LAUNCHER = """
import json, sys
from data_specs.pipelines import ModelSpec
from data_specs.stages import StageSpec
from tasks.train.stage import train_stage
job = json.loads(sys.argv[1])
train_stage(StageSpec.model_validate(job["stage"]), ModelSpec.model_validate(job["model"]),
            data_dirs=job["data_dirs"], output_dir=job["out"], log=print)
"""


def children_of(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    return [int(p) for p, pp, *args in (line.split(None, 2) for line in out.splitlines()) if int(pp) == pid]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"  # a zombie has exited; only its parent's wait is missing


def test_a_sigkilled_two_process_stage_resumes_to_the_weights_of_one_never_killed(
    shapes_dir, one_process, tmp_path
):
    single, _ = one_process
    stage = stage_spec(2, checkpoint_every=2)
    out = tmp_path / "killed"
    job = {
        "stage": stage.model_dump(mode="json"),
        "model": EXACT.model_dump(mode="json"),
        "data_dirs": shapes_dir,
        "out": str(out),
    }
    env = dict(os.environ, PYTHONPATH=str(ROOT), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, json.dumps(job)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen: list[str] = []
    assert proc.stdout is not None
    for line in proc.stdout:  # kill right after the first resumable state (step 2) is written
        seen.append(line)
        if "step 3/6" in line:
            break
    agent = children_of(proc.pid)
    ranks = [c for a in agent for c in children_of(a)]
    assert agent and len(ranks) == 2, "".join(seen[-20:])
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and any(alive(p) for p in agent + ranks):
        time.sleep(0.5)
    left = [p for p in agent + ranks if alive(p)]
    assert not left, f"still running after the launcher's SIGKILL: {left}"
    assert (out / "resume" / "checkpoint.json").is_file() and not (out / "checkpoint").exists()

    lines: list[str] = []
    resumed = train_stage(stage, EXACT, data_dirs=shapes_dir, output_dir=out, log=lines.append)
    assert any("resuming at step" in m for m in lines), lines
    assert_same_weights(single["checkpoint"], resumed["checkpoint"])


def test_fsdp_over_two_processes_matches_one_process_and_resumes_exactly(shapes_dir, one_process, tmp_path):
    """The LM's layers sharded over two processes (FSDP2, gloo): stopped after step 3 with its
    optimizer state gathered into resume/, then continued: the weights of one process never stopped."""
    single, _ = one_process
    stage = stage_spec(2, checkpoint_every=2)
    stage.fsdp = True
    out = tmp_path / "fsdp"
    part = train_stage(stage, EXACT, data_dirs=shapes_dir, output_dir=out, log=lambda _m: None, max_steps=3)
    assert part["checkpoint"] is None and (out / "resume" / "checkpoint.json").is_file()
    lines: list[str] = []
    done = train_stage(stage, EXACT, data_dirs=shapes_dir, output_dir=out, log=lines.append)
    assert any("resuming at step 3" in m for m in lines), lines
    shard = next(m for m in lines if "sharded over 2 processes (FSDP2)" in m)
    here, total = (int(x.replace(",", "")) for x in re.findall(r"([\d,]+) of its ([\d,]+)", shard)[0])
    assert here < 0.75 * total  # the layers are halved; the token embedding stays whole
    assert_same_weights(single["checkpoint"], done["checkpoint"])
