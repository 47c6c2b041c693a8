"""Run img2dataset in a process of its own (`tasks.ingest.worker`) and report progress while it runs.

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
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

from data_specs.sources import SourceSpec
from tasks.ingest.prepare import Log, PreparedInput, read_json, write_json

PROJECT_ROOT = Path(__file__).resolve().parents[2]


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
    return {
        "download": download,
        "reject_truncated": spec.reject_truncated,
        "fetch": spec.fetch_policy(),
        "spark": spec.spark.model_dump() if spec.spark else None,
    }


class Progress:
    """Counts finished shards by their stats files (img2dataset writes them last), reading each once."""

    def __init__(self, shards_dir: Path, total: int, since: float):
        self.shards_dir, self.total, self.since = shards_dir, total, since
        self.seen: set[str] = set()
        self.urls = self.successes = 0
        self.first_start = math.inf

    def poll(self) -> list[int]:
        """Shard ids whose stats appeared since the last poll."""
        new = []
        for path in self.shards_dir.glob("*_stats.json") if self.shards_dir.exists() else []:
            if path.name in self.seen:
                continue
            stats = read_json(path)
            if not stats:
                continue  # still being written: next poll
            self.seen.add(path.name)
            new.append(int(path.name.split("_")[0]))
            if stats.get("end_time", 0) >= self.since:  # finished by this run
                self.urls += stats["count"]
                self.successes += stats["successes"]
                self.first_start = min(self.first_start, stats.get("start_time", self.since))
        return sorted(new)

    @property
    def done(self) -> int:
        return len(self.seen)

    def line(self, name: str) -> str:
        text = f"[ingest {name}] shards {self.done}/{self.total}"
        if self.urls:
            span = max(time.time() - min(self.first_start, time.time()), 1e-3)
            text += (
                f"; this run {self.urls} URLs, {self.successes / self.urls:.1%} success, "
                f"{self.urls / span:.0f} URLs/s"
            )
        return text


def run_img2dataset(
    config: dict,
    output_dir: Path,
    name: str,
    total_shards: int,
    *,
    log: Log,
    on_shard: Callable[[int], None] | None = None,
    poll_s: float = 1.0,
    progress_s: float = 10.0,
    stall_s: float = 3600.0,
    finish_grace_s: float = 30.0,
) -> int:
    """Run the worker process to the end; its exit code.

    Every `poll_s` each newly finished shard is handed to `on_shard` (validation overlaps the
    download), and every `progress_s` a progress line is logged when it changed. Two hangs are cut
    short by killing the process group (the next round takes over): no shard finishing for
    `stall_s`, and a process still alive `finish_grace_s` after every shard has its stats
    (img2dataset's pool teardown can deadlock; the shards are complete by then).
    """
    cfg_path = output_dir / "worker_config.json"
    write_json(cfg_path, config)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH")) if p),
    }
    env.setdefault("WANDB_MODE", "disabled")
    env.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")  # albumentations phones home at import otherwise
    progress = Progress(Path(config["download"]["output_folder"]), total_shards, time.time())
    with open(output_dir / "ingest.log", "ab") as logfile:
        logfile.write(f"\n==== {datetime.now(timezone.utc).isoformat()} img2dataset run\n".encode())
        logfile.flush()
        # Own process group: one killpg stops img2dataset's pool and logger processes too. Not a new
        # session (start_new_session): with the kernel's autogroup scheduling a session is one CPU
        # share, and the whole download would then compete as a single process.
        group = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.ingest.worker", str(cfg_path)],
            cwd=output_dir,
            stdout=logfile,
            stderr=subprocess.STDOUT,
            env=env,
            **group,
        )
        (output_dir / "worker.pid").write_text(str(proc.pid))
        last_line, last_log, last_shard = "", time.time(), time.time()
        try:
            while True:
                try:
                    return proc.wait(timeout=poll_s)
                except subprocess.TimeoutExpired:
                    pass
                for shard_id in progress.poll():
                    last_shard = time.time()
                    if on_shard is not None:
                        on_shard(shard_id)
                now = time.time()
                if now - last_log >= progress_s and progress.line(name) != last_line:
                    last_line, last_log = progress.line(name), now
                    log(last_line)
                if progress.done >= total_shards and now - last_shard > finish_grace_s:
                    log(
                        f"[ingest {name}] every shard is written but img2dataset has not exited after "
                        f"{finish_grace_s:.0f} s: stopping it"
                    )
                    return 0
                if now - last_shard > stall_s:
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
