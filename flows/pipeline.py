"""The pipeline flow: ingest every source, run the stages in order (each a flow run of its own that
starts from the previous stage's checkpoint), evaluate, register the model.

Flows only decide order and placement and pass small JSON values (spec path, stage name, run name,
checkpoint path, MLflow run ids); the work lives in tasks/. With a Prefect server configured, each
stage and the evaluation run as flow runs of their deployments on work pools (flows/placement.py);
without one they run in this process. Everything a run writes goes under
`<home>/runs/<pipeline>/<run name>/`, so no stage overwrites another's output and no run overwrites
another run's.
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
    log_dataset_input,
    log_failure,
    log_json_artifact,
    run_tags,
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


def _parameter(name: str) -> Any:
    from prefect.runtime import flow_run

    return (flow_run.parameters or {}).get(name)


def _stage_flow_run_name() -> str:
    run = _parameter("run_name") or Path(str(_parameter("pipeline_spec") or "pipeline")).stem
    return f"{run}/{_parameter('stage')}"


def _evaluate_flow_run_name() -> str:
    run = _parameter("run_name") or Path(str(_parameter("pipeline_spec") or "pipeline")).stem
    return f"{run}/evaluate"


def _pipeline_flow_run_name() -> str:
    return _parameter("run_name") or Path(str(_parameter("pipeline_spec") or "pipeline")).stem


def _data_dirs(rp: ResolvedPipeline, home: Path) -> dict[str, str]:
    from tasks.state import source_dir

    return {name: str(source_dir(name, home)) for name in rp.sources}


def _parent(parent_run_id: str | None, tracking_uri: str | None) -> dict[str, str] | None:
    from tasks.tracking import default_tracking_uri

    if parent_run_id is None:
        return None
    return {"tracking_uri": tracking_uri or default_tracking_uri(), "run_id": parent_run_id}


def _link_prefect_and_mlflow(run: Tracker, what: str) -> None:
    """The Prefect flow run's URL on the MLflow run (tags), and the MLflow run's URL as a Prefect
    link artifact of the flow run (a markdown note naming the store when MLflow has no UI URL)."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact
    from prefect.runtime import flow_run

    url = run.ui_url()
    key = f"mlflow-{what}".lower().replace("_", "-")
    try:
        if url:
            create_link_artifact(link=url, link_text=f"MLflow run {run.run_id}", key=key)
        else:
            create_markdown_artifact(
                markdown=f"MLflow run `{run.run_id}` in store `{run.tracking_uri}`", key=key
            )
    except Exception as exc:  # noqa: BLE001 (a record the API could not take must not fail the step)
        get_run_logger().warning(f"the MLflow link of {what} was not recorded in Prefect: {exc}")
    if flow_run.id:
        run.set_tags({"prefect.flow_run_id": flow_run.id, "prefect.flow_run_name": flow_run.name or ""})
        url = flow_run_url(flow_run.id)
        if url:
            run.set_tags({"prefect.flow_run_url": url})


def flow_run_url(flow_run_id: str) -> str | None:
    """The flow run's page in the Prefect UI (the address the engine logs as "View at"); None on a
    server without a UI (the local API of `vlmpipe run`)."""
    import os

    from prefect.settings import PREFECT_UI_URL

    if os.environ.get("VLMPIPE_LOCAL_PREFECT_API"):  # the command's own API serves no UI
        return None
    base = PREFECT_UI_URL.value()
    return f"{str(base).rstrip('/')}/runs/flow-run/{flow_run_id}" if base else None


def _stage_inputs(run: Tracker, rp: ResolvedPipeline, stage: Any, data_dirs: dict[str, str]) -> None:
    """Every data set the stage reads as a dataset input of its run: an ingested source split by its
    manifest (the digest covers every shard), an annotation file by its path, size and mtime."""
    from tasks.ingest import load_manifest

    for ds in stage.mixture.datasets:
        if ds.source is not None:
            manifest = load_manifest(data_dirs[ds.source])
            log_dataset_input(
                run,
                name=f"{ds.source}:{ds.split or 'train'}",
                path=Path(data_dirs[ds.source]) / "manifest.json",
                digest=manifest["digest"],
                context="training",
            )
        elif ds.annotations is not None:
            log_dataset_input(run, name=ds.name, path=ds.annotations, digest=None, context="training")


