"""A stage on N processes: this process starts `torchrun` and relays what its ranks say.

    train_stage (this process, holds the MLflow run)
      └ torchrun --standalone --nproc-per-node N   (a session of its own; dies with us)
          └ N x `python -m tasks.train.launch JOB`  -> train_stage again, now as rank r of N

Ranks speak to this process in single stdout lines `@@vlmpipe {json}`: rank 0 sends log lines,
metrics, params and artifacts (this process writes them to the MLflow run, so the ranks need no
tracking store); every rank says hello with its pid, and a rank that fails sends its error. Other
output (warnings, a crash's traceback) is passed on as log lines.

A stop request here (SIGINT/SIGTERM) is sent once to every rank as SIGTERM: the ranks agree on the
step, rank 0 writes the resumable state, and this process raises `Interrupted` as a one-process
stage would. A failed rank fails the stage with its error (the first one to fail), and a guard's
cause (TrainingHalted) survives the trip.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from data_specs.pipelines import ModelSpec
from data_specs.stages import StageSpec
from tasks import stopping
from tasks.tracking import Tracker

MARK = "@@vlmpipe "
ROOT = Path(__file__).resolve().parents[2]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    os.setsid()
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def run_torchrun(
    stage: StageSpec,
    model_spec: ModelSpec,
    *,
    data_dirs: dict[str, str],
    output_dir: Path,
    init_checkpoint: str | None,
    tracker: Tracker | None,
    log: Callable[[str], None],
    max_steps: int | None,
) -> dict[str, Any]:
    job = output_dir / "launch.json"
    tmp = job.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "stage": stage.model_dump(mode="json"),
                "model": model_spec.model_dump(mode="json"),
                "data_dirs": {k: str(Path(v).resolve()) for k, v in data_dirs.items()},
                "output_dir": str(output_dir.resolve()),
                "init_checkpoint": str(Path(init_checkpoint).resolve()) if init_checkpoint else None,
                "max_steps": max_steps,
            }
        )
    )
    tmp.replace(job)
    n = stage.processes
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // n)))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={n}",
        "--max-restarts=0",
        "-m",
        "tasks.train.launch",
        str(job),
    ]
    from tasks.train.recipe import resolve_device

    backend = "nccl" if resolve_device(stage.device).type == "cuda" else "gloo"  # a missing GPU fails here
    log(f"stage {stage.name}: {n} processes (torchrun, DDP over {backend})")
    proc = subprocess.Popen(  # in our working folder: relative paths inside the specs mean the same
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        preexec_fn=_die_with_parent,
    )
    pids: dict[int, int] = {}
    errors: list[dict] = []
    result: dict[str, Any] | None = None
    done = threading.Event()

    def pass_stop_on() -> None:  # reading blocks between lines: a thread watches for a stop request
        while not done.wait(0.2):
            if stopping.requested() is not None:
                for pid in list(pids.values()) or [proc.pid]:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGTERM)
                return

    watcher = threading.Thread(target=pass_stop_on, daemon=True)
    with stopping.handling(), stopping.deferred():  # a stop request is passed on, not raised here
        watcher.start()
        assert proc.stdout is not None
        for line in proc.stdout:
            line = line.rstrip("\n")
            if not line.startswith(MARK):
                if line.strip():
                    log(line)
                continue
            msg = json.loads(line[len(MARK) :])
            kind = msg.get("kind")
            if kind == "hello":
                pids[int(msg["rank"])] = int(msg["pid"])
            elif kind == "log":
                log(msg["text"])
            elif kind == "metrics" and tracker is not None:
                tracker.log_metrics(msg["metrics"], step=msg.get("step"))
            elif kind == "params" and tracker is not None:
                tracker.log_params(msg["params"])
            elif kind == "dict" and tracker is not None:
                tracker.log_dict(msg["data"], msg["name"])
            elif kind == "result":
                result = msg["result"]
            elif kind == "error":
                errors.append(msg)
        code = proc.wait()
        done.set()
    if code == 0 and result is not None:
        return result
    raise _stage_error(stage, code, errors)


def _stage_error(stage: StageSpec, code: int, errors: list[dict]) -> BaseException:
    from tasks.train.recipe import TrainingHalted

    stopped = [e for e in errors if e.get("signum")]
    if stopped or stopping.requested() is not None:
        signum = stopping.requested() or int(stopped[0]["signum"])
        text = stopped[0]["message"] if stopped else f"stage {stage.name} stopped"
        return stopping.Interrupted(signum, text)
    if errors:
        first = min(errors, key=lambda e: e.get("time", 0.0))
        if first.get("cause"):
            return TrainingHalted(first["message"], first["cause"])
        return RuntimeError(
            f"stage {stage.name}: rank {first['rank']} of {stage.processes} failed: "
            f"{first['type']}: {first['message']}"
        )
    return RuntimeError(f"stage {stage.name}: torchrun exited with status {code} and no rank said why")


# ------------------------------------------------------------------------------ the rank side


def _say(kind: str, **fields: Any) -> None:
    sys.stdout.write(MARK + json.dumps({"kind": kind, **fields}, default=str) + "\n")
    sys.stdout.flush()


class RelayTracker:
    """What rank 0 hands train_stage as its tracker: every call becomes a line for the launcher."""

    def log_params(self, params: dict[str, Any], prefix: str = "") -> None:
        _say("params", params={f"{prefix}{k}": v for k, v in params.items()})

    def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
        _say("metrics", metrics=metrics, step=step)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        _say("dict", data=data, name=artifact_file)


def rank_main(job_path: str) -> int:
    """One rank of a launched stage (torchrun runs this module with the job file)."""
    from tasks.train.recipe import Processes
    from tasks.train.stage import train_stage

    procs = Processes.from_env()
    _say("hello", rank=procs.rank, pid=os.getpid())
    stopping.install()
    job = json.loads(Path(job_path).read_text())
    stage = StageSpec.model_validate(job["stage"])
    model_spec = ModelSpec.model_validate(job["model"])
    try:
        result = train_stage(
            stage,
            model_spec,
            data_dirs=job["data_dirs"],
            output_dir=job["output_dir"],
            init_checkpoint=job["init_checkpoint"],
            tracker=RelayTracker() if procs.main else None,  # type: ignore[arg-type]
            log=lambda text: _say("log", text=text),
            max_steps=job["max_steps"],
        )
    except BaseException as exc:  # noqa: BLE001 - every failure goes to the launcher, then exits
        _say(
            "error",
            rank=procs.rank,
            type=type(exc).__name__,
            message=" ".join(str(exc).split()),
            cause=getattr(exc, "cause", None),
            signum=getattr(exc, "signum", None),
            time=time.time(),
        )
        if isinstance(exc, stopping.Interrupted):
            return exc.exit_code
        import traceback

        traceback.print_exc()
        return 1
    if procs.main:
        _say("result", result=result)
    return 0


if __name__ == "__main__":
    sys.exit(rank_main(sys.argv[1]))
