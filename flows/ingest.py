"""The ingest flow: one source spec -> validated shards + manifest, reported to Prefect and MLflow.

Reads like its steps: ingest (retried on I/O failures; a rerun resumes), publish the outcome table,
log to MLflow, optionally build the frozen-feature cache. `vlmpipe ingest SOURCE_SPEC` runs it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact

from data_specs.loader import SpecError
from data_specs.sources import load_source_spec
from tasks.ingest import LowSuccessRate, ingest_source, load_manifest
from tasks.ingest import report as ingest_report


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
    from tasks.ingest.features import build_feature_cache

    spec = load_source_spec(source_spec_path)
    return build_feature_cache(spec, output_dir, log=get_run_logger().info)


def _run_name() -> str:
    from prefect.runtime import flow_run

    return "ingest-" + Path(flow_run.parameters.get("source_spec_path", "source")).stem


@flow(name="ingest", flow_run_name=_run_name, validate_parameters=False)
def ingest_flow(source_spec_path: str, output_dir: str | None = None, tracking: dict | None = None) -> dict:
    """Ingest one source into `output_dir` (default: `<home>/data/<source>`, where pipelines read
    it); returns the small summary (shards, counts per outcome).

    A success rate below the spec's min_success_rate still publishes and logs the counts, then fails
    the flow with one line.
    """
    spec = load_source_spec(source_spec_path)  # a bad spec fails here, before any download
    if output_dir is None:
        from tasks.state import source_dir

        output_dir = str(source_dir(spec.name))
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
