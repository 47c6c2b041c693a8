"""The `vlmpipe` command: validate and preview specs, ingest a source, run a pipeline, run the demo.

Exit status: 0 success, 2 usage or spec error (one line on stderr naming file and field),
1 a run that failed (its traceback is in the Prefect and MLflow records; VLMPIPE_DEBUG=1 prints it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

PACKAGE_SPECS = Path(__file__).resolve().parent.parent / "data_specs"
DEMO_PIPELINE = PACKAGE_SPECS / "pipelines" / "shapes_demo.yaml"


def vlmpipe_home(explicit: str | None = None) -> Path:
    return Path(explicit or os.environ.get("VLMPIPE_HOME") or Path.cwd() / ".vlmpipe").resolve()


def configure_environment(home: Path) -> None:
    """Settings Prefect and MLflow read at import: call before importing either.

    Prefect runs on its local API (an ephemeral server on a SQLite file under <home>/prefect)
    unless PREFECT_API_URL points at a server; MLflow on <home>/mlflow/mlflow.db unless
    MLFLOW_TRACKING_URI is set.
    """
    os.environ["VLMPIPE_HOME"] = str(home)
    os.environ.setdefault("PREFECT_HOME", str(home / "prefect"))
    # Prefect's SQLite store cannot create its own folder: the server dies with "unable to open"
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    # the ephemeral server needs 15-30 s to start on 2 cores; Prefect's default gives up at 20 s
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LOG_PRINTS", "true")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("WANDB_MODE", "disabled")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _print_error(message: str) -> None:
    print(f"vlmpipe: error: {message}", file=sys.stderr)


# -- spec ----------------------------------------------------------------------------------------
def cmd_spec_validate(args: argparse.Namespace) -> int:
    from data_specs.loader import parse_spec, read_yaml
    from data_specs.pipelines import PipelineSpec, detect_kind, load_pipeline
    from data_specs.sources import SourceSpec
    from data_specs.stages import StageSpec

    for file in args.files:
        data = read_yaml(file)
        kind = detect_kind(data)
        if kind == "pipeline":
            parse_spec(PipelineSpec, data, file)
            rp = load_pipeline(file)
            detail = f"{len(rp.sources)} source(s), {len(rp.stages)} stage(s)"
        else:
            model = StageSpec if kind == "stage" else SourceSpec
            parse_spec(model, data, file)
            detail = ""
        print(f"ok  {file}  ({kind}{': ' + detail if detail else ''})")
    return 0


def cmd_spec_schema(args: argparse.Namespace) -> int:
    from data_specs.schema import write_schemas

    for path in write_schemas(Path(args.out)):
        print(path)
    return 0


def cmd_spec_preview(args: argparse.Namespace) -> int:
    from tasks.preview import preview_command

    return preview_command(args)


# -- runs ----------------------------------------------------------------------------------------
def _run_pipeline(spec: Path, home: Path, run_name: str | None) -> dict:
    from data_specs.pipelines import load_pipeline

    load_pipeline(spec)  # fail fast, before Prefect starts, on a bad spec
    from flows.pipeline import pipeline_flow

    return pipeline_flow(str(spec.resolve()), str(home), run_name)


def _report(summary: dict, home: Path) -> None:
    uri = summary["tracking_uri"]
    print("\n=== vlmpipe run complete ===")
    print(f"pipeline        {summary['pipeline']}  (run {summary['run_name']})")
    for st in summary["stages"]:
        if st.get("loss_start") is not None:
            print(f"  {st['stage']:<24} loss {st['loss_start']:.3f} -> {st['loss_end']:.3f}")
    metrics = summary["metrics"]
    for name in ("vqa", "refer"):
        if f"{name}_accuracy" in metrics:
            print(
                f"  {name + '_accuracy':<24} {metrics[name + '_accuracy']:.3f}  (chance {metrics[name + '_chance']:.3f})"
            )
    if "caption_bleu4" in metrics:
        print(
            f"  {'caption_bleu4':<24} {metrics['caption_bleu4']:.3f}  (chance {metrics['caption_bleu4_chance']:.3f})"
        )
    print(f"checkpoint      {summary['checkpoint']}")
    print(f"run folder      {summary['run_dir']}")
    print(f"MLflow store    {uri}  (experiment {summary['experiment']}, run {summary['mlflow_run_id']})")
    if summary.get("model_version"):
        print(f"registered      {summary['registered_model']} version {summary['model_version']}")
    if uri.startswith("sqlite:"):
        print(f"open the UI     .venv/bin/mlflow ui --backend-store-uri {uri} --port 5000")
    print(
        f"Prefect records PREFECT_HOME={os.environ.get('PREFECT_HOME', home / 'prefect')} "
        ".venv/bin/prefect server start   (then http://127.0.0.1:4200)"
    )


def cmd_run(args: argparse.Namespace) -> int:
    home = vlmpipe_home(args.home)
    summary = _run_pipeline(Path(args.pipeline_spec), home, args.run_name)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _report(summary, home)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    args.pipeline_spec = str(DEMO_PIPELINE)
    return cmd_run(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmpipe", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    spec = sub.add_parser("spec", help="validate, preview and describe spec files")
    spec_sub = spec.add_subparsers(dest="spec_command", required=True, metavar="SUBCOMMAND")
    p = spec_sub.add_parser("validate", help="check spec files (pipeline, stage or source); exit 2 if bad")
    p.add_argument("files", nargs="+")
    p.set_defaults(func=cmd_spec_validate)
    p = spec_sub.add_parser("schema", help="write JSON Schemas of the spec files (for editors)")
    p.add_argument("--out", default=str(PACKAGE_SPECS / "schema"))
    p.set_defaults(func=cmd_spec_schema)
    p = spec_sub.add_parser("preview", help="realized mixture shares, packing efficiency, rendered samples")
    p.add_argument("stage_spec")
    p.add_argument("--pipeline", help="pipeline spec that ingests the stage's sources (default: the demo's)")
    p.add_argument("--samples", type=int, default=5000, help="samples to draw (default 5000)")
    p.add_argument("--show", type=int, default=3, help="rendered samples to print")
    p.add_argument("--json", action="store_true")
    p.add_argument("--home")
    p.set_defaults(func=cmd_spec_preview)

    for name, helptext in (
        ("run", "run a pipeline spec on Prefect's local API"),
        ("demo", "run the whole pipeline on the embedded shapes-world default"),
    ):
        p = sub.add_parser(name, help=helptext)
        if name == "run":
            p.add_argument("pipeline_spec")
        p.add_argument("--home", help="state folder (default ./.vlmpipe or $VLMPIPE_HOME)")
        p.add_argument("--run-name")
        p.add_argument("--json", action="store_true", help="print the run summary as JSON")
        p.set_defaults(func=cmd_run if name == "run" else cmd_demo)

    try:
        from flows.ingest import add_ingest_parser
    except ImportError:  # pragma: no cover - the ingest flow ships with the package
        add_ingest_parser = None
    if add_ingest_parser is not None:
        add_ingest_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Prefect reads its settings at import, and building the parser imports the ingest flow
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--home")
    configure_environment(vlmpipe_home(pre.parse_known_args(argv)[0].home))
    from data_specs.loader import SpecError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SpecError as exc:
        _print_error(str(exc))
        return 2
    except KeyboardInterrupt:
        _print_error("interrupted")
        return 130
    except Exception as exc:  # one line for people; the full record is in Prefect/MLflow
        if os.environ.get("VLMPIPE_DEBUG"):
            raise
        _print_error(f"{type(exc).__name__}: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
