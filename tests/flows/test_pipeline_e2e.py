"""The whole pipeline on a miniature of the embedded default: real img2dataset from a loopback
server, real shards, real Prefect local API, real MLflow SQLite store; then the records of both
are read back and checked."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipelines import ROOT, STAGES, env_for, label, mini_pipeline, processes_of

pytestmark = pytest.mark.slow


PREFECT_QUERY = """
import asyncio, json
from prefect.client.orchestration import get_client
async def main():
    async with get_client() as client:
        runs = await client.read_flow_runs()
        flows = {f.id: f.name for f in await client.read_flows()}
        print(json.dumps([{"flow": flows[r.flow_id], "name": r.name, "state": r.state_type.value,
                           "start": r.start_time.isoformat() if r.start_time else None,
                           "end": r.end_time.isoformat() if r.end_time else None} for r in runs]))
asyncio.run(main())
"""


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    home = folder / "home"
    spec = mini_pipeline(folder)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(spec), "--home", str(home), "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_for(home),
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads(proc.stdout[proc.stdout.index("{\n") :])
    return home, summary


def test_summary_has_every_stage_and_the_evaluation(pipeline_run):
    home, summary = pipeline_run
    assert [s["stage"] for s in summary["stages"]] == STAGES
    for stage in summary["stages"]:
        assert Path(stage["checkpoint"], "weights.safetensors").is_file()
        assert stage["checkpoint"].startswith(str(home / "runs" / "mini-demo"))
    assert len({s["checkpoint"] for s in summary["stages"]}) == len(STAGES)  # nothing overwritten
    for name in ("vqa_accuracy", "vqa_chance", "refer_accuracy", "refer_chance", "caption_bleu4"):
        assert 0.0 <= summary["metrics"][name] <= 1.0
    assert summary["model_version"] == 1
    assert (Path(summary["run_dir"]) / "resolved_config.json").is_file()


def test_mlflow_holds_parent_nested_runs_metrics_and_registered_model(pipeline_run):
    from mlflow.tracking import MlflowClient

    home, summary = pipeline_run
    client = MlflowClient(summary["tracking_uri"])
    assert summary["tracking_uri"] == f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    exp = client.get_experiment_by_name("mini")
    runs = client.search_runs([exp.experiment_id])
    parent = [r for r in runs if r.info.run_id == summary["mlflow_run_id"]][0]
    assert parent.info.status == "FINISHED"
    nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    names = sorted(label(r) for r in nested)
    assert names == sorted(["ingest-shapes_world", "evaluate"] + [f"stage-{s}" for s in STAGES])
    for run in nested:
        assert run.info.status == "FINISHED" and run.data.metrics, run.info.run_name
    stage4 = [r for r in nested if label(r) == "stage-stage4_multitask"][0]
    history = client.get_metric_history(stage4.info.run_id, "loss")
    assert [m.step for m in history] == [2, 4]
    assert {"lr", "tokens_per_s", "data_wait_share", "peak_memory_mb"} <= set(stage4.data.metrics)
    assert stage4.data.params["stage.name"] == "stage4_multitask"
    ingest = [r for r in nested if r.info.run_name == "ingest-shapes_world"][0]
    assert ingest.data.metrics["success"] == 96 + 12 + 12  # train, heldout, heldout_novel
    evaluate = [r for r in nested if label(r) == "evaluate"][0]
    assert {"vqa_accuracy", "vqa_chance", "refer_accuracy", "refer_chance", "caption_bleu4"} <= set(
        evaluate.data.metrics
    )
    assert parent.data.params["model.preset"] == "tiny-merge"
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"resolved_config.json", "specs", "plots", "registry"} <= artifacts
    versions = client.search_model_versions("name='mini-model'")
    assert [v.run_id for v in versions] == [parent.info.run_id]


def test_the_registered_version_is_a_pyfunc_with_lineage_and_aliases(pipeline_run):
    """The first version gets both aliases; it loads as an MLflow model and answers an image."""
    import io

    import mlflow
    import pandas as pd
    from mlflow.tracking import MlflowClient

    from tasks.shapes_world import in_memory_records

    home, summary = pipeline_run
    assert summary["aliases"] == ["candidate", "champion"]
    client = MlflowClient(summary["tracking_uri"])
    version = client.get_model_version_by_alias("mini-model", "champion")
    assert int(version.version) == 1
    for tag in (
        "vlmpipe.spec_sha256",
        "vlmpipe.data.shapes_world",
        "vlmpipe.parent_run_id",
        "prefect.flow_run_id",
    ):
        assert version.tags.get(tag), tag
    assert version.tags["vlmpipe.parent_run_id"] == summary["mlflow_run_id"]
    assert "first version" in version.tags["vlmpipe.champion_decision"]
    mlflow.set_tracking_uri(summary["tracking_uri"])
    model = mlflow.pyfunc.load_model("models:/mini-model@champion")
    assert [c.name for c in model.metadata.get_input_schema().inputs] == ["image", "prompt", "task"]
    record = in_memory_records(1, 0, seed=5)[0]
    buffer = io.BytesIO()
    record["image"].save(buffer, format="PNG")
    answers = model.predict(
        pd.DataFrame(
            {"image": [buffer.getvalue()], "prompt": ["what colour is the shape?"], "task": ["vqa"]}
        ),
        params={"max_new_tokens": 4},
    )
    assert len(answers) == 1 and isinstance(answers[0], str)


def test_prefect_records_the_flow_runs_completed_in_dependency_order(pipeline_run):
    home, summary = pipeline_run
    runs = prefect_flow_runs(home)
    assert all(r["state"] == "COMPLETED" for r in runs), runs
    assert [r["flow"] for r in runs].count("vlmpipe-pipeline") == 1
    stages = sorted((r for r in runs if r["flow"] == "train-stage"), key=lambda r: r["start"])
    assert [r["name"] for r in stages] == [f"{summary['run_name']}/{s}" for s in STAGES]
    for before, after in zip(stages, stages[1:], strict=False):
        assert before["end"] <= after["start"], (before, after)
    assert any(r["flow"] == "evaluate" for r in runs)


def prefect_flow_runs(home: Path) -> list[dict]:
    env = env_for(home)
    env.update(
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS="180",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    proc = subprocess.run(
        [sys.executable, "-c", PREFECT_QUERY], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def start_in_own_session(argv: list[str], home: Path) -> subprocess.Popen:
    """A vlmpipe command in a process group of its own (a signal can go to it and its children),
    its output merged into one text pipe."""
    return subprocess.Popen(
        argv,
        cwd=ROOT,
        env=env_for(home),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )


def test_resume_of_an_unknown_run_is_refused_before_anything_starts(tmp_path):
    home = tmp_path / "home"
    base = [
        sys.executable,
        "-m",
        "flows.cli",
        "run",
        str(ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"),
    ]
    proc = subprocess.run(
        [*base, "--home", str(home), "--resume", "nope"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "no run 'nope' to resume (runs there: none)" in proc.stderr
    assert not (home / "prefect").exists()  # refused before Prefect was started
    proc = subprocess.run(
        [*base, "--run-name", "a", "--resume", "a"], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr


@pytest.mark.parametrize(
    ("signum", "to_group", "code"),
    [(15, False, 143), (2, True, 130)],  # `kill PID`; Ctrl-C in a terminal (the whole process group)
    ids=["sigterm", "sigint-to-the-group"],
)
def test_a_stop_signal_ends_the_run_cleanly_and_resume_continues_the_same_mlflow_run(
    tmp_path, signum, to_group, code
):
    """A stop signal mid-stage: exit 128 + signal with one line within seconds, no MLflow or
    Prefect run left RUNNING, no process of the run left over (Prefect's local API runs in a
    session of its own, so a terminal's Ctrl-C does not take it down under the stopping run);
    `--resume` then finishes the same parent run."""
    import time

    from mlflow.tracking import MlflowClient

    spec = mini_pipeline(tmp_path)
    stage4 = yaml.safe_load((tmp_path / "stage4_multitask.yaml").read_text())
    stage4["schedule"]["steps"] = 60  # long enough to be stopped in the middle
    (tmp_path / "stage4_multitask.yaml").write_text(yaml.safe_dump(stage4))
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec), "--home", str(home)]
    proc = start_in_own_session([*cmd, "--run-name", "t"], home)
    seen = []
    for line in proc.stdout:
        seen.append(line)
        if "stage4_multitask step 4/60" in line:
            if to_group:  # as a terminal's Ctrl-C: every process of the group gets it
                os.killpg(proc.pid, signum)
            else:
                os.kill(proc.pid, signum)
            signalled = time.monotonic()
            break
    rest, _ = proc.communicate(timeout=300)
    output = "".join(seen) + rest
    assert proc.returncode == code, output[-3000:]
    assert time.monotonic() - signalled < 90, output[-2000:]  # no client retrying a dead server
    assert "--resume" in output, output[-2000:]
    assert "stage stage4_multitask stopped after step" in output, output[-2000:]
    assert "ConnectError" not in output and "All connection attempts failed" not in output, output[-3000:]
    assert (
        tmp_path / "home" / "runs" / "mini-demo" / "t" / "stages" / "stage4_multitask" / "resume"
    ).is_dir()
    assert processes_of(home) == []
    flow_runs = prefect_flow_runs(home)
    assert flow_runs and not [r for r in flow_runs if r["state"] in ("RUNNING", "PENDING")], flow_runs
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    assert runs and not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if r.info.run_name == "t"]
    assert len(parent) == 1 and parent[0].info.status == "KILLED"

    again = subprocess.run(
        [*cmd, "--resume", "t", "--json"],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads(again.stdout[again.stdout.index("{\n") :])
    assert summary["mlflow_run_id"] == parent[0].info.run_id and summary["run_name"] == "t"
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs].count("t") == 1
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    assert client.get_run(parent[0].info.run_id).info.status == "FINISHED"


def test_after_sigkill_resume_closes_the_orphaned_runs_and_continues_the_parent(tmp_path):
    import signal
    import time

    from mlflow.tracking import MlflowClient

    spec = mini_pipeline(tmp_path)
    stage4 = yaml.safe_load((tmp_path / "stage4_multitask.yaml").read_text())
    stage4["schedule"]["steps"], stage4["checkpoint_every"] = 60, 2
    (tmp_path / "stage4_multitask.yaml").write_text(yaml.safe_dump(stage4))
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec), "--home", str(home)]
    proc = start_in_own_session([*cmd, "--run-name", "k"], home)
    for line in proc.stdout:
        if "stage4_multitask step 6/60" in line:
            os.killpg(proc.pid, signal.SIGKILL)  # the process group: as a node or a pod dies
            break
    proc.wait(timeout=60)
    deadline = time.monotonic() + 30  # Prefect's API, in its own session, follows its parent
    while processes_of(home) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert processes_of(home) == []
    uri = f"sqlite:///{home / 'mlflow' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("mini")
    running = [r for r in client.search_runs([experiment.experiment_id]) if r.info.status == "RUNNING"]
    assert {label(r) for r in running} >= {"k", "stage-stage4_multitask"}  # what a kill leaves

    again = subprocess.run(
        [*cmd, "--resume", "last", "--json"],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    summary = json.loads(again.stdout[again.stdout.index("{\n") :])
    assert summary["run_name"] == "k" and "resuming at step" in again.stdout + again.stderr
    runs = client.search_runs([experiment.experiment_id])
    assert [r.info.run_name for r in runs].count("k") == 1
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    killed = [r for r in runs if r.info.status == "KILLED"]
    assert [label(r) for r in killed] == ["stage-stage4_multitask"]
    assert processes_of(home) == []


def test_two_pipelines_started_at_once_on_one_state_folder_both_finish_with_their_own_records(tmp_path):
    """Same spec, same state folder, same second, no run names: distinct run folders and MLflow runs,
    one ingest (the other waits and reuses its shards), two model versions, nothing left RUNNING."""
    from mlflow.tracking import MlflowClient

    spec = mini_pipeline(tmp_path)
    home = tmp_path / "home"
    cmd = [sys.executable, "-m", "flows.cli", "run", str(spec), "--home", str(home), "--json"]
    procs = [start_in_own_session(cmd, home) for _ in range(2)]
    outputs = [p.communicate(timeout=1200)[0] for p in procs]
    for proc, output in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, output[-3000:]
    summaries = [json.loads(out[out.index("{\n") :]) for out in outputs]
    assert len({s["run_name"] for s in summaries}) == 2
    assert len({s["mlflow_run_id"] for s in summaries}) == 2
    assert {s["model_version"] for s in summaries} == {1, 2}
    for summary in summaries:
        assert Path(summary["run_dir"]).name == summary["run_name"]
        assert [s["stage"] for s in summary["stages"]] == STAGES
        assert all(s["checkpoint"].startswith(summary["run_dir"]) for s in summary["stages"])
    client = MlflowClient(summaries[0]["tracking_uri"])
    experiment = client.get_experiment_by_name("mini")
    runs = client.search_runs([experiment.experiment_id])
    assert not [r.info.run_name for r in runs if r.info.status != "FINISHED"]
    for summary in summaries:
        nested = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == summary["mlflow_run_id"]]
        assert sorted(label(r) for r in nested) == sorted(
            ["ingest-shapes_world", "evaluate"] + [f"stage-{s}" for s in STAGES]
        )
    flow_runs = prefect_flow_runs(home)
    assert [r["flow"] for r in flow_runs].count("vlmpipe-pipeline") == 2
    assert all(r["state"] == "COMPLETED" for r in flow_runs), flow_runs
    assert processes_of(home) == []


def test_a_stage_that_fails_at_run_time_prints_one_line_and_prefect_keeps_the_failure(tmp_path):
    spec = mini_pipeline(tmp_path)
    bad = tmp_path / "gqa.json"
    bad.write_text('{"q1": {"question": "what?", "answer": "yes"}}')  # no imageId: valid spec, bad data
    stage = yaml.safe_load((tmp_path / "stage4_multitask.yaml").read_text())
    stage["mixture"]["datasets"] = [
        {"name": "g", "format": "gqa", "annotations": str(bad), "task": "vqa", "weight": 1}
    ]
    (tmp_path / "stage4_multitask.yaml").write_text(yaml.safe_dump(stage))
    pipe = yaml.safe_load(spec.read_text())
    pipe["stages"] = ["stage4_multitask.yaml"]
    spec.write_text(yaml.safe_dump(pipe))
    home = tmp_path / "home"
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", str(spec), "--home", str(home)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_for(home),
        timeout=600,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("vlmpipe: error: FormatError: ") and str(bad) in last, last
    log = Path(last.rsplit("(traceback: ", 1)[1].rstrip(")"))
    assert "Traceback" in log.read_text() and "load_gqa" in log.read_text()
    states = {(r["flow"], r["state"]) for r in prefect_flow_runs(home)}
    assert {("train-stage", "FAILED"), ("vlmpipe-pipeline", "FAILED")} <= states, states
    assert not processes_of(home)
