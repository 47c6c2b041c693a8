"""MLflow tracking for every step: one parent run per pipeline run, nested runs per step.

Uses `MlflowClient` with explicit run ids (never the fluent global "active run"), so Prefect
tasks in threads or processes can log to the right run. The tracking URI comes from
`MLFLOW_TRACKING_URI` or defaults to a SQLite store in the state folder (tasks/state.py).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")

from mlflow.entities import Metric, Param  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from tasks.state import vlmpipe_home  # noqa: E402


def default_tracking_uri(home: Path | None = None) -> str:
    """`MLFLOW_TRACKING_URI` if set, else `sqlite:///<home>/mlflow/mlflow.db`."""
    if os.environ.get("MLFLOW_TRACKING_URI"):
        return os.environ["MLFLOW_TRACKING_URI"]
    folder = vlmpipe_home(home) / "mlflow"
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{folder / 'mlflow.db'}"


def default_artifact_root(tracking_uri: str) -> str | None:
    """Artifacts beside a local SQLite store (MLflow would otherwise use ./mlruns of the cwd)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri[len("sqlite:///") :]).parent / "artifacts").as_uri()
    return None


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping -> {"a.b.c": "value"} strings, the shape MLflow params need."""
    out: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list | tuple) and value and all(isinstance(v, Mapping) for v in value):
            for i, item in enumerate(value):
                out.update(flatten(item, f"{name}.{i}."))
        else:
            text = json.dumps(value) if isinstance(value, list | tuple | dict) else str(value)
            out[name] = text[:6000]  # MLflow's param value limit
    return out


class Tracker:
    """Logs to one MLflow run. Cheap to construct from (tracking_uri, run_id) in any process."""

    def __init__(self, tracking_uri: str, run_id: str):
        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.client = MlflowClient(tracking_uri=tracking_uri)

    # small JSON-able handle, what flows pass between steps
    def handle(self) -> dict[str, str]:
        return {"tracking_uri": self.tracking_uri, "run_id": self.run_id}

    @classmethod
    def from_handle(cls, handle: Mapping[str, str]) -> Tracker:
        return cls(handle["tracking_uri"], handle["run_id"])

    def log_params(self, params: Mapping[str, Any], prefix: str = "") -> None:
        flat = flatten(params, prefix)
        items = [Param(k[:250], v) for k, v in flat.items()]
        for i in range(0, len(items), 100):
            self.client.log_batch(self.run_id, params=items[i : i + 100])

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        now = int(time.time() * 1000)
        items = [
            Metric(k, float(v), now, step or 0)
            for k, v in metrics.items()
            if v is not None and math.isfinite(float(v))
        ]
        for i in range(0, len(items), 500):
            self.client.log_batch(self.run_id, metrics=items[i : i + 500])

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        for k, v in tags.items():
            self.client.set_tag(self.run_id, k, str(v))

    def log_artifact(self, path: str | Path, artifact_path: str | None = None) -> None:
        path = Path(path)
        if path.is_dir():
            self.client.log_artifacts(self.run_id, str(path), artifact_path)
        else:
            self.client.log_artifact(self.run_id, str(path), artifact_path)

    def log_dict(self, data: Any, artifact_file: str) -> None:
        self.client.log_dict(self.run_id, data, artifact_file)

    def log_text(self, text: str, artifact_file: str) -> None:
        self.client.log_text(self.run_id, text, artifact_file)

    def log_table(self, rows: list[Mapping[str, Any]], artifact_file: str) -> None:
        """A list of row dicts as an MLflow table (shown in the UI's artifact view)."""
        if not rows:
            return
        columns = list(dict.fromkeys(k for row in rows for k in row))
        data = {c: [row.get(c) for row in rows] for c in columns}
        self.client.log_table(self.run_id, data=data, artifact_file=artifact_file)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        """A matplotlib figure as a PNG artifact (closed afterwards)."""
        import matplotlib.pyplot as plt

        try:
            self.client.log_figure(self.run_id, figure, artifact_file)
        finally:
            plt.close(figure)

    def ui_url(self) -> str | None:
        """This run's page in the MLflow UI when the store is a tracking server (http/https)."""
        base = _ui_base(self.tracking_uri)
        if base is None:
            return None
        experiment = self.client.get_run(self.run_id).info.experiment_id
        return f"{base}/#/experiments/{experiment}/runs/{self.run_id}"

    def experiment_ui_url(self) -> str | None:
        """The training-runs view of this run's experiment (not MLflow 3's GenAI overview)."""
        base = _ui_base(self.tracking_uri)
        if base is None:
            return None
        experiment = self.client.get_run(self.run_id).info.experiment_id
        return f"{base}/#/experiments/{experiment}/runs"

    def artifact_uri(self, artifact_path: str = "") -> str:
        base = self.client.get_run(self.run_id).info.artifact_uri
        return f"{base}/{artifact_path}" if artifact_path else base

    def finish(self, status: str = "FINISHED") -> None:
        self.client.set_terminated(self.run_id, status=status)


@contextmanager
def store_lock(tracking_uri: str) -> Iterator[None]:
    """Serialise the first touches of a local SQLite store: MLflow creates its schema on first use,
    and two processes doing so at once race (`alembic_version ... 0 found`). Servers need none."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    import fcntl

    db = Path(tracking_uri[len("sqlite:///") :])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.parent / ".store.lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def _ui_base(tracking_uri: str) -> str | None:
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else None


# MLflow 3's UI opens an experiment by its kind: this one shows the training runs, not GenAI traces
EXPERIMENT_KIND = {"mlflow.experimentKind": "custom_model_development"}


def _experiment_id(client: MlflowClient, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if "mlflow.experimentKind" not in exp.tags:
            client.set_experiment_tag(exp.experiment_id, *next(iter(EXPERIMENT_KIND.items())))
        return exp.experiment_id
    return client.create_experiment(
        name, artifact_location=default_artifact_root(client.tracking_uri), tags=EXPERIMENT_KIND
    )


def log_dataset_input(
    tracker: Tracker, *, name: str, path: str | Path, digest: str | None, context: str
) -> None:
    """`path` (a shard manifest, an annotation file) as a dataset input of the run. Without a digest
    the file's path, size and modification time name it (hashing a multi-GB annotation file per run
    would cost more than the check is worth)."""
    import hashlib

    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    path = Path(path).resolve()
    if digest is None:
        try:
            stat = path.stat()
            digest = hashlib.sha256(f"{path}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
        except OSError:
            digest = hashlib.sha256(str(path).encode()).hexdigest()
    dataset = MetaDataset(LocalArtifactDatasetSource(str(path)), name=name, digest=digest[:36])
    entity = dataset._to_mlflow_entity()  # the public log_input needs the fluent active run
    tracker.client.log_inputs(
        tracker.run_id, [DatasetInput(entity, [InputTag(MLFLOW_DATASET_CONTEXT, context)])]
    )


def git_commit() -> tuple[str | None, bool]:
    """(commit, dirty) of the project's checkout; $VLMPIPE_GIT_COMMIT in an image built without
    `.git` (infra/Dockerfile bakes it in). (None, False) when neither is there."""
    import subprocess

    baked = os.environ.get("VLMPIPE_GIT_COMMIT")
    if baked:
        return baked, False
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None, False
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None, False
    return commit or None, bool(status.strip())


def run_tags(entry: str) -> dict[str, str]:
    """MLflow's source tags (what ran, from which commit) and the host, for every run we start."""
    import socket

    commit, dirty = git_commit()
    tags = {
        "mlflow.source.name": entry,
        "mlflow.source.type": "JOB",
        "vlmpipe.host": socket.gethostname(),
    }
    if commit:
        tags["mlflow.source.git.commit"] = commit
        tags["vlmpipe.git_dirty"] = str(dirty).lower()
    return tags


