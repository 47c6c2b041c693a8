"""Stage data at scale: peak memory as the source grows, and how long training waits for data.

    python benchmarks/stage_data_bench.py                 # both parts, about 4 minutes on 2 cores
    python benchmarks/stage_data_bench.py --part memory --records 2000 --scale 10
    python benchmarks/stage_data_bench.py --part wait --steps 20

memory  Writes a shapes-world source of N records and one of N x scale (real webdataset shards and
        manifest), then, in a fresh process for each, builds the demo's stage-4 data (7 datasets,
        packing, a loader worker) and draws --batches batches. Prints each process's peak resident
        memory (training process, and its loader worker) and the ratio: a stage that held its source
        in memory would grow with it. The first read of a source also writes its index; that pass is
        timed separately.
wait    Runs --steps steps of every demo stage (tiny preset, CPU) with the stage's loader (workers
        as in its spec) and again with workers: 0, and prints the share of step time spent waiting
        for the batch and its images.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SPECS = ROOT / "data_specs" / "stages"
DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"


def demo_stages() -> list[str]:
    from data_specs.pipelines import load_pipeline

    return [path.stem for path in load_pipeline(DEMO).stage_paths]


def _write_source(path: Path, records: int) -> float:
    from tasks.ingest.outputs import write_records_as_source
    from tasks.shapes_world import in_memory_records

    started = time.perf_counter()
    chunk = 5000  # render and write in pieces: the benchmark itself must not hold the big source
    shards = []
    for i, start in enumerate(range(0, records, chunk)):
        part = in_memory_records(min(chunk, records - start), 0, seed=1000 + i)
        for r in part:  # keys must stay unique across the pieces
            r["key"] = f"p{i}-{r['key']}"
        manifest = write_records_as_source(part, path / f"part{i}", source="shapes_world", per_shard=1000)
        shards += [{**s, "path": f"part{i}/{s['path']}"} for s in manifest["shards"]]
    (path / "manifest.json").write_text(json.dumps({"source": "shapes_world", "shards": shards}))
    return time.perf_counter() - started


CHILD = r"""
import json, resource, sys, time
sys.path.insert(0, {root!r})
import torch
from data_specs.pipelines import ModelSpec
from data_specs.stages import load_stage_spec
from model.build import build_model
from tasks.data.stage_data import StageData, StageLoader, build_pools
from tasks.shapes_world import tokenizer_corpus

def rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

built, _ = build_model(ModelSpec(preset="tiny"), tokenizer_corpus=tokenizer_corpus, log=lambda m: None)
stage = load_stage_spec({spec!r})
stage.loader.workers = 1
before = rss_mib()
t = time.perf_counter()
pools = build_pools(stage, {{"shapes_world": {source!r}}})
index_s = time.perf_counter() - t
data = StageData.for_model(stage, pools, built)
loader = StageLoader(data, lambda b: b)
t = time.perf_counter()
for _ in range({batches}):
    next(loader)
draw_s = time.perf_counter() - t
loader.close()
print(json.dumps({{"examples": sum(len(p) for p in pools), "model_mib": round(before, 1),
    "peak_mib": round(rss_mib(), 1),
    "worker_peak_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024, 1),
    "pools_s": round(index_s, 2), "batches_s": round(draw_s, 2)}}))
