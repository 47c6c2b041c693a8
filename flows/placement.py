"""Where a stage or the evaluation runs: in the pipeline's own process, or as a flow run of a
deployment on a work pool (`run_deployment`), waited for, retried with backoff when the cause is
worth a retry.

The pipeline passes a placed flow only small values (spec path, stage name, run name, checkpoint
path, MLflow run ids) and reads its outcome from the run folder, which placed flows share with the
pipeline (one machine, or a shared volume): a stage writes `stage_result.json` when it finishes and
`failure.json` when it fails. Nothing depends on Prefect's result persistence.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# set by flows/local_api.py: the API is the one this command started, not a server of the user's
LOCAL_API_ENV = "VLMPIPE_LOCAL_PREFECT_API"
FAILURE_FILE = "failure.json"


class PlacementError(RuntimeError):
    """A placed flow failed (or could not be placed); `str()` is one line naming the flow run."""


@dataclass(frozen=True)
class Placement:
    """Resolved from the pipeline spec's `placement:` block and the environment."""

    mode: str  # "local" | "deployments"
    stages: str
    evaluation: str
    stage_pools: dict[str, str]
    retries: int
    retry_delay_s: float

    def deployment_of_stage(self, stage: str) -> str:
        return f"train-stage/{self.stage_pools.get(stage, self.stages)}"

    def deployment_of_evaluation(self) -> str:
        return f"evaluate/{self.evaluation}"


def server_configured() -> bool:
    """A Prefect server of the user's (PREFECT_API_URL), not the local API a command started."""
    return bool(os.environ.get("PREFECT_API_URL")) and not os.environ.get(LOCAL_API_ENV)


def resolve_placement(spec: Any, *, log: Callable[[str], None] = print) -> Placement:
    """`spec` is the pipeline spec's PlacementSpec. auto: deployments when a server is configured
    and it has the deployments the pipeline needs (else in-process, said in one line)."""
    mode = spec.mode
    placement = Placement(
        mode="local",
        stages=spec.stages,
        evaluation=spec.evaluation,
        stage_pools=dict(spec.stage_pools),
        retries=spec.retries,
        retry_delay_s=spec.retry_delay_s,
    )
    if mode == "local":
        return placement
    if not server_configured():
        if mode == "deployments":
            raise PlacementError(
                "placement.mode is 'deployments' but no Prefect server is configured: "
                "set PREFECT_API_URL, or start one with `vlmpipe servers up`"
            )
        return placement
    return Placement(**{**placement.__dict__, "mode": "deployments"})


def missing_deployments(names: list[str]) -> list[str]:
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    missing = []
    with get_client(sync_client=True) as client:
        for name in dict.fromkeys(names):
            try:
                client.read_deployment_by_name(name)
            except ObjectNotFound:
                missing.append(name)
    return missing


def clear_failure(folder: str | Path) -> None:
    Path(folder, FAILURE_FILE).unlink(missing_ok=True)


def record_failure(folder: str | Path, exc: BaseException) -> None:
    """What the pipeline reads when the placed flow failed: the cause in one line, and whether a
    retry can help (a bad spec, a bad input or a training guard fails the same way again)."""
    from data_specs.loader import SpecError
    from tasks.state import RunError

    deterministic = isinstance(exc, SpecError | RunError | ValueError | TypeError | KeyError) or bool(
        getattr(exc, "mlflow_tags", None)
    )
    cause = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    try:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / (FAILURE_FILE + ".tmp")
        tmp.write_text(json.dumps({"cause": cause, "retryable": not deterministic, "time": time.time()}))
        tmp.replace(folder / FAILURE_FILE)
    except OSError:  # the cause still reaches Prefect's state message
        pass


def _read_failure(folder: Path, since: float) -> dict | None:
    try:
        failure = json.loads((folder / FAILURE_FILE).read_text())
    except (OSError, ValueError):
        return None
    return failure if failure.get("time", 0) >= since else None


def run_placed(
    deployment: str,
    parameters: dict[str, Any],
    *,
    flow_run_name: str,
    what: str,
    folder: str | Path,
    retries: int,
    retry_delay_s: float,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> Any:
    """Run `deployment` as a child flow run of the current flow run and wait for it. A failure that
    is worth a retry (the process crashed, the disk or the network failed) runs it again after
    `retry_delay_s`, doubled each time, at most `retries` times; a stage resumes from its last saved
    step. Returns the completed flow run; raises PlacementError with the cause otherwise."""
    delay = retry_delay_s
    for attempt in range(retries + 1):
        started = time.time()  # a retry is a new flow run of the same name (the flow names its runs)
        flow_run = _run_and_wait(deployment, parameters, flow_run_name, poll_s, log)
        state = flow_run.state
        if state.is_completed():
            return flow_run
        failure = _read_failure(Path(folder), started)
        cause = failure["cause"] if failure else " ".join((state.message or state.name).split())
        retryable = failure["retryable"] if failure else not state.is_cancelled()
        pool = flow_run.work_pool_name or "?"
        where = f"{what} ({deployment} on pool {pool}, flow run {flow_run.name}) ended {state.name}"
        if not retryable or attempt == retries:
            tries = f" after {attempt + 1} attempts" if attempt else ""
            raise PlacementError(f"{where}{tries}: {cause}")
        log(f"{where}: {cause}; retrying in {delay:g} s (attempt {attempt + 2} of {retries + 1})")
        time.sleep(delay)
        delay *= 2
    raise AssertionError("unreachable")


def _run_and_wait(
    deployment: str, parameters: dict[str, Any], name: str, poll_s: float, log: Callable[[str], None]
) -> Any:
    """Create the flow run, then poll it to a final state; an interrupt (Ctrl-C, SIGTERM) cancels
    the flow run on its worker before it propagates."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.states import Cancelling

    flow_run = run_deployment(
        name=deployment, parameters=parameters, timeout=0, as_subflow=True, flow_run_name=name
    )
    ui = os.environ.get("PREFECT_UI_URL")
    log(
        f"flow run {name} on {deployment} (pool {flow_run.work_pool_name or '?'})"
        + (f": {ui.rstrip('/')}/runs/flow-run/{flow_run.id}" if ui else "")
    )
    try:
        with get_client(sync_client=True) as client:
            while True:
                flow_run = client.read_flow_run(flow_run.id)
                if flow_run.state is not None and flow_run.state.is_final():
                    return flow_run
                time.sleep(poll_s)
    except BaseException:
        try:
            with get_client(sync_client=True) as client:
                client.set_flow_run_state(flow_run.id, Cancelling(), force=True)
        except Exception:  # noqa: BLE001 (the server may be what went away)
            pass
        raise
