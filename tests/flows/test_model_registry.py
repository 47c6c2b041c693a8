"""The registry's aliases: `candidate` on every version, `champion` moved only when the candidate
beats the champion on the spec's metric (decided against a real MLflow SQLite registry)."""

from types import SimpleNamespace

import pytest

from flows.placement import record_failure
from flows.registry import _champion_decision


@pytest.fixture
def registry(tmp_path):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client.create_registered_model("m")
    return client


def spec(metric="vqa_accuracy", mode="max"):
    tracking = SimpleNamespace(registered_model="m", champion_metric=metric, champion_mode=mode)
    return SimpleNamespace(spec=SimpleNamespace(tracking=tracking))


def add_version(client, score=None):
    tags = {} if score is None else {"metric.vqa_accuracy": str(score)}
    return int(client.create_model_version("m", source="file:///nowhere", tags=tags).version)


def test_the_first_version_becomes_champion(registry):
    promote, decision = _champion_decision(
        registry, spec(), add_version(registry, 0.5), {"vqa_accuracy": 0.5}
    )
    assert promote and "first version" in decision


@pytest.mark.parametrize(
    ("mode", "held", "new", "promote"),
    [("max", 0.5, 0.6, True), ("max", 0.5, 0.5, False), ("max", 0.5, 0.4, False), ("min", 0.5, 0.4, True)],
)
def test_champion_moves_only_to_a_better_candidate(registry, mode, held, new, promote):
    first = add_version(registry, held)
    registry.set_registered_model_alias("m", "champion", first)
    second = add_version(registry, new)
    moved, decision = _champion_decision(registry, spec(mode=mode), second, {"vqa_accuracy": new})
    assert moved is promote
    assert f"{new:.4f} vs {held:.4f}" in decision
    assert ("moved from version 1" in decision) is promote


def test_without_the_metric_or_a_gate_the_champion_stays(registry):
    first = add_version(registry, 0.5)
    registry.set_registered_model_alias("m", "champion", first)
    second = add_version(registry)
    moved, decision = _champion_decision(registry, spec(), second, {})
    assert not moved and "has no vqa_accuracy" in decision
    moved, decision = _champion_decision(registry, spec(metric=None), second, {"vqa_accuracy": 0.9})
    assert not moved and "no tracking.champion_metric" in decision


def test_a_failure_says_whether_a_retry_can_help(tmp_path):
    import json

    from data_specs.loader import SpecError

    record_failure(tmp_path, SpecError(tmp_path / "s.yaml", "x", "bad"))
    assert json.loads((tmp_path / "failure.json").read_text())["retryable"] is False
    record_failure(tmp_path, OSError(5, "Input/output error"))
    failure = json.loads((tmp_path / "failure.json").read_text())
    assert failure["retryable"] is True and failure["cause"] == "OSError: [Errno 5] Input/output error"


def test_placement_auto_is_local_on_the_commands_own_api_and_deployments_need_a_server(monkeypatch):
    from data_specs.pipelines import PlacementSpec
    from flows.placement import PlacementError, resolve_placement

    monkeypatch.setenv("PREFECT_API_URL", "http://127.0.0.1:1/api")
    monkeypatch.setenv("VLMPIPE_LOCAL_PREFECT_API", "1")
    assert resolve_placement(PlacementSpec()).mode == "local"
    with pytest.raises(PlacementError, match="no Prefect server is configured"):
        resolve_placement(PlacementSpec(mode="deployments"))
    monkeypatch.delenv("VLMPIPE_LOCAL_PREFECT_API")
    placed = resolve_placement(PlacementSpec(stage_pools={"stage1": "cpu"}))
    assert placed.mode == "deployments"
    assert placed.deployment_of_stage("stage1") == "train-stage/cpu"
    assert placed.deployment_of_stage("stage2") == "train-stage/gpu"
    assert placed.deployment_of_evaluation() == "evaluate/gpu"
    assert resolve_placement(PlacementSpec(mode="local")).mode == "local"
