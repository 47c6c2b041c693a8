"""Official benchmarks on a checkpoint: `vlmpipe evaluate CHECKPOINT --benchmarks ... --data-root DIR`,
and a pipeline's `evaluation.official` step. Each benchmark is a mapped Prefect task; its metrics
(`<benchmark>.<metric>`) and a table of every prediction go to one MLflow run, with the paper's
Table 2 beside our scores (printed and logged)."""

from __future__ import annotations

import json
import threading
from typing import Any

from prefect import flow, get_run_logger, task, unmapped

from flows.evaluate_inputs import EvaluateError, check_data, model_config  # noqa: F401 (re-exported)

_MODELS: dict[str, Any] = {}
_MODEL_LOCK = threading.Lock()  # one model per process, built once; one generation at a time


def _built(checkpoint: str, config: dict[str, Any]) -> Any:

    from model.build import build_model, model_choice
    from model.checkpoint import read_manifest

    key = f"{checkpoint}:{json.dumps(config['model'], sort_keys=True)}"
    if key not in _MODELS:
        spec = config["model"]
        choice = model_choice(spec)
        size = read_manifest(checkpoint).get("metadata", {}).get("image_size")
        _MODELS[key], _ = build_model(
            choice, image_size=size, init_checkpoint=checkpoint, log=lambda _m: None
        )
    return _MODELS[key]


@task(name="benchmark", task_run_name="{name}")
def benchmark_task(
    name: str,
    checkpoint: str,
    config: dict[str, Any],
    data_root: str,
    asks: dict[str, dict[str, Any]],
    batch_size: int,
    tracking: dict[str, str] | None,
) -> dict[str, Any]:
    from tasks.evaluate.official.roots import read_items
    from tasks.evaluate.official_run import run_benchmark
    from tasks.tracking import Tracker, log_dataset_input

    logger = get_run_logger()
    ask = asks.get(name) or {}
    items = read_items(name, data_root, ask.get("split"), ask.get("max_items"))
    with _MODEL_LOCK:
        built = _built(checkpoint, config)
        metrics, table = run_benchmark(
            built,
            name,
            items,
            prompt=ask.get("prompt"),
            task=ask.get("task"),
            max_new_tokens=ask.get("max_new_tokens"),
            template=config["template"],
            end_sym=config["end_sym"],
            batch_size=batch_size,
            log=logger.info,
        )
    if tracking:
        from tasks.evaluate.official.roots import benchmark_root

        run = Tracker.from_handle(tracking)
        run.log_metrics({f"{name}.{k}": v for k, v in metrics.items() if isinstance(v, int | float)})
        run.log_table(table, f"benchmarks/{name}.json")
        log_dataset_input(
            run, name=name, path=benchmark_root(data_root, name), digest=None, context="evaluation"
        )
    shown = ", ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
    logger.info(f"{name}: {len(items)} items; {shown}")
    return {"name": name, "items": len(items), "metrics": metrics}


def run_official(
    checkpoint: str,
    benchmarks: list[str],
    data_root: str,
    config: dict[str, Any],
    *,
    asks: dict[str, dict[str, Any]] | None = None,
    batch_size: int = 16,
    tracking: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The benchmarks as mapped tasks of the current flow run; results and the Table 2 comparison."""
    from tasks.evaluate.official import BENCHMARKS
    from tasks.evaluate.paper import comparison

    asks = asks or {}
    check_data(benchmarks, data_root, asks)
    futures = benchmark_task.map(
        benchmarks,
        unmapped(checkpoint),
        unmapped(config),
        unmapped(data_root),
        unmapped(asks),
        unmapped(batch_size),
        unmapped(tracking),
    )
    results = {r["name"]: r for r in (f.result() for f in futures)}
    ours = {
        name: r["metrics"].get(BENCHMARKS[name].paper_metric)
        for name, r in results.items()
        if BENCHMARKS[name].paper_metric
    }
    return {"benchmarks": results, "comparison": comparison(ours)}


@flow(name="evaluate-benchmarks", flow_run_name="evaluate-benchmarks", validate_parameters=False)
def benchmarks_flow(
    checkpoint: str,
    benchmarks: list[str],
    data_root: str,
    pipeline_spec: str | None = None,
    max_items: int | None = None,
    batch_size: int = 16,
    experiment: str = "vlmpipe-evaluate",
) -> dict[str, Any]:
    """`vlmpipe evaluate`: the official benchmarks on a checkpoint, in an MLflow run of their own."""
    from tasks.evaluate.paper import format_table
    from tasks.tracking import log_json_artifact, run_tags, tracked_run

    config = model_config(checkpoint, pipeline_spec)
    asks = {name: {"max_items": max_items} for name in benchmarks}
    if pipeline_spec is not None:  # the spec's prompts and task identifiers, when it names them
        from data_specs.pipelines import load_pipeline

        ev = load_pipeline(pipeline_spec, check_files=False).spec.evaluation
        if ev is not None and ev.official is not None:
            for name, ask in ev.official.benchmarks.items():
                if name in asks:
                    asks[name] = {
                        **ask.model_dump(exclude_none=True),
                        **({"max_items": max_items} if max_items else {}),
                    }
    tags = {
        **run_tags(entry="flows/evaluate.py:benchmarks_flow"),
        "vlmpipe.step": "evaluate",
        "vlmpipe.checkpoint": checkpoint,
    }
    with tracked_run(experiment, "evaluate-benchmarks", tags=tags) as run:
        run.log_params(
            {"checkpoint": checkpoint, "benchmarks": ",".join(benchmarks), "data_root": data_root, **config}
        )
        result = run_official(
            checkpoint, benchmarks, data_root, config, asks=asks, batch_size=batch_size, tracking=run.handle()
        )
        run.log_table(result["comparison"], "paper_table2.json")
        run.log_text(format_table(result["comparison"]), "paper_table2.txt")
        log_json_artifact(run, result["benchmarks"], "benchmarks.json")
    return {**result, "mlflow_run_id": run.run_id, "tracking_uri": run.tracking_uri}