"""


def _measure(source: Path, batches: int) -> dict:
    code = CHILD.format(
        root=str(ROOT), spec=str(SPECS / "stage4_multitask.yaml"), source=str(source), batches=batches
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


BASELINE = r"""
import sys
import psutil
sys.path.insert(0, {root!r})
from tasks.ingest import read_records
me = psutil.Process()
before = me.memory_info().rss / 2**20
records = list(read_records({source!r}, split="train"))
print(me.memory_info().rss / 2**20 - before)
"""


def _baseline(source: Path) -> float:
    code = BASELINE.format(root=str(ROOT), source=str(source))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def memory(records: int, scale: int, batches: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        rows = []
        for n in (records, records * scale):
            path = Path(tmp) / f"src{n}"
            write_s = _write_source(path, n)
            first = _measure(path, batches)  # writes the index and the example tables
            again = _measure(path, batches)  # reads them
            rows.append((n, write_s, first, again))
            print(f"records {n:>7}: source written in {write_s:.0f} s; first read {json.dumps(first)}")
            print(f"{'':>16} second read {json.dumps(again)}")
        (n0, _, _, small), (n1, _, _, big) = rows
        for key in ("peak_mib", "worker_peak_mib"):
            print(
                f"{key}: {small[key]:.0f} MiB at {n0} records, {big[key]:.0f} MiB at {n1} ({big[key] / small[key]:.3f}x)"
            )
        print(
            f"stage data alone (peak minus the model's): {small['peak_mib'] - small['model_mib']:.1f} MiB at "
            f"{n0} records, {big['peak_mib'] - big['model_mib']:.1f} MiB at {n1}"
        )
        for n, path in ((n0, Path(tmp) / f"src{n0}"), (n1, Path(tmp) / f"src{n1}")):
            base = _baseline(path)
            print(
                f"baseline, the whole source read into memory (the old path): {n} records -> +{base:.0f} MiB"
            )


def wait(steps: int, stages: list[str]) -> None:
    import torch

    from data_specs.pipelines import ModelSpec
    from data_specs.stages import load_stage_spec
    from model.build import build_model
    from model.trainable import set_trainable
    from tasks.data.stage_data import StageData, StageLoader, build_pools
    from tasks.shapes_world import tokenizer_corpus
    from tasks.train import recipe

    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        _write_source(source, 4000)  # the demo's size
        print(f"{'stage':<20} {'workers':>7} {'step s':>8} {'wait s':>8} {'wait share':>10}")
        for name in stages:
            for workers in (None, 0):
                stage = load_stage_spec(SPECS / f"{name}.yaml")
                if workers is not None:
                    stage.loader.workers = workers
                torch.manual_seed(0)
                built, _ = build_model(
                    ModelSpec(preset="tiny"),
                    image_size=stage.image_size,
                    tokenizer_corpus=tokenizer_corpus,
                    log=lambda m: None,
                )
                model = built.model
                set_trainable(model, stage.trainable, log=None)
                recipe.set_train_mode(model)
                named = recipe.trainable_named(model)
                optimizer = recipe.make_optimizer(model, stage)
                data = StageData.for_model(stage, build_pools(stage, {"shapes_world": str(source)}), built)
                loader = StageLoader(data, lambda b: b)
                fn = None
                if stage.contrastive is not None:
                    from tasks.train.stage import CONTRASTIVE_LOSSES

                    fn = CONTRASTIVE_LOSSES[stage.contrastive.loss]
                waited = total = 0.0
                for step in range(steps + 1):
                    t0 = time.perf_counter()
                    loaded = next(loader)
                    recipe.train_step(
                        model,
                        optimizer,
                        stage,
                        loaded.batch,
                        images=loaded.images,
                        procs=recipe.Processes(),
                        device=torch.device("cpu"),
                        named=named,
                        contrastive_fn=fn,
                        step=step + 1,
                        timer=time.perf_counter,
                    )
                    if step:  # the first step starts the workers: left out
                        waited += loaded.wait_s
                        total += time.perf_counter() - t0
                loader.close()
                shown = stage.loader.workers
                print(
                    f"{name:<20} {shown:>7} {total / steps:>8.3f} {waited / steps:>8.4f} {waited / total:>10.1%}"
                )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["memory", "wait", "both"], default="both")
    parser.add_argument("--records", type=int, default=2000)
    parser.add_argument("--scale", type=int, default=10)
    parser.add_argument("--batches", type=int, default=200)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--stages", default=None, help="stages to time (comma-separated; default: the demo pipeline's)"
    )
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if args.part in ("memory", "both"):
        memory(args.records, args.scale, args.batches)
    if args.part in ("wait", "both"):
        wait(args.steps, args.stages.split(",") if args.stages else demo_stages())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
