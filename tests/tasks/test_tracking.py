"""A failed step's MLflow run ends FAILED with its traceback as error.txt; an interrupted one KILLED."""

import pytest
from mlflow.tracking import MlflowClient

from tasks.stopping import Interrupted
from tasks.tracking import tracked_run


def test_failed_and_interrupted_runs_end_with_their_status_and_traceback(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(ValueError):
        with tracked_run("t", "fails", tracking_uri=uri) as failed:
            raise ValueError("bad data in shard 3")
    with pytest.raises(Interrupted):
        with tracked_run("t", "stopped", tracking_uri=uri) as stopped:
            raise Interrupted(15)
    client = MlflowClient(uri)
    assert client.get_run(failed.run_id).info.status == "FAILED"
    assert client.get_run(stopped.run_id).info.status == "KILLED"
    client.download_artifacts(failed.run_id, "error.txt", str(tmp_path))
    text = (tmp_path / "error.txt").read_text()
    assert "Traceback" in text and "bad data in shard 3" in text


def _start(uri: str, name: str, queue) -> None:  # noqa: ANN001
    from tasks.tracking import start_run

    try:
        tracker = start_run("race", name, tracking_uri=uri)
        tracker.finish()
        queue.put(("ok", tracker.run_id))
    except Exception as exc:  # noqa: BLE001 (reported to the test)
        queue.put(("error", repr(exc)))


def test_two_processes_on_a_fresh_store_both_get_their_run(tmp_path):
    import multiprocessing

    uri = f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}"
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    procs = [ctx.Process(target=_start, args=(uri, f"run-{i}", queue)) for i in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    outcomes = [queue.get(timeout=10) for _ in procs]
    assert [o[0] for o in outcomes] == ["ok"] * 3, outcomes
    client = MlflowClient(uri)
    runs = client.search_runs([client.get_experiment_by_name("race").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["run-0", "run-1", "run-2"]


def test_system_metrics_reach_the_run_while_a_block_runs(tmp_path):
    import time

    from tasks.tracking import system_metrics

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    with tracked_run("t", "busy", tracking_uri=uri) as run:
        with system_metrics(run, interval_s=0.5):
            deadline = time.monotonic() + 60  # a loaded machine samples late; the monitor must not stop
            history: list = []
            while time.monotonic() < deadline and len(history) < 2:
                sum(i * i for i in range(50_000))
                history = client.get_metric_history(run.run_id, "system/cpu_utilization_percentage")
        with system_metrics(run, interval_s=0):  # off: nothing more is logged
            pass
    assert len(history) >= 2, history
    metrics = client.get_run(run.run_id).data.metrics
    assert "system/system_memory_usage_megabytes" in metrics, sorted(metrics)
