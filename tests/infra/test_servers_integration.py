"""vlmpipe as its users run it: `vlmpipe servers up` (a real Prefect server, a process worker on each of
the `cpu` and `gpu` pools, a real MLflow tracking server, all on loopback), `prefect deploy` from
infra/prefect.yaml, schedules that create runs, the mini demo pipeline started as a deployment and
run by the workers (each stage a flow run of train-stage/gpu), the MLflow records and registry it
leaves, both UIs in a real headless Chromium, and `vlmpipe servers down` leaving no process.

The tests run in file order on one set of servers; screenshots go to .test-artifacts/ui/."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from tests.pipelines import ROOT, STAGES, env_for, label, mini_pipeline, processes_of

pytestmark = pytest.mark.slow
SCREENSHOTS = ROOT / ".test-artifacts" / "ui"
VLMPIPE = [sys.executable, "-m", "flows.cli"]
PREFECT = str(Path(sys.executable).with_name("prefect"))
DEPLOYMENTS = {
    "vlmpipe-pipeline/cpu",
    "vlmpipe-pipeline/shapes-demo-nightly",
    "train-stage/gpu",
    "train-stage/cpu",
    "evaluate/gpu",
    "evaluate/cpu",
    "ingest/cpu",
    "ingest/shapes-world-weekly",
}


def api(stack, method: str, path: str, body=None):
    """One call to the Prefect server's REST API; a 503 (SQLite busy under load) is retried, as
    Prefect's own client does."""
    for attempt in range(10):
        request = urllib.request.Request(
            f"{stack.prefect_api}{path}",
            method=method,
            data=None if body is None else json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:  # noqa: S310 (loopback)
                text = response.read()
        except urllib.error.HTTPError as exc:
            if exc.code != 503 or attempt == 9:
                raise
            time.sleep(1 + attempt)
            continue
        return json.loads(text) if text else None


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    folder = tmp_path_factory.mktemp("servers")
    home = folder / "home"
    env = env_for(home)
    env.update(
        PREFECT_WORKER_QUERY_SECONDS="2",  # workers poll every 2 s (10 s by default)
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    up = subprocess.run(
        [*VLMPIPE, "servers", "up", "--home", str(home), "--prefect-port", "0", "--mlflow-port", "0"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    try:
        assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
        exported = subprocess.run(
            [*VLMPIPE, "servers", "env", "--home", str(home)],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert exported.returncode == 0, exported.stdout + exported.stderr
        for line in exported.stdout.splitlines():
            key, _, value = line.removeprefix("export ").partition("=")
            env[key] = value
        yield SimpleNamespace(
            home=home,
            folder=folder,
            env=env,
            prefect_api=env["PREFECT_API_URL"],
            prefect_ui=env["PREFECT_UI_URL"],
            mlflow=env["MLFLOW_TRACKING_URI"],
            results={},
        )
    finally:  # whatever failed: nothing may be left running
        subprocess.run(
            [*VLMPIPE, "servers", "down", "--home", str(home)], env=env, capture_output=True, timeout=300
        )


def test_servers_up_starts_each_service_and_status_says_so(stack):
    proc = subprocess.run(
        [*VLMPIPE, "servers", "status", "--home", str(stack.home), "--json"],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert set(report["services"]) == {"prefect", "mlflow", "worker-cpu", "worker-gpu"}
    assert all(s["answering"] for s in report["services"].values())
    pools = {p["name"]: p for p in api(stack, "POST", "/work_pools/filter", {})}
    assert pools["gpu"]["type"] == "process" and pools["gpu"]["concurrency_limit"] == 1
    assert pools["cpu"]["concurrency_limit"] is None


def test_prefect_deploy_from_infra_and_the_schedules_create_runs(stack):
    proc = subprocess.run(
        [PREFECT, "--no-prompt", "deploy", "--prefect-file", "infra/prefect.yaml", "--all"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    flows = {f["id"]: f["name"] for f in api(stack, "POST", "/flows/filter", {})}
    deployments = {
        f"{flows[d['flow_id']]}/{d['name']}": d for d in api(stack, "POST", "/deployments/filter", {})
    }
    assert DEPLOYMENTS <= set(deployments)
    stack.results["deployments"] = {name: d["id"] for name, d in deployments.items()}
    for name in DEPLOYMENTS:
        pool = deployments[name]["work_pool_name"]
        assert pool == ("gpu" if name.endswith("/gpu") else "cpu"), (name, pool)

    # the scheduler service (SQLAlchemy < 2.1: see infra/constraints.txt) creates the coming runs
    scheduled = {"vlmpipe-pipeline/shapes-demo-nightly": (None, 2), "ingest/shapes-world-weekly": (6, 3)}
    ids = {deployments[n]["id"]: n for n in scheduled}
    deadline = time.monotonic() + 120
    runs: list[dict] = []
    while time.monotonic() < deadline:
        runs = api(
            stack,
            "POST",
            "/flow_runs/filter",
            {"flow_runs": {"deployment_id": {"any_": list(ids)}, "state": {"type": {"any_": ["SCHEDULED"]}}}},
        )
        if {r["deployment_id"] for r in runs} == set(ids):
            break
        time.sleep(2)
    assert {ids[r["deployment_id"]] for r in runs} == set(scheduled), runs
    for run in runs:
        weekday, hour = scheduled[ids[run["deployment_id"]]]
        when = datetime.fromisoformat(run["expected_start_time"].replace("Z", "+00:00"))
        assert (when.hour, when.minute) == (hour, 0) and when.tzinfo is not None
        if weekday is not None:
            assert when.weekday() == weekday  # Sunday
    # no scheduled run may fire while the other tests use the workers
    for deployment_id in ids:
        api(stack, "PATCH", f"/deployments/{deployment_id}", {"paused": True})
    for run in runs:  # pausing removes a deployment's scheduled runs; any left are deleted here
        try:
            api(stack, "DELETE", f"/flow_runs/{run['id']}")
        except urllib.error.HTTPError as exc:
            assert exc.code == 404, exc


def test_the_pipeline_deployment_runs_every_stage_on_the_gpu_pool_in_order(stack):
    deployments = stack.results.get("deployments")
    assert deployments, "the deploy test did not run"
    spec = mini_pipeline(stack.folder)
    data = yaml.safe_load(spec.read_text())
    data["placement"] = {"mode": "deployments", "retry_delay_s": 1}
    spec.write_text(yaml.safe_dump(data))
    started = api(
        stack,
        "POST",
        f"/deployments/{deployments['vlmpipe-pipeline/cpu']}/create_flow_run",
        {"parameters": {"pipeline_spec": str(spec), "run_name": "it"}, "name": "it"},
    )
    deadline = time.monotonic() + 1500
    while True:
        pipeline = api(stack, "GET", f"/flow_runs/{started['id']}")
        if pipeline["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        assert time.monotonic() < deadline, f"pipeline still {pipeline['state']['type']}"
        time.sleep(3)
    logs = ""
    if pipeline["state"]["type"] != "COMPLETED":
        logs = "\n".join(
            line.read_text()[-3000:]
            for line in sorted((stack.home / "servers" / "logs").glob("worker-*.log"))
        )
    assert pipeline["state"]["type"] == "COMPLETED", pipeline["state"]["message"] + logs
    assert pipeline["work_pool_name"] == "cpu" and pipeline["name"] == "it"
    stack.results["pipeline"] = pipeline

    runs = api(stack, "POST", "/flow_runs/filter", {})
    stage_runs = sorted(
        (r for r in runs if r["deployment_id"] == deployments["train-stage/gpu"]),
        key=lambda r: r["start_time"],
    )
    assert [r["name"] for r in stage_runs] == [f"it/{s}" for s in STAGES]
    for run in stage_runs:
        assert run["state"]["type"] == "COMPLETED" and run["work_pool_name"] == "gpu"
        parent_task = api(stack, "GET", f"/task_runs/{run['parent_task_run_id']}")
        assert parent_task["flow_run_id"] == pipeline["id"]  # a child of the pipeline's flow run
        assert run["parameters"]["run_name"] == "it" and run["parameters"]["stage"] in STAGES
    for before, after in zip(stage_runs, stage_runs[1:], strict=False):
        assert before["end_time"] <= after["start_time"], (before["name"], after["name"])
    evaluation = [r for r in runs if r["deployment_id"] == deployments["evaluate/gpu"]]
    assert [r["name"] for r in evaluation] == ["it/evaluate"]
    assert evaluation[0]["start_time"] >= stage_runs[-1]["end_time"]
    stack.results["stage_runs"] = {r["parameters"]["stage"]: r for r in stage_runs}
    # the MLflow run's URL on each stage's flow run, as a link artifact (Prefect stores it as markdown)
    artifacts = api(stack, "POST", "/artifacts/filter", {})
    linked = {
        a["flow_run_id"]
        for a in artifacts
        if (a.get("key") or "").startswith("mlflow-stage-")
        and f"]({stack.mlflow}/#/experiments/" in (a.get("data") or "")
    }
    assert {r["id"] for r in stage_runs} <= linked, artifacts


def test_mlflow_holds_the_linked_runs_and_the_champion_answers_an_image(stack):
    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from tasks.shapes_world import in_memory_records

    stage_runs = stack.results.get("stage_runs")
    assert stage_runs, "the pipeline test did not run"
    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("mini")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    runs = client.search_runs([experiment.experiment_id])
    parent = [r for r in runs if r.info.run_name == "it"][0]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["prefect.flow_run_id"] == stack.results["pipeline"]["id"]
    nested = {label(r): r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert set(nested) == {"ingest-shapes_world", "evaluate"} | {f"stage-{s}" for s in STAGES}
    for stage in STAGES:
        run = nested[f"stage-{stage}"]
        assert run.info.status == "FINISHED"
        flow_run = stage_runs[stage]
        assert run.data.tags["prefect.flow_run_id"] == flow_run["id"]
        assert run.data.tags["prefect.flow_run_url"] == f"{stack.prefect_ui}/runs/flow-run/{flow_run['id']}"
        assert run.data.tags.get("mlflow.source.git.commit")
        assert [d.dataset.name for d in run.inputs.dataset_inputs]  # the shards it read
        assert "plots/loss.png" in {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    evaluation = nested["evaluate"]
    assert [d.dataset.name for d in evaluation.inputs.dataset_inputs] == ["shapes_world:heldout"]
    assert "plots/scores.png" in {a.path for a in client.list_artifacts(evaluation.info.run_id, "plots")}

    version = client.get_model_version_by_alias("mini-model", "champion")
    assert sorted(version.aliases) == ["candidate", "champion"] and int(version.version) == 1
    assert version.run_id == parent.info.run_id
    assert version.tags["prefect.flow_run_id"] == stack.results["pipeline"]["id"]
    mlflow.set_tracking_uri(stack.mlflow)
    model = mlflow.pyfunc.load_model("models:/mini-model@champion")
    image = in_memory_records(1, 0, seed=11)[0]["image"]
    png = io.BytesIO()
    image.save(png, format="PNG")
    answers = model.predict(
        pd.DataFrame({"image": [png.getvalue()], "prompt": ["describe the picture"], "task": ["caption"]}),
        params={"max_new_tokens": 8},
    )
    assert len(answers) == 1 and isinstance(answers[0], str)
    stack.results["mlflow"] = {
        "experiment": experiment.experiment_id,
        "stage4": nested["stage-stage4_multitask"],
    }


def test_the_uis_show_the_stage_runs_a_loss_chart_and_the_flow_runs(stack):
    from tests.infra.browser import Browser

    recorded = stack.results.get("mlflow")
    assert recorded, "the MLflow test did not run"
    browser = Browser()
    try:
        # MLflow: the experiment opens on its training runs; the pipeline's run expands to its stages
        browser.open(f"{stack.mlflow}/#/experiments/{recorded['experiment']}/runs")
        browser.wait_for("Training runs", "matching runs", "\nit\n")
        text = browser.click_until(  # the pipeline's run opens to its nested runs
            "document.querySelector('button[data-component-id*=runnamecellrenderer]')",
            *[f"mini-demo/{s}/seed" for s in STAGES],
            "mini-demo/evaluate/seed",
        )
        assert "shapes_world:train" in text  # the dataset column
        browser.screenshot(SCREENSHOTS / "mlflow-runs.png")
        # a stage's loss chart
        stage4 = recorded["stage4"]
        browser.open(
            f"{stack.mlflow}/#/experiments/{recorded['experiment']}/runs/{stage4.info.run_id}/model-metrics"
        )
        browser.wait_for("mini-demo/stage4_multitask/seed42 (loss)")
        assert browser.js("document.querySelectorAll('.js-plotly-plot').length") >= 1
        browser.screenshot(SCREENSHOTS / "mlflow-loss-chart.png")
        # Prefect: the pipeline's flow run, and its stage runs among the flow runs
        pipeline = stack.results["pipeline"]
        browser.open(f"{stack.prefect_ui}/runs/flow-run/{pipeline['id']}")
        browser.wait_for("it", "Completed", "Subflow Runs")
        browser.screenshot(SCREENSHOTS / "prefect-pipeline-run.png")
        browser.click_until(
            "Array.from(document.querySelectorAll('[role=tab], button, a'))"
            ".find(e => e.innerText.trim() === 'Subflow Runs')",
            "it/evaluate",
            *[f"it/{s}" for s in STAGES],
        )
        browser.screenshot(SCREENSHOTS / "prefect-stage-runs.png")
        browser.open(f"{stack.prefect_ui}/runs")
        browser.wait_for("it/evaluate", *[f"it/{s}" for s in STAGES])
        browser.screenshot(SCREENSHOTS / "prefect-flow-runs.png")
    finally:
        browser.close()


def run_deployment_by_hand(stack, deployment: str, **parameters) -> dict:
    """`prefect deployment run` as a user types it, then the flow run's final record."""
    argv = [PREFECT, "deployment", "run", deployment]
    for key, value in parameters.items():
        argv += ["-p", f"{key}={value}"]
    proc = subprocess.run(argv, cwd=ROOT, env=stack.env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    flow_run_id = next(line.split()[-1] for line in proc.stdout.splitlines() if "UUID" in line)
    deadline = time.monotonic() + 600
    while True:
        run = api(stack, "GET", f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            return run
        assert time.monotonic() < deadline, run["state"]
        time.sleep(2)


def test_a_stage_deployment_started_by_hand_needs_only_the_spec_and_the_stage(stack):
    from mlflow.tracking import MlflowClient

    spec = stack.folder / "pipeline.yaml"  # the mini demo of the pipeline test; its source is ingested
    run = run_deployment_by_hand(stack, "train-stage/cpu", pipeline_spec=spec, stage="shapes_towers")
    assert run["state"]["type"] == "COMPLETED", run["state"]["message"]
    assert run["work_pool_name"] == "cpu" and run["name"].endswith("/shapes_towers")
    run_name = run["name"].split("/")[0]
    assert (stack.home / "runs" / "mini-demo" / run_name / "stages" / "shapes_towers" / "checkpoint").is_dir()
    client = MlflowClient(stack.mlflow)
    experiment = client.get_experiment_by_name("mini")
    mlflow_runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.`prefect.flow_run_id` = '{run['id']}'"
    )
    assert [r.info.run_name for r in mlflow_runs] == ["mini-demo/shapes_towers/seed42"]
    assert "mlflow.parentRunId" not in mlflow_runs[0].data.tags  # no pipeline above it
    # a later stage started alone has no checkpoint to start from: one clear line, not a traceback
    run = run_deployment_by_hand(stack, "train-stage/cpu", pipeline_spec=spec, stage="stage1_warmup")
    assert run["state"]["type"] == "FAILED"
    assert "starts from stage shapes_base's checkpoint" in run["state"]["message"]


def short_pipeline(stack, name: str, stage_edit=None) -> Path:
    """stage1_warmup and stage4_multitask of the mini demo, on the pools, retried after 1 s."""
    folder = stack.folder / name
    folder.mkdir()
    spec = mini_pipeline(folder)
    data = yaml.safe_load(spec.read_text())
    data["stages"] = ["stage1_warmup.yaml", "stage4_multitask.yaml"]
    data["placement"] = {"mode": "deployments", "retries": 1, "retry_delay_s": 1}
    data["evaluation"] = None
    spec.write_text(yaml.safe_dump(data))
    if stage_edit is not None:
        for stage in ("stage1_warmup", "stage4_multitask"):
            path = folder / f"{stage}.yaml"
            path.write_text(yaml.safe_dump(stage_edit(stage, yaml.safe_load(path.read_text()))))
    return spec


def flow_run_processes(flow_run_id: str) -> list[int]:
    marker = f"PREFECT__FLOW_RUN_ID={flow_run_id}\0".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(int(environ.parent.name))
        except OSError:
            continue
    return found


def test_a_stage_killed_on_its_worker_is_retried_and_resumes_from_its_checkpoint(stack):
    import os
    import signal

    def longer(stage, data):
        if stage == "stage4_multitask":
            data["schedule"]["steps"], data["checkpoint_every"] = 40, 2
        return data

    spec = short_pipeline(stack, "retry", longer)
    proc = subprocess.Popen(
        [*VLMPIPE, "run", str(spec), "--home", str(stack.home), "--run-name", "retry", "--json"],
        cwd=ROOT,
        env=stack.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    resume = stack.home / "runs" / "mini-demo" / "retry" / "stages" / "stage4_multitask" / "resume"
    try:
        deadline = time.monotonic() + 600
        while not resume.is_dir():  # the stage saved a resumable step: now its machine "dies"
            assert proc.poll() is None, proc.stdout.read()[-3000:]
            assert time.monotonic() < deadline, "stage4_multitask never saved a resumable step"
            time.sleep(0.5)
        target = api(
            stack, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["retry/stage4_multitask"]}}}
        )
        pids = flow_run_processes(target[0]["id"])
        assert pids, "no process runs the stage's flow run"
        for pid in pids:
            os.kill(pid, signal.SIGKILL)
        output, _ = proc.communicate(timeout=900)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, output[-4000:]
    assert "ended Crashed" in output and "retrying in 1 s (attempt 2 of 2)" in output, output[-4000:]
    runs = sorted(
        api(
            stack, "POST", "/flow_runs/filter", {"flow_runs": {"name": {"any_": ["retry/stage4_multitask"]}}}
        ),
        key=lambda r: r["start_time"],
    )
    assert [r["state"]["type"] for r in runs] == ["CRASHED", "COMPLETED"]  # the retry is a new flow run
    assert runs[0]["deployment_id"] == runs[1]["deployment_id"]
    worker_log = (stack.home / "servers" / "logs" / "worker-gpu.log").read_text()
    assert "stage stage4_multitask: resuming at step" in worker_log
    summary = json.loads(output[output.index("{\n") :])
    assert [s["stage"] for s in summary["stages"]] == ["stage1_warmup", "stage4_multitask"]


def test_a_stage_that_fails_for_its_data_fails_the_pipeline_with_its_cause_and_no_retry(stack):
    bad = stack.folder / "gqa.json"
    bad.write_text('{"q1": {"question": "what?", "answer": "yes"}}')  # no imageId: valid spec, bad data

    def broken(stage, data):
        if stage == "stage1_warmup":
            data["mixture"]["datasets"] = [
                {"name": "g", "format": "gqa", "annotations": str(bad), "task": "vqa", "weight": 1}
            ]
            data["template"] = "human_assistant"
        return data

    spec = short_pipeline(stack, "broken", broken)
    proc = subprocess.run(
        [*VLMPIPE, "run", str(spec), "--home", str(stack.home), "--run-name", "broken"],
        cwd=ROOT,
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]  # the log lines above it are the run's own
    assert error.startswith(
        "vlmpipe: error: PlacementError: stage stage1_warmup (train-stage/gpu on pool gpu, "
    )
    assert "flow run broken/stage1_warmup) ended Failed: FormatError: " in error
    assert str(bad) in error and "imageId" in error, error
    names = [
        r["name"] for r in api(stack, "POST", "/flow_runs/filter", {}) if r["name"].startswith("broken/")
    ]
    assert names == ["broken/stage1_warmup"]  # a data error is not retried


def test_servers_down_stops_everything(stack):
    proc = subprocess.run(
        [*VLMPIPE, "servers", "down", "--home", str(stack.home)],
        env=stack.env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("stopped") == 4, proc.stdout
    deadline = time.monotonic() + 30
    while processes_of(stack.home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(stack.home) == []
    status = subprocess.run(
        [*VLMPIPE, "servers", "status", "--home", str(stack.home)],
        env=stack.env,
        capture_output=True,
        text=True,
    )
    assert status.returncode == 1 and "no servers started" in status.stdout
