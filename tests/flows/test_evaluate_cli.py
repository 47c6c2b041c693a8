"""`vlmpipe evaluate`: every official benchmark on its fixture (written in the release's own format),
a real tiny checkpoint, Prefect's local API and an MLflow SQLite store; the comparison with the
paper's Table 2 is printed; a wrong data root is one line naming the benchmark and the file."""

import subprocess
import sys

import pytest

from tests.pipelines import ROOT, env_for
from tests.tasks.evaluate.official.fixtures import write_data_root

DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The demo's tiny model, as built before training, saved as a stage checkpoint."""
    from data_specs.pipelines import load_pipeline
    from model.build import build_model
    from model.checkpoint import save_checkpoint
    from tasks import shapes_world

    rp = load_pipeline(DEMO)
    built, _ = build_model(rp.spec.model, tokenizer_corpus=shapes_world.tokenizer_corpus, log=lambda _m: None)
    folder = tmp_path_factory.mktemp("ckpt") / "checkpoint"
    save_checkpoint(
        folder,
        built.model,
        ["projection"],
        tokenizer=built.tokenizer,
        metadata={"image_size": built.preset.image_size, "preset": built.preset.name},
    )
    return folder


def evaluate(*args, home):
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "evaluate", *map(str, args), "--home", str(home)],
        cwd=ROOT,
        env=env_for(home),
        capture_output=True,
        text=True,
        timeout=900,
    )


def test_every_benchmark_runs_on_its_fixture_and_the_paper_table_is_printed(tmp_path, checkpoint):
    from mlflow.tracking import MlflowClient

    from data_specs.registry import OFFICIAL_BENCHMARKS

    root = write_data_root(tmp_path / "data")
    home = tmp_path / "home"
    proc = evaluate(checkpoint, "--benchmarks", "all", "--data-root", root, "--pipeline", DEMO, home=home)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    for name in OFFICIAL_BENCHMARKS:
        assert f"  {name} " in out, name
    assert "TinyGPT-V (Phi-2, 2.8B)" in out and "38.9" in out  # the paper's GQA figure beside ours
    ours = [line for line in out.splitlines() if line.startswith("this checkpoint")]
    assert len(ours) == 1 and len(ours[0].split()) == 2 + 5  # a cell for every Table 2 column
    client = MlflowClient(f"sqlite:///{home / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("vlmpipe-evaluate").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    metrics = runs[0].data.metrics
    for name, key in (
        ("gqa", "accuracy"),
        ("vizwiz", "accuracy"),
        ("mme", "perception"),
        ("refcoco", "accuracy"),
    ):
        assert any(m.startswith(f"{name}.") for m in metrics), (name, key, sorted(metrics)[:20])
    artifacts = {a.path for a in client.list_artifacts(runs[0].info.run_id, "benchmarks")}
    assert {f"benchmarks/{n}.json" for n in OFFICIAL_BENCHMARKS} <= artifacts
    assert "paper_table2.txt" in {a.path for a in client.list_artifacts(runs[0].info.run_id)}


@pytest.mark.parametrize(
    ("benchmark", "expected"),
    [("gqa", "testdev_balanced_questions.json"), ("vizwiz", "val.json"), ("hateful_memes", "dev_seen.jsonl")],
)
def test_a_wrong_data_root_is_one_line_naming_the_benchmark_and_the_file(
    tmp_path, checkpoint, benchmark, expected
):
    (tmp_path / "empty").mkdir()
    proc = evaluate(
        checkpoint,
        "--benchmarks",
        benchmark,
        "--data-root",
        tmp_path / "empty",
        "--pipeline",
        DEMO,
        home=tmp_path / "h",
    )
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"vlmpipe: error: {benchmark}"), proc.stderr
    assert expected in lines[0]


def test_an_unknown_benchmark_is_refused_with_the_known_names(tmp_path, checkpoint):
    proc = evaluate(checkpoint, "--benchmarks", "gqa,vqa2", "--data-root", tmp_path, home=tmp_path / "h")
    assert proc.returncode == 2 and "vqa2" in proc.stderr and "vqav2" in proc.stderr


def test_official_registry_names_match_the_spec_registry():
    from data_specs.registry import OFFICIAL_BENCHMARKS
    from tasks.evaluate.official import BENCHMARKS

    assert set(OFFICIAL_BENCHMARKS) == set(BENCHMARKS)
    for name, task in OFFICIAL_BENCHMARKS.items():
        assert BENCHMARKS[name].task == task, name