def start_run(
    experiment: str,
    run_name: str,
    *,
    tracking_uri: str | None = None,
    parent: Tracker | Mapping[str, str] | None = None,
    tags: Mapping[str, Any] | None = None,
) -> Tracker:
    """Create a run (nested under `parent` when given) and return its Tracker."""
    uri = tracking_uri or (parent["tracking_uri"] if isinstance(parent, Mapping) else None)
    uri = uri or (parent.tracking_uri if isinstance(parent, Tracker) else None) or default_tracking_uri()
    all_tags = {k: str(v) for k, v in (tags or {}).items()}
    with store_lock(uri):  # the first client of a fresh store creates its schema
        client = MlflowClient(tracking_uri=uri)
        if parent is not None:
            parent_id = parent.run_id if isinstance(parent, Tracker) else parent["run_id"]
            all_tags["mlflow.parentRunId"] = parent_id
            experiment_id = client.get_run(parent_id).info.experiment_id
        else:
            experiment_id = _experiment_id(client, experiment)
    run = client.create_run(experiment_id, run_name=run_name, tags=all_tags)
    return Tracker(uri, run.info.run_id)


@contextmanager
def tracked_run(experiment: str, run_name: str, **kwargs: Any) -> Iterator[Tracker]:
    """`start_run` as a context manager: FINISHED on success; on error FAILED, or KILLED for an
    interrupt (Ctrl-C, SIGTERM); the error is re-raised."""
    tracker = start_run(experiment, run_name, **kwargs)
    try:
        yield tracker
    except BaseException as exc:
        log_failure(tracker, exc)
        tracker.finish(end_status(exc))
        raise
    tracker.finish("FINISHED")


