"""The ingest flow: one source spec -> validated shards + manifest, reported to Prefect and MLflow.

Reads like its steps: ingest (retried on I/O failures; a rerun resumes), publish the outcome table,
log to MLflow, optionally build the frozen-feature cache. `vlmpipe ingest SOURCE_SPEC` runs it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from data_specs.loader import SpecError
from data_specs.sources import load_source_spec
from tasks import ingest_report
from tasks.ingest import IngestError, LowSuccessRate, ingest_source, load_manifest


def _worth_retrying(task: Any, task_run: Any, state: Any) -> bool:
    """Retry network and disk trouble (the rerun resumes); never a bad spec or a policy failure."""
    exc = state.result(raise_on_failure=False)
    return not isinstance(exc, SpecError | LowSuccessRate)


@task(name="ingest-source", retries=2, retry_delay_seconds=10, retry_condition_fn=_worth_retrying)
def ingest_task(source_spec_path: str, output_dir: str) -> dict:
    logger = get_run_logger()
    manifest = ingest_source(load_source_spec(source_spec_path), output_dir, log=logger.info)
    return ingest_report.summary(manifest, output_dir)


@task(name="publish-outcomes")
def publish_task(output_dir: str) -> None:
    manifest = load_manifest(output_dir)
    t = manifest["totals"]
    create_table_artifact(
        table=ingest_report.table_rows(manifest),
        key=f"ingest-{manifest['source']}".replace("_", "-").lower(),
        description=(
            f"**{manifest['source']}**: {t['success']} of {t['urls']} images ({t['success_rate']:.1%}) in "
            f"{len(manifest['shards'])} shards, {t['bytes'] / 1e6:.1f} MB. Manifest: "
            f"`{Path(output_dir) / 'manifest.json'}`"
        ),
    )


@task(name="log-ingest-to-mlflow", retries=2, retry_delay_seconds=5)
def mlflow_task(output_dir: str, tracking: dict[str, str]) -> None:
    from tasks.tracking import Tracker

    manifest = load_manifest(output_dir)
    ingest_report.log_to_mlflow(Tracker.from_handle(tracking), manifest, Path(output_dir) / "manifest.json")


@task(name="feature-cache")
def feature_cache_task(source_spec_path: str, output_dir: str) -> dict:
    from tasks.ingest_features import build_feature_cache

    spec = load_source_spec(source_spec_path)
    return build_feature_cache(spec, output_dir, log=get_run_logger().info)


def _run_name() -> str:
    from prefect.runtime import flow_run

    return "ingest-" + Path(flow_run.parameters.get("source_spec_path", "source")).stem


@flow(name="ingest", flow_run_name=_run_name, validate_parameters=False)
def ingest_flow(source_spec_path: str, output_dir: str, tracking: dict | None = None) -> dict:
    """Ingest one source into `output_dir`; returns the small summary (shards, counts per outcome).

    A success rate below the spec's min_success_rate still publishes and logs the counts, then fails
    the flow with one line.
    """
    spec = load_source_spec(source_spec_path)  # a bad spec fails here, before any download
    failure: LowSuccessRate | None = None
    try:
        result = ingest_task(source_spec_path, output_dir)
    except LowSuccessRate as exc:
        failure, result = exc, ingest_report.summary(load_manifest(output_dir), output_dir)
    publish_task(output_dir)
    if tracking:
        mlflow_task(output_dir, tracking)
    if failure is not None:
        raise failure
    if spec.feature_cache is not None and spec.feature_cache.enabled:
        result["feature_cache"] = feature_cache_task(source_spec_path, output_dir)
    return result


# ---- command line: `vlmpipe ingest SOURCE_SPEC [--output DIR] [--json]` ----------------------------


def default_output(spec_name: str, home: str | None = None) -> Path:
    base = Path(home or os.environ.get("VLMPIPE_HOME") or Path.cwd() / ".vlmpipe")
    return (base / "data" / spec_name).resolve()


def cli_ingest(args: argparse.Namespace) -> int:
    """Run one source's ingest flow; print the summary (as JSON with --json). SpecError propagates
    (the CLI turns it into one line and exit status 2)."""
    spec = load_source_spec(args.source_spec)
    output = (
        Path(args.output).resolve() if args.output else default_output(spec.name, getattr(args, "home", None))
    )
    spec_path = str(Path(args.source_spec).resolve())
    try:
        if getattr(args, "no_mlflow", False):
            result = ingest_flow(spec_path, str(output))
        else:
            from tasks.tracking import tracked_run

            with tracked_run("vlmpipe-ingest", f"ingest-{spec.name}", tags={"vlmpipe.step": "ingest"}) as run:
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


def add_ingest_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register `vlmpipe ingest` on the CLI's subparsers."""
    p = subparsers.add_parser(
        "ingest",
        help="download one source spec into validated webdataset shards",
        description="Download one source into validated shards with a manifest; a rerun "
        "resumes where a killed run stopped.",
    )
    p.add_argument("source_spec", help="source spec YAML (data_specs/sources/*.yaml)")
    p.add_argument("--output", help="output folder (default <home>/data/<source name>)")
    p.add_argument("--json", action="store_true", help="print the manifest summary as JSON")
    p.add_argument("--no-mlflow", action="store_true", help="do not log the ingest to MLflow")
    p.add_argument("--home", help="state folder (default ./.vlmpipe or $VLMPIPE_HOME)")
    p.set_defaults(func=cli_ingest)
    return p
