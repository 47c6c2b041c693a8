"""Run img2dataset in a process of its own (`tasks.ingest_worker`) and report progress while it runs.

The worker gets its own process group, so stopping it (a stall, an interrupt) stops img2dataset's
pool and logger processes with it; its output goes to the ingest folder's ingest.log.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from data_specs.sources import SourceSpec
from tasks.ingest_prepare import Log, PreparedInput, read_json, write_json
from tasks.ingest_validate import shard_files

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def worker_config(spec: SourceSpec, prepared: PreparedInput, shards_dir: Path) -> dict:
    download = {
        "url_list": str(prepared.folder),
        "input_format": "parquet",
        "url_col": "url",
        "caption_col": "caption" if prepared.has_caption else None,
        "save_additional_columns": prepared.extra_columns or None,
        "output_folder": str(shards_dir),
        "output_format": "webdataset",
        # "overwrite" is broken in img2dataset 1.47; we clear the folder ourselves when needed
        "incremental_mode": "incremental",
        "enable_wandb": False,
        **spec.img2dataset_options(),
    }
    return {"download": download, "reject_truncated": spec.reject_truncated,
            "spark": spec.spark.model_dump() if spec.spark else None}


def _progress(shards_dir: Path, sizes: list[int], since: float) -> tuple[int, int, int, float]:
    done = urls = ok = 0
    first = math.inf
    for shard_id in range(len(sizes)):
        stats = read_json(shard_files(shards_dir, shard_id)["stats"])
        if stats:
            done += 1
            if stats.get("end_time", 0) >= since:
                urls += stats["count"]
                ok += stats["successes"]
                first = min(first, stats.get("start_time", since))
    return done, urls, ok, (time.time() - min(first, time.time())) or 1.0


def run_img2dataset(config: dict, output_dir: Path, name: str, sizes: list[int], *, log: Log,
                    progress_s: float = 10.0, stall_s: float = 3600.0) -> int:
    """Run the worker process to the end (or until no shard finishes for `stall_s`); its exit code."""
    cfg_path = output_dir / "worker_config.json"
    write_json(cfg_path, config)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")])}
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import otherwise
    shards_dir = Path(config["download"]["output_folder"])
    started = time.time()
    with open(output_dir / "ingest.log", "ab") as logfile:
        logfile.write(f"\n==== {datetime.now(timezone.utc).isoformat()} img2dataset run\n".encode())
        logfile.flush()
        # own process group: one killpg stops img2dataset's pool and logger processes too
        proc = subprocess.Popen([sys.executable, "-m", "tasks.ingest_worker", str(cfg_path)], cwd=output_dir,
                                stdout=logfile, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        (output_dir / "worker.pid").write_text(str(proc.pid))
        last_line, last_change = "", time.time()
        try:
            while True:
                try:
                    return proc.wait(timeout=progress_s)
                except subprocess.TimeoutExpired:
                    pass
                done, urls, ok, span = _progress(shards_dir, sizes, started)
                line = f"[ingest {name}] shards {done}/{len(sizes)}" + (
                    f"; this run {urls} URLs, {ok / urls:.1%} success, {urls / span:.0f} URLs/s" if urls else "")
                if line != last_line:
                    log(line)
                    last_line, last_change = line, time.time()
                elif time.time() - last_change > stall_s:
                    log(f"[ingest {name}] no shard finished for {stall_s:.0f} s: stopping this round")
                    return -1
        finally:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def log_tail(output_dir: Path, lines: int = 3) -> str:
    try:
        text = (output_dir / "ingest.log").read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text[-lines:])