def stage_folder(home: Path, pipeline: str, run_name: str, stage: str) -> Path:
    return home / "runs" / pipeline / run_name / "stages" / stage


@flow(name="train-stage", flow_run_name=_stage_flow_run_name, validate_parameters=False)
def train_stage_flow(
    pipeline_spec: str,
    stage: str,
    run_name: str | None = None,
    home: str | None = None,
    init_checkpoint: str | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> dict[str, Any]:
    """One training stage of a pipeline, as its own flow run.

    The pipeline passes every argument; by hand, `pipeline_spec` and `stage` are enough: the stage then
    runs in a new run folder (or in run `run_name`), from the checkpoint of the stage before it in
    that run (or `init_checkpoint`; the first stage starts from the model's own weights), with its
    MLflow run at the top of the pipeline's experiment (or under `parent_run_id`). Returns the
    checkpoint path and the stage's MLflow run id; the same is written to the stage folder.
    """
    from flows.placement import clear_failure, record_failure
    from tasks.state import RunError, claim_run, hold_folder, vlmpipe_home
    from tasks.train.stage import finished_stage, train_stage, write_stage_result

    logger = get_run_logger()
    rp = load_pipeline(pipeline_spec)
    names = [s.name for s in rp.stages]
    if stage not in names:
        raise RunError(f"{rp.path}: no stage {stage!r}; its stages: {', '.join(names)}")
    index = names.index(stage)
    spec, spec_path = rp.stages[index], rp.stage_paths[index]
    home_path = vlmpipe_home(home)
    if run_name is None:  # started by hand: a run folder of its own
        folder = claim_run(home_path, rp.spec.name, None)
        run_name = folder.name
        folder.release()
        _rename_flow_run(f"{run_name}/{stage}")
    output_dir = stage_folder(home_path, rp.spec.name, run_name, stage)
    with hold_folder(output_dir, f"stage {stage} of run {run_name}"):
        clear_failure(output_dir)
        try:
            return _train_stage(
                rp, index, spec, spec_path, home_path, run_name, output_dir, init_checkpoint,
                _parent(parent_run_id, tracking_uri), tracking_uri, logger,
                finished_stage, train_stage, write_stage_result,
            )  # fmt: skip
        except BaseException as exc:
            record_failure(output_dir, exc)
            raise


def _train_stage(
    rp, index, spec, spec_path, home, run_name, output_dir, init_checkpoint, parent, tracking_uri, logger,
    finished_stage, train_stage, write_stage_result,
) -> dict[str, Any]:  # fmt: skip
    from tasks.state import RunError

    done = finished_stage(output_dir)
    if done is not None:  # a resumed run or a retry: this stage finished before, and its checkpoint verifies
        logger.info(f"stage {spec.name}: finished before (MLflow run {done.get('mlflow_run_id')}); kept")
        return {**done, "skipped": True}
    if init_checkpoint is None and index > 0:
        before = rp.stages[index - 1].name
        previous = finished_stage(output_dir.parent / before)
        if previous is None:
            raise RunError(
                f"stage {spec.name} starts from stage {before}'s checkpoint, and run {run_name} has none: "
                f"pass init_checkpoint, or the run_name of a run where {before} finished"
            )
        init_checkpoint = previous["checkpoint"]
    data_dirs = _data_dirs(rp, home)
    check_ingested_splits(rp, data_dirs, stages=[index])
    seed = spec.seed
    tags = {
        **run_tags(entry="flows/pipeline.py:train_stage_flow"),
        "vlmpipe.pipeline": rp.spec.name,
        "vlmpipe.run": run_name,
        "vlmpipe.step": "stage",
        "vlmpipe.stage": spec.name,
        "vlmpipe.seed": seed,
    }
    with tracked_run(
        rp.spec.tracking.experiment,
        f"{rp.spec.name}/{spec.name}/seed{seed}",
        parent=parent,
        tracking_uri=tracking_uri,
        tags=tags,
    ) as run:
        _link_prefect_and_mlflow(run, f"stage-{spec.name}")
        run.log_params(spec.model_dump(mode="json"), prefix="stage.")
        run.log_artifact(spec_path, "spec")
        _stage_inputs(run, rp, spec, data_dirs)
        with system_metrics(run):
            summary = train_stage(
                spec,
                rp.spec.model,
                data_dirs=data_dirs,
                output_dir=str(output_dir),
                init_checkpoint=init_checkpoint,
                tracker=run,
                log=logger.info,
            )
        run.log_dict(summary, "summary.json")
        _stage_plots(run, summary)
    result = {**summary, "stage": spec.name, "mlflow_run_id": run.run_id}
    write_stage_result(output_dir, result)
    return result


def _stage_plots(run: Tracker, summary: dict[str, Any]) -> None:
    from tasks import plots

    history = run.client.get_metric_history(run.run_id, "loss")
    if history:
        run.log_figure(
            plots.curves({"loss": [(m.step, m.value) for m in history]}, "step", "loss"), "plots/loss.png"
        )
    if summary.get("mixture"):
        run.log_figure(plots.mixture_shares(summary["mixture"]), "plots/mixture_shares.png")


@flow(name="evaluate", flow_run_name=_evaluate_flow_run_name, validate_parameters=False)
def evaluate_flow(
    pipeline_spec: str,
    checkpoint: str,
    run_name: str | None = None,
    home: str | None = None,
    parent_run_id: str | None = None,
    tracking_uri: str | None = None,
) -> dict:
    """The pipeline spec's evaluation of `checkpoint`, as its own flow run; returns the metrics and
    the evaluation's MLflow run id (also written to `<run folder>/evaluation/result.json`)."""
    from flows.placement import clear_failure, record_failure
    from tasks.state import vlmpipe_home

    home_path = vlmpipe_home(home)
    rp = load_pipeline(pipeline_spec)
    folder = home_path / "runs" / rp.spec.name / (run_name or "evaluations") / "evaluation"
    folder.mkdir(parents=True, exist_ok=True)
    clear_failure(folder)
    try:
        result = _evaluate(
            rp, checkpoint, home_path, run_name, _parent(parent_run_id, tracking_uri), tracking_uri
        )
    except BaseException as exc:
        record_failure(folder, exc)
        raise
    tmp = folder / "result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(folder / "result.json")
    return result


def _evaluate(rp, checkpoint, home, run_name, parent, tracking_uri) -> dict:  # noqa: ANN001
    from tasks import plots
    from tasks.evaluate.benchmarks import evaluate_checkpoint
    from tasks.evaluate.shapes import confusion as shapes_confusion
    from tasks.ingest import load_manifest

    logger = get_run_logger()
    ev = rp.spec.evaluation
    last = rp.stages[-1]
    template = last.template if last.template != "image_text" else "human_assistant"
    data_dirs = _data_dirs(rp, home)
    tags = {
        **run_tags(entry="flows/pipeline.py:evaluate_flow"),
        "vlmpipe.pipeline": rp.spec.name,
        "vlmpipe.run": run_name or "",
        "vlmpipe.step": "evaluate",
        "vlmpipe.seed": ev.seed,
    }
    with tracked_run(
        rp.spec.tracking.experiment,
        f"{rp.spec.name}/evaluate/seed{ev.seed}",
        parent=parent,
        tracking_uri=tracking_uri,
        tags=tags,
    ) as run:
        _link_prefect_and_mlflow(run, "evaluate")
        run.log_params({**ev.model_dump(mode="json"), "checkpoint": checkpoint, "template": template})
        manifest = load_manifest(data_dirs[ev.source])
        log_dataset_input(
            run,
            name=f"{ev.source}:{ev.split}",
            path=Path(data_dirs[ev.source]) / "manifest.json",
            digest=manifest["digest"],
            context="evaluation",
        )
        metrics: dict[str, float] = {}
        for split in [ev.split, *ev.extra_splits]:
            logger.info(
                f"evaluating on split {split}" + (" (reported, not gated)" if split != ev.split else "")
            )
            with system_metrics(run):
                scores, table = evaluate_checkpoint(
                    checkpoint,
                    rp.spec.model,
                    benchmark=ev.benchmark,
                    data_dir=data_dirs[ev.source],
                    split=split,
                    tasks=list(ev.tasks),
                    max_images=ev.max_images,
                    batch_size=ev.batch_size,
                    seed=ev.seed,
                    template=template,
                    end_sym=last.end_sym,
                    log=logger.info,
                )
            prefix = "" if split == ev.split else f"{split}."
            metrics.update({f"{prefix}{k}": v for k, v in scores.items()})
            run.log_table(table, f"{prefix}predictions.json")
            if ev.benchmark == "shapes_world" and "vqa" in ev.tasks:
                run.log_dict(shapes_confusion(table), f"{prefix}confusion.json")
        if ev.official is not None:  # the official benchmarks, each a mapped task, into this same run
            from flows.evaluate import run_official
            from tasks.evaluate.paper import format_table

            official = run_official(
                checkpoint,
                list(ev.official.benchmarks),
                str(ev.official.data_root),
                {
                    "model": rp.spec.model.model_dump(mode="json"),
                    "template": template,
                    "end_sym": last.end_sym,
                },
                asks={n: a.model_dump(exclude_none=True) for n, a in ev.official.benchmarks.items()},
                batch_size=ev.official.batch_size,
                tracking=run.handle(),
            )
            for name, result in official["benchmarks"].items():
                metrics.update(
                    {f"{name}.{k}": v for k, v in result["metrics"].items() if isinstance(v, int | float)}
                )
            run.log_table(official["comparison"], "paper_table2.json")
            run.log_text(format_table(official["comparison"]), "paper_table2.txt")
        run.log_metrics(metrics)
        run.log_figure(plots.scores({k: v for k, v in metrics.items() if "." not in k}), "plots/scores.png")
    return {"metrics": metrics, "mlflow_run_id": run.run_id}


def check_ingested_splits(
    rp: ResolvedPipeline, data_dirs: dict[str, str], stages: list[int] | None = None
) -> None:
    """Every split a stage (all, or those of `stages`) or the evaluation reads is in its source's
    manifest (a web source's splits are known only once it is ingested); SpecError naming the spec
    and field otherwise."""
    from data_specs.loader import SpecError
    from tasks.ingest import load_manifest

    def check(source: str, split: str, path: Path, field: str) -> None:
        try:
            splits = load_manifest(data_dirs[source]).get("splits") or {}
        except FileNotFoundError:
            raise SpecError(
                path,
                field,
                f"source {source} is not ingested in {data_dirs[source]}: run `vlmpipe ingest` first",
            ) from None
        if split not in splits:
            raise SpecError(
                path,
                field,
                f"source {source} has no {split!r} samples; it has {', '.join(sorted(splits)) or 'none'}",
            )

    for i, (stage, stage_path) in enumerate(zip(rp.stages, rp.stage_paths, strict=True)):
        if stages is not None and i not in stages:
            continue
        for j, ds in enumerate(stage.mixture.datasets):
            if ds.source is not None:
                check(ds.source, ds.split or "train", stage_path, f"mixture.datasets[{j}].split")
    if stages is None and rp.spec.evaluation is not None:
        check(rp.spec.evaluation.source, rp.spec.evaluation.split, rp.path, "evaluation.split")


def _rename_flow_run(name: str) -> None:
    """A scheduled or deployed pipeline run learns its run name only once it claims its folder."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id or flow_run.name == name:
        return
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name)
    except Exception:  # noqa: BLE001 (a cosmetic record)
        pass


@flow(
    name="vlmpipe-pipeline", flow_run_name=_pipeline_flow_run_name, validate_parameters=False, log_prints=True
)
def pipeline_flow(
    pipeline_spec: str, home: str | None = None, run_name: str | None = None, resume: bool = False
) -> dict[str, Any]:
    """Ingest -> stage 1..N (each from the last one's checkpoint) -> evaluate -> register.

    A new run gets a folder of its own (`run_name`, or a timestamped name made unique); with
    `resume` the existing run `run_name` continues: finished stages are kept, a stage's `resume/`
    state is picked up, and the same MLflow parent run goes on (nested runs a killed process left
    RUNNING end as KILLED). One process owns a run folder at a time. Stages and the evaluation run
    on work pools when a Prefect server with their deployments is configured (`placement:` in the
    pipeline spec), else in this process.
    """
    from flows.ingest import ingest_flow
    from flows.placement import PlacementError, missing_deployments, resolve_placement
    from flows.registry import register_model
    from tasks.state import claim_run, source_dir, vlmpipe_home
    from tasks.tracking import reopen_run

    logger = get_run_logger()
    rp = load_pipeline(pipeline_spec)
    spec = rp.spec
    home_path = vlmpipe_home(home)
    placement = resolve_placement(spec.placement, log=logger.info)
    if placement.mode == "deployments":
        wanted = [placement.deployment_of_stage(s.name) for s in rp.stages]
        if spec.evaluation is not None:
            wanted.append(placement.deployment_of_evaluation())
        missing = missing_deployments(wanted)
        if missing and spec.placement.mode == "deployments":
            raise PlacementError(
                f"{rp.path}: placement: the Prefect server has no deployment {', '.join(missing)}; "
                "deploy them with `prefect deploy --prefect-file infra/prefect.yaml --all`"
            )
        if missing:
            logger.info(
                f"the Prefect server has no deployment {', '.join(missing)}: stages run in this process"
            )
            placement = type(placement)(**{**placement.__dict__, "mode": "local"})
    folder = claim_run(home_path, spec.name, run_name, resume=resume)
    run_name, run_dir = folder.name, folder.path
    _rename_flow_run(run_name)
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
            tags={
                **run_tags(entry="flows/pipeline.py:pipeline_flow"),
                "vlmpipe.pipeline": spec.name,
                "vlmpipe.run": run_name,
                "vlmpipe.step": "pipeline",
                "vlmpipe.seed": spec.model.seed,
                "vlmpipe.placement": placement.mode,
            },
        )
        record_path.write_text(json.dumps(parent.handle()))
    _link_prefect_and_mlflow(parent, "pipeline")
    try:
        if record is None:
            parent.log_params(config["pipeline"])
        log_json_artifact(parent, config, "resolved_config.json")
        parent.log_artifact(rp.path, "specs")
        for p in [*rp.source_paths.values(), *rp.stage_paths]:
            parent.log_artifact(p, "specs")

        data_dirs: dict[str, str] = {}
        for name, path in rp.source_paths.items():
            data_dir = source_dir(name, home_path)
            with tracked_run("", f"ingest-{name}", parent=parent, tags={"vlmpipe.step": "ingest"}) as run:
                ingest_flow(str(path), str(data_dir), tracking=run.handle())
            data_dirs[name] = str(data_dir)
        check_ingested_splits(rp, data_dirs)  # before any stage: not after training has finished

        checkpoint: str | None = None
        stage_results = []
        for stage in rp.stages:
            result = _run_stage(rp, stage.name, placement, home_path, run_name, checkpoint, parent, logger)
            checkpoint = result["checkpoint"]
            stage_results.append(result)
            parent.log_metrics(
                {
                    f"{stage.name}.loss_start": result.get("loss_start", float("nan")),
                    f"{stage.name}.loss_end": result.get("loss_end", float("nan")),
                }
            )
        _pipeline_plots(parent, stage_results)

        metrics: dict[str, float] = {}
        if spec.evaluation is not None:
            metrics = _run_evaluation(rp, placement, home_path, run_name, checkpoint, parent, logger)[
                "metrics"
            ]
            parent.log_metrics(metrics)
        registration = None
        if spec.tracking.registered_model:
            registration = register_model(
                parent, rp, checkpoint=checkpoint, metrics=metrics, data_dirs=data_dirs, run_name=run_name
            )
            logger.info(registration["decision"])
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
        "experiment_id": parent.client.get_run(parent.run_id).info.experiment_id,
        "experiment_url": parent.experiment_ui_url(),
        "run_url": parent.ui_url(),
        "placement": placement.mode,
        "registered_model": spec.tracking.registered_model,
        "model_version": registration["version"] if registration else None,
        "aliases": registration["aliases"] if registration else [],
        "stages": [
            {k: r.get(k) for k in ("stage", "loss_start", "loss_end", "checkpoint", "mlflow_run_id")}
            for r in stage_results
        ],
        "metrics": metrics,
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    folder.release()
    return summary


def _run_stage(rp, stage, placement, home, run_name, checkpoint, parent, logger) -> dict[str, Any]:  # noqa: ANN001
    """One stage in this process, or on its pool; its result either way (from the stage folder)."""
    from flows.placement import PlacementError, run_placed
    from tasks.train.stage import finished_stage

    parameters = {
        "pipeline_spec": str(rp.path),
        "stage": stage,
        "run_name": run_name,
        "home": str(home),
        "init_checkpoint": checkpoint,
        "parent_run_id": parent.run_id,
        "tracking_uri": parent.tracking_uri,
    }
    if placement.mode == "local":
        return train_stage_flow(**parameters)
    output_dir = stage_folder(home, rp.spec.name, run_name, stage)
    run_placed(
        placement.deployment_of_stage(stage),
        parameters,
        flow_run_name=f"{run_name}/{stage}",
        what=f"stage {stage}",
        folder=output_dir,
        retries=placement.retries,
        retry_delay_s=placement.retry_delay_s,
        log=logger.info,
    )
    result = finished_stage(output_dir)
    if result is not None and result.get("loss_start") is not None:
        logger.info(f"stage {stage}: loss {result['loss_start']:.3f} -> {result['loss_end']:.3f}")
    if result is None:
        raise PlacementError(
            f"stage {stage} completed on its pool but left no verified checkpoint in {output_dir}"
        )
    return result


def _run_evaluation(rp, placement, home, run_name, checkpoint, parent, logger) -> dict[str, Any]:  # noqa: ANN001
    from flows.placement import run_placed

    parameters = {
        "pipeline_spec": str(rp.path),
        "checkpoint": checkpoint,
        "run_name": run_name,
        "home": str(home),
        "parent_run_id": parent.run_id,
        "tracking_uri": parent.tracking_uri,
    }
    if placement.mode == "local":
        return evaluate_flow(**parameters)
    folder = home / "runs" / rp.spec.name / run_name / "evaluation"
    run_placed(
        placement.deployment_of_evaluation(),
        parameters,
        flow_run_name=f"{run_name}/evaluate",
        what="evaluation",
        folder=folder,
        retries=placement.retries,
        retry_delay_s=placement.retry_delay_s,
        log=logger.info,
    )
    return json.loads((folder / "result.json").read_text())


def _pipeline_plots(parent: Tracker, stage_results: list[dict[str, Any]]) -> None:
    """Every stage's loss curve on one figure (steps counted across the stages)."""
    from tasks import plots

    curves = {}
    for result in stage_results:
        run_id = result.get("mlflow_run_id")
        if run_id:
            history = parent.client.get_metric_history(run_id, "loss")
            curves[result["stage"]] = [(m.step, m.value) for m in history]
    if any(curves.values()):
        parent.log_figure(plots.curves(curves, "step", "loss", chained=True), "plots/loss_by_stage.png")
