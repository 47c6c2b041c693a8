"""`vlmpipe ingest SOURCE_SPEC [--output DIR] [--json]`: one source's ingest flow (flows/ingest.py)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.cli.common import add_home_option


def cmd_ingest(args: argparse.Namespace) -> int:
    """Run one source's ingest flow; print the summary (as JSON with --json). SpecError propagates
    (the CLI turns it into one line and exit status 2)."""
    from data_specs.sources import load_source_spec
    from tasks.state import source_dir, vlmpipe_home

    home = vlmpipe_home(getattr(args, "home", None))
    spec = load_source_spec(args.source_spec)  # a bad spec fails before Prefect is imported
    from flows.local_api import local_prefect_api
    from tasks.ingest import IngestError

    output = Path(args.output).resolve() if args.output else source_dir(spec.name, home)
    spec_path = str(Path(args.source_spec).resolve())
    try:
        with local_prefect_api(home):
            from flows.environment import console_without_tracebacks
            from flows.ingest import ingest_flow

            console_without_tracebacks()

            if getattr(args, "no_mlflow", False):
                result = ingest_flow(spec_path, str(output))
            else:
                from tasks.tracking import tracked_run

                with tracked_run(
                    "vlmpipe-ingest", f"ingest-{spec.name}", tags={"vlmpipe.step": "ingest"}
                ) as run:
                    result = ingest_flow(spec_path, str(output), tracking=run.handle())
    except IngestError as exc:
        print(f"vlmpipe: error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(
            f"{result['source']}: {result['samples']} of {result['urls']} images "
            f"({result['success_rate']:.1%}) in {result['shards']} shards -> {result['output_dir']}"
        )
        for message, n in result["errors"].items():
            print(f"  {n:>8}  {message}")
    return 0


def add_parsers(sub: Any) -> None:
    p = sub.add_parser(
        "ingest",
        help="download one source spec into validated webdataset shards",
        description="Download one source into validated shards with a manifest; a rerun "
        "resumes where a killed run stopped.",
    )
    p.add_argument("source_spec", help="source spec YAML (data_specs/sources/*.yaml)")
    p.add_argument("--output", help="output folder (default <home>/data/<source name>)")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the ingest to MLflow")
    add_home_option(p)
    p.set_defaults(func=cmd_ingest, environment=True)
