"""The final model into MLflow's registry: an MLflow pyfunc (flows/served_model.py) logged under the
pipeline's parent run, a new version of the registered model with its lineage as tags, alias
`candidate` on it, and alias `champion` moved to it only when it beats the champion on the pipeline
spec's `tracking.champion_metric`. The decision is logged (parent-run tag, version tag, JSON)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from data_specs.pipelines import ResolvedPipeline
from tasks.tracking import Tracker, git_commit

SERVED_MODEL = Path(__file__).with_name("served_model.py")


def _spec_sha256(rp: ResolvedPipeline) -> str:
    from flows.pipeline import resolved_config

    return hashlib.sha256(json.dumps(resolved_config(rp), sort_keys=True).encode()).hexdigest()


def log_pyfunc(parent: Tracker, rp: ResolvedPipeline, checkpoint: str) -> Any:
    """Log the checkpoint as an MLflow model under the parent run; returns MLflow's ModelInfo."""
    import mlflow

    from flows.served_model import signature
    from model.checkpoint import read_manifest

    last = rp.stages[-1]
    config = {
        "model": rp.spec.model.model_dump(mode="json", exclude={"projection_init"}),
        "template": last.template if last.template != "image_text" else "human_assistant",
        "end_sym": last.end_sym,
        "image_size": read_manifest(checkpoint).get("metadata", {}).get("image_size"),
        "pipeline": rp.spec.name,
    }
    with (
        _global_tracking(parent.tracking_uri),
        mlflow.start_run(run_id=parent.run_id),
        warnings.catch_warnings(),
    ):
        # MLflow advises an input example, which would load and run the model while logging it
        warnings.simplefilter("ignore", UserWarning)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(SERVED_MODEL),
            artifacts={"checkpoint": str(checkpoint)},
            model_config=config,
            signature=signature(),
            pip_requirements=["vlmpipe"],  # the model code imports vlmpipe's packages
        )
    # leaving the block ended the parent run: the pipeline ends it itself, after registration
    parent.client.update_run(parent.run_id, status="RUNNING")
    return info


@contextlib.contextmanager
def _global_tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API and its registry resolve `models:/` URIs through the global tracking
    URI: point it at the pipeline's store for the block."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def register_model(
    parent: Tracker,
    rp: ResolvedPipeline,
    *,
    checkpoint: str,
    metrics: dict[str, float],
    data_dirs: dict[str, str],
    run_name: str,
) -> dict[str, Any]:
    """A new version with tags and aliases; returns {version, aliases, decision, model_uri}."""
    with _global_tracking(parent.tracking_uri):
        return _register(parent, rp, checkpoint, metrics, data_dirs, run_name)


def _register(parent, rp, checkpoint, metrics, data_dirs, run_name) -> dict[str, Any]:  # noqa: ANN001
    from mlflow.exceptions import MlflowException
    from prefect.runtime import flow_run

    from tasks.ingest import load_manifest

    name = rp.spec.tracking.registered_model
    client = parent.client
    info = log_pyfunc(parent, rp, checkpoint)
    try:
        client.create_registered_model(
            name,
            description="vlmpipe: an MLflow pyfunc model, image + prompt -> text "
            "(mlflow.pyfunc.load_model('models:/NAME@champion'); see flows/served_model.py).",
        )
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    commit, dirty = git_commit()
    tags = {
        "vlmpipe.pipeline": rp.spec.name,
        "vlmpipe.run": run_name,
        "vlmpipe.parent_run_id": parent.run_id,
        "vlmpipe.spec_sha256": _spec_sha256(rp),
        "vlmpipe.checkpoint": str(checkpoint),
        "mlflow.source.git.commit": commit or "unknown",
        "vlmpipe.git_dirty": str(dirty).lower(),
    }
    for source, folder in data_dirs.items():
        try:
            tags[f"vlmpipe.data.{source}"] = load_manifest(folder)["digest"]
        except (OSError, KeyError, ValueError):
            tags[f"vlmpipe.data.{source}"] = "unknown"
    if flow_run.id:
        tags["prefect.flow_run_id"] = flow_run.id
    for key, value in metrics.items():
        if value is not None and math.isfinite(float(value)):
            tags[f"metric.{key}"] = f"{float(value):.6g}"
    version = client.create_model_version(
        name,
        source=info.model_uri,
        run_id=parent.run_id,
        tags=tags,
        description=f"run {run_name}",
        run_link=parent.ui_url(),
        model_id=info.model_id,
    )
    number = int(version.version)
    client.set_registered_model_alias(name, "candidate", number)
    promote, decision = _champion_decision(client, rp, number, metrics)
    aliases = ["candidate"]
    if promote:
        client.set_registered_model_alias(name, "champion", number)
        aliases.append("champion")
    client.set_model_version_tag(name, str(number), "vlmpipe.champion_decision", decision)
    parent.set_tags({"vlmpipe.registered_version": number, "vlmpipe.champion_decision": decision})
    parent.log_dict(
        {"model": name, "version": number, "aliases": aliases, "decision": decision, "tags": tags},
        "registry/decision.json",
    )
    return {"version": number, "aliases": aliases, "decision": decision, "model_uri": info.model_uri}


def _champion_decision(
    client: Any, rp: ResolvedPipeline, number: int, metrics: dict[str, float]
) -> tuple[bool, str]:
    from mlflow.exceptions import MlflowException

    tracking = rp.spec.tracking
    name, metric = tracking.registered_model, tracking.champion_metric
    head = f"{name} version {number}: alias candidate"
    try:
        champion = client.get_model_version_by_alias(name, "champion")
    except MlflowException:
        champion = None
    if champion is None:
        return True, f"{head}; champion (the first version with that alias)"
    if metric is None:
        return False, f"{head}; champion stays at version {champion.version} (no tracking.champion_metric)"
    value = metrics.get(metric)
    if value is None or not math.isfinite(float(value)):
        return False, f"{head}; champion stays at version {champion.version} (this run has no {metric})"
    held = champion.tags.get(f"metric.{metric}")
    if held is None:
        return (
            True,
            f"{head}; champion moved from version {champion.version} (no {metric} recorded) ({metric} {value:.4f})",
        )
    better = float(value) > float(held) if tracking.champion_mode == "max" else float(value) < float(held)
    compare = f"{metric} {float(value):.4f} vs {float(held):.4f}"
    if better:
        return True, f"{head}; champion moved from version {champion.version} ({compare})"
    return False, f"{head}; champion stays at version {champion.version} ({compare}: not better)"
