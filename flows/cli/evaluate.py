"""`vlmpipe evaluate CHECKPOINT --benchmarks gqa,vsr,... --data-root DIR`: official benchmarks on a
checkpoint (flows/evaluate.py), printed beside the TinyGPT-V paper's Table 2."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from flows.cli.common import add_home_option


def cmd_evaluate(args: argparse.Namespace) -> int:
    from data_specs.registry import OFFICIAL_BENCHMARKS, unknown_name
    from flows.cli import print_error

    names = (
        list(OFFICIAL_BENCHMARKS)
        if args.benchmarks == "all"
        else [n.strip() for n in args.benchmarks.split(",") if n.strip()]
    )
    for name in names:
        if name not in OFFICIAL_BENCHMARKS:
            print_error(f"--benchmarks: {unknown_name('benchmark', name, OFFICIAL_BENCHMARKS)}")
            return 2
    from model.checkpoint import CheckpointError, verify_checkpoint

    checkpoint = Path(args.checkpoint)
    try:
        verify_checkpoint(checkpoint, digests=False)
    except (CheckpointError, OSError, ValueError) as exc:
        print_error(f"{checkpoint}: not a complete vlmpipe checkpoint ({' '.join(str(exc).split())})")
        return 2
    data_root = Path(args.data_root)
    if not data_root.is_dir():
        print_error(f"--data-root: no such folder {data_root}")
        return 2

    from flows.evaluate_inputs import EvaluateError, check_data, model_config
    from tasks.evaluate.official import BenchmarkDataError

    try:  # before Prefect and the model start: a wrong root or checkpoint is one line, exit 2
        model_config(checkpoint, args.pipeline)
        check_data(names, data_root, {})
    except (EvaluateError, BenchmarkDataError) as exc:
        print_error(str(exc))
        return 2

    from flows.cli.run import use_servers
    from flows.local_api import local_prefect_api
    from tasks.state import vlmpipe_home

    home = vlmpipe_home(args.home)
    use_servers(home)
    with local_prefect_api(home):
        from flows.environment import console_without_tracebacks
        from flows.evaluate import benchmarks_flow

        console_without_tracebacks()
        result = benchmarks_flow(
            str(checkpoint.resolve()),
            names,
            str(data_root.resolve()),
            pipeline_spec=args.pipeline,
            max_items=args.max_items,
            batch_size=args.batch_size,
        )
    if args.json:
        print(json.dumps(result, indent=2, default=str))
        return 0
    from tasks.evaluate.paper import format_table

    print("\n=== vlmpipe evaluate ===")
    for name, r in result["benchmarks"].items():
        shown = "  ".join(f"{k} {v:.3f}" for k, v in r["metrics"].items() if isinstance(v, float))
        print(f"  {name:<14} {r['items']:>6} items  {shown}")
    print("\nbeside the TinyGPT-V paper's Table 2 (accuracy %; the paper's scripts score more leniently):")
    print(format_table(result["comparison"]))
    print(f"\nMLflow          {result['tracking_uri']}  (run {result['mlflow_run_id']})")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "evaluate", help="official benchmarks (GQA, VSR, IconQA, VizWiz, HM, ...) on a checkpoint"
    )
    p.add_argument("checkpoint", help="a stage's checkpoint folder")
    p.add_argument(
        "--benchmarks",
        required=True,
        help="comma-separated names (gqa, vsr, iconqa, vizwiz, hateful_memes, vqav2, okvqa, scienceqa_img, "
        "coco_caption, mme, refcoco, refcocop, refcocog) or 'all'",
    )
    p.add_argument(
        "--data-root",
        required=True,
        help="folder with each release in a sub-folder named after its benchmark (refcoco* share refcoco/)",
    )
    p.add_argument(
        "--pipeline", help="the pipeline spec that trained the checkpoint (default: its run folder's record)"
    )
    p.add_argument("--max-items", type=int, default=None, help="the first N items of each benchmark")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    add_home_option(p)
    p.set_defaults(func=cmd_evaluate, environment=True)
