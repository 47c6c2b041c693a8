"""`vlmpipe run PIPELINE_SPEC` and `vlmpipe demo`: a whole pipeline on Prefect's local API (or the
server PREFECT_API_URL names), ending with the figures and where to look."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from flows.cli.common import DEMO_PIPELINE, add_home_option


def _run_pipeline(spec: Path, home: Path, run_name: str | None, resume: bool) -> dict:
    from data_specs.pipelines import load_pipeline
    from flows.local_api import local_prefect_api
    from tasks.state import claim_run

    rp = load_pipeline(spec)  # fail fast, before Prefect starts, on a bad spec
    if resume:  # a run to resume must exist and be free before Prefect starts
        claim_run(home, rp.spec.name, run_name, resume=True).release()
    with local_prefect_api(home):  # in a session of its own: a terminal's Ctrl-C reaches us alone
        from flows.environment import console_without_tracebacks
        from flows.pipeline import pipeline_flow

        console_without_tracebacks()

        return pipeline_flow(str(spec.resolve()), str(home), run_name, resume)


def report(summary: dict, home: Path) -> None:
    uri = summary["tracking_uri"]
    print("\n=== vlmpipe run complete ===")
    print(f"pipeline        {summary['pipeline']}  (run {summary['run_name']})")
    for st in summary["stages"]:
        if st.get("loss_start") is not None:
            print(f"  {st['stage']:<24} loss {st['loss_start']:.3f} -> {st['loss_end']:.3f}")
    metrics = summary["metrics"]
    splits = [""] + sorted({k.split(".", 1)[0] + "." for k in metrics if "." in k})
    for prefix in splits:
        if prefix:
            print(f"  on split {prefix[:-1]} (reported, not gated):")
        for name in ("vqa", "refer"):
            key = f"{prefix}{name}_accuracy"
            if key not in metrics:
                continue
            line = f"  {name + '_accuracy':<24} {metrics[key]:.3f}  (chance {metrics[f'{prefix}{name}_chance']:.3f}"
            if f"{prefix}{name}_majority" in metrics:
                line += f", majority {metrics[f'{prefix}{name}_majority']:.3f}"
            line += ")"
            if not prefix and f"{name}_gate" in metrics:
                met = "met" if metrics.get(f"{name}_gate_met") else "NOT met"
                line += f"  gate {metrics[f'{name}_gate']:.3f}: {met}"
            print(line)
        if f"{prefix}caption_bleu4" in metrics:
            print(
                f"  {'caption_bleu4':<24} {metrics[f'{prefix}caption_bleu4']:.3f}  "
                f"(chance {metrics[f'{prefix}caption_bleu4_chance']:.3f})"
            )
        if f"{prefix}text_accuracy" in metrics:
            print(
                f"  {'text_accuracy':<24} {metrics[f'{prefix}text_accuracy']:.3f}  (no image: the scene told in words)"
            )
    print(f"checkpoint      {summary['checkpoint']}")
    print(f"run folder      {summary['run_dir']}")
    print(f"MLflow store    {uri}  (experiment {summary['experiment']}, run {summary['mlflow_run_id']})")
    if summary.get("model_version"):
        aliases = ", ".join(summary.get("aliases") or [])
        print(
            f"registered      {summary['registered_model']} version {summary['model_version']}"
            + (f"  (aliases: {aliases})" if aliases else "")
        )
    if summary.get("experiment_url"):
        print(f"open the UI     {summary['experiment_url']}")
    elif uri.startswith("sqlite:"):
        print(
            f"open the UI     .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000   "
            f"(then http://127.0.0.1:5000/#/experiments/{summary.get('experiment_id', '')}/runs)"
        )
    if summary.get("placement") == "deployments":
        print(
            f"Prefect UI      {os.environ.get('PREFECT_UI_URL') or os.environ.get('PREFECT_API_URL', '').removesuffix('/api')}"
        )
    else:
        print(
            f"Prefect records PREFECT_HOME={os.environ.get('PREFECT_HOME', home / 'prefect')} "
            ".venv/bin/prefect server start   (then http://127.0.0.1:4200)"
        )


def use_servers(home: Path) -> None:
    """With no PREFECT_API_URL set, the servers `vlmpipe servers up` started on this state folder
    (when they answer) are the ones to run on; said in one line."""
    if os.environ.get("PREFECT_API_URL"):
        return
    from flows.servers import endpoints

    found = endpoints(home)
    if found is None:
        return
    for key, value in found.items():
        if key != "MLFLOW_TRACKING_URI" or not os.environ.get(key):
            os.environ[key] = value
    print(
        f"on the servers of `vlmpipe servers up`: Prefect {found['PREFECT_UI_URL']}, MLflow {os.environ['MLFLOW_TRACKING_URI']}"
    )


def cmd_run(args: argparse.Namespace) -> int:
    from flows.environment import VERBOSE_ENV
    from tasks.state import vlmpipe_home

    home = vlmpipe_home(args.home)
    if args.verbose:
        os.environ[VERBOSE_ENV] = "1"
    use_servers(home)
    resume = args.resume is not None
    spec = Path(args.pipeline_spec)
    if getattr(args, "smoke", False):
        from data_specs.pipelines import load_pipeline
        from data_specs.smoke import write_smoke_specs

        rp = load_pipeline(spec, check_files=False)  # the real data need not be on this machine
        spec = write_smoke_specs(
            rp, home / "smoke" / rp.spec.name, steps=args.smoke_steps, preset=args.smoke_preset
        )
        print(f"smoke override of {rp.path.name}: specs written to {spec.parent}")
    summary = _run_pipeline(spec, home, args.resume if resume else args.run_name, resume)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        report(summary, home)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.pipeline_spec = str(DEMO_PIPELINE)
    return cmd_run(args)


def add_parsers(sub: Any) -> None:
    for name, helptext in (
        ("run", "run a pipeline spec on Prefect's local API"),
        ("demo", "run the whole pipeline on the embedded shapes-world default"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("pipeline_spec")
            p.add_argument(
                "--smoke",
                action="store_true",
                help="run the pipeline's smoke override: its stages at toy size on the shapes world, random "
                "weights of the preset's real sizes (data_specs/smoke.py); the data files need not exist",
            )
            p.add_argument(
                "--smoke-preset", default=None, help="with --smoke: another preset (tiny runs on a CPU)"
            )
            p.add_argument(
                "--smoke-steps", type=int, default=2, help="with --smoke: steps per stage (default 2)"
            )
        add_home_option(p)
        names = p.add_mutually_exclusive_group()
        names.add_argument(
            "--run-name", help="name of the new run (default: <pipeline>-<date>-<time>); refused if it exists"
        )
        names.add_argument(
            "--resume",
            metavar="RUN",
            help="continue run RUN (or 'last'): finished stages are kept, a stopped stage resumes "
            "from its last saved step, the same MLflow run goes on",
        )
        p.add_argument("--json", action="store_true", help="print the run summary as JSON")
        p.add_argument(
            "--verbose",
            action="store_true",
            help="show Prefect's engine lines too (flow runs created, finished)",
        )
        p.set_defaults(func=cmd_run if name == "run" else cmd_demo, environment=True)
