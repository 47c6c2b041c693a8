"""The pipeline flow: ingest every source, run the stages in order (each a flow run of its own that
starts from the previous stage's checkpoint), evaluate, register the model.

Flows only decide order and pass small JSON values (paths, MLflow run handles); the work lives in
tasks/. Everything a run writes goes under `<home>/runs/<pipeline>/<run name>/`, so no stage
overwrites another's output and no run overwrites another run's.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from data_specs.pipelines import ResolvedPipeline, load_pipeline
from tasks.tracking import (
    Tracker,
    end_status,
    log_failure,
    log_json_artifact,
    start_run,
    system_metrics,
    tracked_run,
)


def resolved_config(rp: ResolvedPipeline) -> dict[str, Any]:
    """Every spec of the run, as validated (defaults filled in), in one JSON-able dict."""
    return {
        "pipeline": rp.spec.model_dump(mode="json"),
        "sources": {n: s.model_dump(mode="json") for n, s in rp.sources.items()},
        "stages": [s.model_dump(mode="json") for s in rp.stages],
    }


@flow(name="train-stage", flow_run_name="{stage_name}", validate_parameters=False)
def train_stage_flow(
    stage_name: str,
    pipeline_spec: str,
    init_checkpoint: str | None,
    data_dirs: dict[str, str],
    output_dir: str,
    tracking: dict[str, str],
) -> dict[str, Any]:
    """One training stage as its own flow run, called in-process by the pipeline flow (placing it on
    a work pool is not wired yet). Returns the checkpoint and the stage's MLflow run id."""
    from tasks.train.stage import finished_stage, train_stage, write_stage_result

    logger = get_run_logger()
    rp = load_pipeline(pipeline_spec)
    index = [s.name for s in rp.stages].index(stage_name)
    stage, stage_path = rp.stages[index], rp.stage_paths[index]
    done = finished_stage(output_dir)
    if done is not None:  # a resumed run: this stage finished before, and its checkpoint verifies
        logger.info(f"stage {stage_name}: finished before (MLflow run {done.get('mlflow_run_id')}); kept")
        return {**done, "skipped": True}
    with tracked_run(
        "",
        f"stage-{stage_name}",
        parent=tracking,
        tags={"vlmpipe.step": "stage", "vlmpipe.stage": stage_name},
    ) as run:
        run.log_params(stage.model_dump(mode="json"), prefix="stage.")
        run.log_artifact(stage_path, "spec")
        with system_metrics(run):
            summary = train_stage(
                stage,
                rp.spec.model,
                data_dirs=data_dirs,
                output_dir=output_dir,
                init_checkpoint=init_checkpoint,
                tracker=run,
                log=logger.info,
            )
        run.log_dict(summary, "summary.json")
    result = {**summary, "stage": stage_name, "mlflow_run_id": run.run_id}
    write_stage_result(output_dir, result)
    return result


@flow(name="evaluate", validate_parameters=False)
def evaluate_flow(
    pipeline_spec: str, checkpoint: str, data_dirs: dict[str, str], tracking: dict[str, str]
) -> dict:
    from tasks.evaluate.benchmarks import evaluate_checkpoint

    logger = get_run_logger()
    rp = load_pipeline(pipeline_spec)
    ev = rp.spec.evaluation
    last = rp.stages[-1]
    template = last.template if last.template != "image_text" else "human_assistant"
    with tracked_run("", "evaluate", parent=tracking, tags={"vlmpipe.step": "evaluate"}) as run:
        run.log_params({**ev.model_dump(mode="json"), "checkpoint": checkpoint, "template": template})
        metrics, table = evaluate_checkpoint(
            checkpoint,
            rp.spec.model,
            benchmark=ev.benchmark,
            data_dir=data_dirs[ev.source],
            split=ev.split,
            tasks=list(ev.tasks),
            max_images=ev.max_images,
            batch_size=ev.batch_size,
            seed=ev.seed,
            template=template,
            end_sym=last.end_sym,
            log=logger.info,
        )
        run.log_metrics(metrics)
        run.log_table(table, "predictions.json")
    return {"metrics": metrics, "mlflow_run_id": run.run_id}


def check_ingested_splits(rp: ResolvedPipeline, data_dirs: dict[str, str]) -> None:
    """Every split a stage or the evaluation reads is in its source's manifest (a web source's
    splits are known only once it is ingested); SpecError naming the spec and field otherwise."""
    from data_specs.loader import SpecError
    from tasks.ingest import load_manifest

    def check(source: str, split: str, path: Path, field: str) -> None:
        splits = load_manifest(data_dirs[source]).get("splits") or {}
        if split not in splits:
            raise SpecError(
                path,
                field,
                f"source {source} has no {split!r} samples; it has {', '.join(sorted(splits)) or 'none'}",
            )

    for stage, stage_path in zip(rp.stages, rp.stage_paths, strict=True):
        for j, ds in enumerate(stage.mixture.datasets):
            if ds.source is not None:
                check(ds.source, ds.split or "train", stage_path, f"mixture.datasets[{j}].split")
    if rp.spec.evaluation is not None:
        check(rp.spec.evaluation.source, rp.spec.evaluation.split, rp.path, "evaluation.split")


