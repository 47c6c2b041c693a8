"""One run, one owner: run folders are claimed atomically, a busy run is refused, resuming is
explicit; and a stop signal ends a training stage at a step boundary with a resumable state."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tasks.state import RunError, claim_run, runs_of

ROOT = Path(__file__).resolve().parents[2]


def _claim(home: str, name: str | None, queue) -> None:  # noqa: ANN001
    try:
        folder = claim_run(home, "demo", name, stamp="20261201-000000")
        queue.put(("ok", folder.name))
        time.sleep(1.0)  # hold the lock while the other tries
    except RunError as exc:
        queue.put(("refused", str(exc)))


@pytest.mark.parametrize("name", [None, "nightly"])
def test_two_runs_started_at_once_get_distinct_folders_or_a_clean_refusal(tmp_path, name):
    ctx = multiprocessing.get_context("fork")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_claim, args=(str(tmp_path), name, queue)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(10)
    outcomes = sorted(queue.get(timeout=5) for _ in procs)
    if name is None:  # the same second, no name: both run, under distinct names
        assert outcomes == [("ok", "demo-20261201-000000"), ("ok", "demo-20261201-000000-2")]
    else:
        assert outcomes[0] == ("ok", "nightly")
        assert (
            outcomes[1][0] == "refused"
            and "run nightly exists; continue it with --resume nightly" in outcomes[1][1]
        )


def test_resuming_is_explicit_and_a_busy_run_is_refused(tmp_path):
    first = claim_run(tmp_path, "demo", "a")
    with pytest.raises(RunError, match="run a is in use by pid"):
        claim_run(tmp_path, "demo", "a", resume=True)
    first.release()
    again = claim_run(tmp_path, "demo", "last", resume=True)
    assert again.name == "a"
    again.release()
    with pytest.raises(RunError, match=r"no run 'b' to resume \(runs there: a\)"):
        claim_run(tmp_path, "demo", "b", resume=True)
    assert runs_of(tmp_path, "demo") == ["a"]


SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
from conftest_data import setup
from tasks import stopping
from tasks.train.stage import train_stage
stage, model, sources = setup()
stopping.install()
print("training", flush=True)
out = train_stage(stage, model, data_dirs=sources, output_dir={out!r}, log=lambda m: print(m, flush=True))
print("done", out["checkpoint"], flush=True)
"""

HELPER = """
from pathlib import Path
from data_specs.pipelines import ModelSpec
from data_specs.stages import load_stage_spec
from tasks.data import records as data_records
from tasks.shapes_world import in_memory_records

def setup():
    records = in_memory_records(80, 0, seed=3)
    data_records.MEMORY_SOURCES[("mem", "train")] = records
    stage = load_stage_spec(Path({specs!r}) / "stage4_multitask.yaml")
    stage.schedule.steps, stage.schedule.batch_size, stage.schedule.warmup_steps = 40, 2, 1
    stage.log_every = 1
    return stage, ModelSpec(preset="tiny", seed=0), {{"shapes_world": "mem"}}
"""


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_stops_a_stage_at_a_step_and_the_rerun_reaches_the_same_weights(tmp_path, signum):
    (tmp_path / "conftest_data.py").write_text(HELPER.format(specs=str(ROOT / "data_specs" / "stages")))

    def run(out: Path, stop_after: int | None) -> subprocess.CompletedProcess:
        proc = subprocess.Popen(
            [sys.executable, "-c", SCRIPT.format(tests=str(tmp_path), out=str(out))],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines = []
        if stop_after is not None:
            for line in proc.stdout:
                lines.append(line)
                if f"step {stop_after}/40" in line:
                    os.kill(proc.pid, signum)
                    break
        out_text, err = proc.communicate(timeout=600)
        return subprocess.CompletedProcess(proc.args, proc.returncode, "".join(lines) + out_text, err)

    full = run(tmp_path / "full", None)
    assert full.returncode == 0, full.stderr
    stopped = run(tmp_path / "part", 5)
    assert stopped.returncode != 0 and "Interrupted" in stopped.stderr, stopped.stderr
    assert "state saved in" in stopped.stderr
    assert (tmp_path / "part" / "resume" / "checkpoint.json").is_file()
    resumed = run(tmp_path / "part", None)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at step" in resumed.stdout
    a = load_file(tmp_path / "full" / "checkpoint" / "weights.safetensors")
    b = load_file(tmp_path / "part" / "checkpoint" / "weights.safetensors")
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)


def test_a_signal_sent_as_a_step_is_logged_stops_after_that_step_with_its_state_saved(tmp_path, monkeypatch):
    """A scheduler or a person reacts to a step's log line: the signal lands at the end of that
    step or between it and the next, and must still wait for a step boundary (a request that
    interrupted between two steps used to end the stage unsaved, one CI run in several)."""
    from data_specs.pipelines import ModelSpec
    from data_specs.stages import load_stage_spec
    from tasks import stopping
    from tasks.data import records as data_records
    from tasks.shapes_world import in_memory_records
    from tasks.train.stage import train_stage

    monkeypatch.setitem(data_records.MEMORY_SOURCES, ("mem_stop", "train"), in_memory_records(40, 0, seed=3))
    monkeypatch.setitem(stopping._state, "requested", None)  # the process-wide request, reset after
    stage = load_stage_spec(ROOT / "data_specs" / "stages" / "stage4_multitask.yaml")
    stage.schedule.steps, stage.schedule.batch_size, stage.schedule.warmup_steps = 12, 2, 1
    stage.log_every, stage.loader.workers = 1, 0

    def log(message: str) -> None:
        if "step 3/12" in message:
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs at once, mid-report

    with pytest.raises(stopping.Interrupted, match=r"stopped after step 3; state saved in") as stopped:
        train_stage(
            stage,
            ModelSpec(preset="tiny", seed=0),
            data_dirs={"shapes_world": "mem_stop"},
            output_dir=tmp_path / "out",
            log=log,
        )
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert (tmp_path / "out" / "resume" / "checkpoint.json").is_file()
    assert signal.getsignal(signal.SIGTERM) is not stopping._handle  # the stage put back what it found
