"""Resume: an ingest SIGKILLed part-way leaves no process behind, and a rerun finishes only what is
missing: each good sample lands exactly once and every shard validates."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from ingest_helpers import FAST_DOWNLOAD, spec_file, url_list_file

from data_specs.sources import load_source_spec
from tasks.ingest import ingest_source
from tasks.ingest.validate import check_shard
from tasks.loopback import FaultServer, fault_url_rows

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[3]
SHARDS, PER_SHARD = 8, 20


def _stats_files(out: Path) -> list[Path]:
    return sorted((out / "shards").glob("*_stats.json")) if (out / "shards").exists() else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def test_sigkill_then_rerun_gives_each_sample_once(tmp_path):
    # each good image answers after 0.1 s and 2 threads fetch them: a shard takes ~1 s
    with FaultServer(good_delay_s=0.1) as server:
        rows = fault_url_rows(server.base_url, SHARDS * PER_SHARD, {})
        spec_path = spec_file(
            tmp_path,
            "resume",
            kind="url_list",
            url_list=str(url_list_file(tmp_path, rows)),
            input_format="parquet",
            number_sample_per_shard=PER_SHARD,
            min_success_rate=1.0,
            **{**FAST_DOWNLOAD, "thread_count": 2},
        )
        out = tmp_path / "out"
        proc = subprocess.Popen(
            [sys.executable, "-m", "tasks.ingest", str(spec_path), str(out), "--progress-s", "0.5"],
            cwd=ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.time() + 120
        while len(_stats_files(out)) < 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)  # the ingest dies mid-download, shard writers and all
        proc.wait()
        worker = int((out / "worker.pid").read_text())
        for _ in range(50):  # img2dataset's processes die with their parent (PR_SET_PDEATHSIG)
            if not _group_alive(worker):
                break
            time.sleep(0.1)
        assert not _group_alive(worker), "img2dataset processes outlived the killed ingest"
        done_at_kill = len(_stats_files(out))
        assert 2 <= done_at_kill < SHARDS, "the kill should land part-way"
        served_before = server.served["good"]

        lines: list[str] = []
        manifest = ingest_source(load_source_spec(spec_path), out, log=lines.append, progress_s=1.0)
        refetched = server.served["good"] - served_before

    # only the missing shards were downloaded again
    assert [r["shards"] for r in manifest["rounds"]] == [SHARDS - done_at_kill]
    assert refetched == (SHARDS - done_at_kill) * PER_SHARD
    # every good URL exactly once, across shards that all validate
    urls = []
    for shard_id, shard in enumerate(manifest["shards"]):
        report = check_shard(out / "shards", shard_id, PER_SHARD, "jpg", with_caption=True, decode=PER_SHARD)
        assert report.sha256 == shard["sha256"] and report.samples == PER_SHARD
        with tarfile.open(out / shard["path"]) as tar:
            urls += [json.load(tar.extractfile(m))["url"] for m in tar if m.name.endswith(".json")]
    assert sorted(urls) == sorted(r["url"] for r in rows)
    assert manifest["totals"]["success"] == SHARDS * PER_SHARD
    # no partial leftovers: one tar, parquet and stats per shard and nothing else
    names = sorted(p.name for p in (out / "shards").iterdir())
    assert names == sorted(
        f"{i:05d}{ext}" for i in range(SHARDS) for ext in (".tar", ".parquet", "_stats.json")
    )