def register_model(parent: Tracker, checkpoint: str, name: str) -> int:
    """Log the final checkpoint under the parent run and register it as a new model version."""
    from mlflow.exceptions import MlflowException

    parent.log_artifact(checkpoint, "model")
    client = parent.client
    try:
        client.create_registered_model(
            name,
            description="vlmpipe: final stage checkpoint (trainable weights, "
            "tokenizer, config). Load with model.checkpoint.load_checkpoint.",
        )
    except MlflowException as exc:
        if "already exists" not in str(exc).lower() and "RESOURCE_ALREADY_EXISTS" not in str(exc):
            raise
    version = client.create_model_version(name, source=parent.artifact_uri("model"), run_id=parent.run_id)
    return int(version.version)


@flow(name="vlmpipe-pipeline", validate_parameters=False, log_prints=True)
def pipeline_flow(
    pipeline_spec: str, home: str, run_name: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Ingest -> stage 1..N (each from the last one's checkpoint) -> evaluate -> register.

    A new run gets a folder of its own (`run_name`, or a timestamped name made unique); with
    `resume` the existing run `run_name` continues: finished stages are kept, a stage's `resume/`
    state is picked up, and the same MLflow parent run goes on (nested runs a killed process left
    RUNNING end as KILLED). One process owns a run folder at a time.
    """
    from flows.ingest import ingest_flow
    from tasks.state import claim_run, source_dir
    from tasks.tracking import reopen_run

    logger = get_run_logger()
    rp = load_pipeline(pipeline_spec)
    spec = rp.spec
    folder = claim_run(home, spec.name, run_name, resume=resume)
    run_name, run_dir = folder.name, folder.path
    config = resolved_config(rp)
    (run_dir / "resolved_config.json").write_text(json.dumps(config, indent=2))
    record_path = run_dir / "mlflow_run.json"
    record = json.loads(record_path.read_text()) if resume and record_path.is_file() else None
    if record is not None:
        parent = reopen_run(record["tracking_uri"], record["run_id"])
        logger.info(f"resuming run {run_name} (MLflow run {parent.run_id})")
    else:
        parent = start_run(
            spec.tracking.experiment,
            run_name,
            tags={"vlmpipe.pipeline": spec.name, "vlmpipe.step": "pipeline"},
        )
        record_path.write_text(json.dumps(parent.handle()))
    try:
        if record is None:
            parent.log_params(config["pipeline"])
        log_json_artifact(parent, config, "resolved_config.json")
        parent.log_artifact(rp.path, "specs")
        for p in [*rp.source_paths.values(), *rp.stage_paths]:
            parent.log_artifact(p, "specs")

        data_dirs: dict[str, str] = {}
        for name, path in rp.source_paths.items():
            data_dir = source_dir(name, home)
            with tracked_run("", f"ingest-{name}", parent=parent, tags={"vlmpipe.step": "ingest"}) as run:
                ingest_flow(str(path), str(data_dir), tracking=run.handle())
            data_dirs[name] = str(data_dir)
        check_ingested_splits(rp, data_dirs)  # before any stage: not after training has finished

        checkpoint: str | None = None
        stage_results = []
        for stage in rp.stages:
            result = train_stage_flow(
                stage.name,
                str(rp.path),
                checkpoint,
                data_dirs,
                str(run_dir / "stages" / stage.name),
                parent.handle(),
            )
            checkpoint = result["checkpoint"]
            stage_results.append(result)
            parent.log_metrics(
                {
                    f"{stage.name}.loss_start": result.get("loss_start", float("nan")),
                    f"{stage.name}.loss_end": result.get("loss_end", float("nan")),
                }
            )

        metrics: dict[str, float] = {}
        if spec.evaluation is not None:
            metrics = evaluate_flow(str(rp.path), checkpoint, data_dirs, parent.handle())["metrics"]
            parent.log_metrics(metrics)
        version = None
        if spec.tracking.registered_model:
            version = register_model(parent, checkpoint, spec.tracking.registered_model)
            logger.info(f"registered {spec.tracking.registered_model} version {version}")
    except BaseException as exc:
        log_failure(parent, exc)
        parent.finish(end_status(exc))
        folder.release()
        raise
    parent.finish("FINISHED")
    summary = {
        "pipeline": spec.name,
        "run_name": run_name,
        "run_dir": str(run_dir),
        "checkpoint": checkpoint,
        "mlflow_run_id": parent.run_id,
        "tracking_uri": parent.tracking_uri,
        "experiment": spec.tracking.experiment,
        "registered_model": spec.tracking.registered_model,
        "model_version": version,
        "stages": [
            {k: r.get(k) for k in ("stage", "loss_start", "loss_end", "checkpoint", "mlflow_run_id")}
            for r in stage_results
        ],
        "metrics": metrics,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    folder.release()
    return summary