def log_failure(tracker: Tracker, exc: BaseException) -> None:
    """The traceback as the run's `error.txt`, and the tags an error names for itself (e.g. a
    training guard's `vlmpipe.failure`); best effort: the run still ends with its status."""
    import traceback

    try:
        tags = getattr(exc, "mlflow_tags", None)
        if isinstance(tags, dict):
            tracker.set_tags(tags)
        tracker.log_text("".join(traceback.format_exception(exc)), "error.txt")
    except Exception:  # noqa: BLE001 (the store may be what failed)
        pass


def end_status(exc: BaseException) -> str:
    """MLflow's end status for a run that raised `exc`: KILLED for an interrupt, and for whatever a
    stop request broke on its way out (Ctrl-C also stops Prefect's local server)."""
    from tasks import stopping

    if isinstance(exc, KeyboardInterrupt | SystemExit) or stopping.requested() is not None:
        return "KILLED"
    return "FAILED"


def reopen_run(tracking_uri: str, run_id: str) -> Tracker:
    """Continue a pipeline's parent run (a resumed run): RUNNING again, and every nested run left
    RUNNING by a process that was killed is ended as KILLED."""
    tracker = Tracker(tracking_uri, run_id)
    client = tracker.client
    run = client.get_run(run_id)
    orphans = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{run_id}' and attributes.status = 'RUNNING'",
    )
    for orphan in orphans:
        client.set_terminated(orphan.info.run_id, status="KILLED")
    client.update_run(run_id, status="RUNNING")
    return tracker


def log_json_artifact(tracker: Tracker, data: Any, name: str) -> None:
    """Write `data` as pretty JSON and log it (log_dict writes compact JSON; people read these)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
        tracker.log_artifact(path)


SYSTEM_METRICS_ENV = "VLMPIPE_SYSTEM_METRICS_S"


@contextmanager
def system_metrics(tracker: Tracker, interval_s: float | None = None) -> Iterator[None]:
    """MLflow's system metrics on `tracker`'s run while the block runs, every `interval_s` seconds
    (default $VLMPIPE_SYSTEM_METRICS_S, else 10; 0 turns them off): system/cpu_utilization_percentage,
    memory, disk and network, and per GPU its utilisation and memory through NVIDIA's management
    library (nvidia-ml-py) where a GPU is present."""
    if interval_s is None:
        interval_s = float(os.environ.get(SYSTEM_METRICS_ENV, 10))
    if interval_s <= 0:
        yield
        return
    from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

    monitor = SystemMetricsMonitor(
        tracker.run_id,
        sampling_interval=interval_s,
        samples_before_logging=1,
        resume_logging=True,  # a resumed stage continues the steps of its system metrics
        tracking_uri=tracker.tracking_uri,
    )
    monitor.start()
    try:
        yield
    finally:
        monitor.finish()
