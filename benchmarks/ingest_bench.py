"""Ingest overhead benchmark: one URL list from a loopback server through plain img2dataset and
through vlmpipe's ingest (the task function, and the Prefect flow on an already running API), with
the same img2dataset settings; prints images/s of each and the ratio to plain img2dataset.

    .venv/bin/python benchmarks/ingest_bench.py --images 2000 [--repeats 2] [--flow] [--mlflow]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tasks.loopback import FaultServer, fault_url_rows  # noqa: E402


def settings(args: argparse.Namespace) -> dict:
    """The img2dataset knobs both contenders use."""
    return {
        "image_size": args.image_size,
        "resize_mode": "border",
        "encode_format": "jpg",
        "encode_quality": 95,
        "processes_count": args.processes,
        "thread_count": args.threads,
        "number_sample_per_shard": args.per_shard,
        "timeout": 10,
        "retries": 0,
        "compute_hash": "sha256",
        "extract_exif": False,
    }


def run_plain(url_list: Path, out: Path, knobs: dict) -> float:
    """img2dataset's own command line, as its users run it; returns wall seconds."""
    cmd = [
        sys.executable,
        "-c",
        "from img2dataset.main import main; main()",
        "--url_list",
        str(url_list),
        "--input_format",
        "parquet",
        "--url_col",
        "url",
        "--caption_col",
        "caption",
        "--output_format",
        "webdataset",
        "--output_folder",
        str(out),
        "--enable_wandb",
        "False",
    ]
    for key, value in knobs.items():
        cmd += [f"--{key}", str(value)]
    env = {**os.environ, "NO_ALBUMENTATIONS_UPDATE": "1"}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    return time.perf_counter() - t0


def run_vlmpipe(spec_path: Path, out: Path, mode: str, tracking_uri: str | None) -> float:
    """ingest_source ("task") or ingest_flow ("flow"), from spec to validated manifest; wall seconds.

    Imports happen before the clock starts: a flow run's process has its modules loaded already.
    """
    from data_specs.sources import load_source_spec
    from flows.ingest import ingest_flow
    from tasks.ingest import ingest_source
    from tasks.tracking import start_run

    t0 = time.perf_counter()
    if mode == "task":
        ingest_source(load_source_spec(spec_path), out, log=lambda _: None)
    else:
        tracking = (
            start_run("ingest-bench", out.name, tracking_uri=tracking_uri).handle() if tracking_uri else None
        )
        ingest_flow(str(spec_path), str(out), tracking=tracking)
    return time.perf_counter() - t0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=1, help="runs per contender (median is reported)")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--per-shard", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--source-px", type=int, default=128, help="side of the served JPEGs")
    parser.add_argument("--flow", action="store_true", help="also time the Prefect flow (API started first)")
    parser.add_argument("--mlflow", action="store_true", help="with --flow: log to a SQLite MLflow store too")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    os.environ.setdefault("PREFECT_HOME", str(work / "prefect"))
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    knobs = settings(args)
    times: dict[str, list[float]] = {"img2dataset": [], "ingest_source": []}
    if args.flow:
        times["ingest_flow"] = []
    with FaultServer(image_px=args.source_px) as server:
        rows = fault_url_rows(server.base_url, args.images, {})
        url_list = work / "urls.parquet"
        pq.write_table(pa.Table.from_pylist(rows), url_list)
        spec_path = work / "bench.yaml"
        spec_path.write_text(
            yaml.safe_dump(
                {
                    "name": "bench",
                    "kind": "url_list",
                    "url_list": str(url_list),
                    "input_format": "parquet",
                    "min_success_rate": 1.0,
                    "allowed_hosts": ["127.0.0.1"],  # the loopback server (web sources refuse it otherwise)
                    **knobs,
                }
            )
        )
        if args.flow:
            # a deployment talks to a running API: the first flow run starts Prefect's local server
            # (15-30 s here), which is not part of an ingest, so it is left out of the timing
            t0 = time.perf_counter()
            run_vlmpipe(spec_path, work / "warmup", "flow", None)
            print(
                f"  (Prefect API start-up and a warm-up flow run: {time.perf_counter() - t0:.0f} s, not timed)"
            )
        tracking_uri = f"sqlite:///{work / 'mlflow.db'}" if args.mlflow else None
        names = list(times)
        for i in range(args.repeats):
            # rotate the order each repeat so drift (caches, thermals) does not favour one contender
            for name in names[i % len(names) :] + names[: i % len(names)]:
                out = work / f"{name}-{i}"
                if name == "img2dataset":
                    seconds = run_plain(url_list, out, knobs)
                else:
                    seconds = run_vlmpipe(
                        spec_path, out, "task" if name == "ingest_source" else "flow", tracking_uri
                    )
                times[name].append(seconds)
                print(
                    f"  run {i + 1} {name:<14} {seconds:6.1f} s  {args.images / seconds:7.1f} images/s",
                    flush=True,
                )
                shutil.rmtree(out, ignore_errors=True)
    base = statistics.median(times["img2dataset"])
    print(
        f"\n{args.images} images of {args.source_px} px -> {args.image_size} px, {args.processes} processes x "
        f"{args.threads} threads, {args.per_shard} per shard, median of {args.repeats}"
    )
    for name, values in times.items():
        seconds = statistics.median(values)
        print(
            f"{name:<14} {args.images / seconds:7.1f} images/s  ({seconds:5.1f} s)  ratio to img2dataset "
            f"{base / seconds:5.3f}  overhead {100 * (seconds / base - 1):+5.1f}%"
        )
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
