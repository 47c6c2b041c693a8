"""`model.ablate` in a pipeline spec: known names once each, one line naming the file and field
otherwise; the switches reach the built model."""

import subprocess
import sys

import pytest
import yaml

from tests.pipelines import ROOT

DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"


def spec_with(tmp_path, ablate):
    data = yaml.safe_load(DEMO.read_text())
    data["model"]["ablate"] = ablate
    data["sources"] = [str((DEMO.parent / s).resolve()) for s in data["sources"]]
    data["stages"] = [str((DEMO.parent / s).resolve()) for s in data["stages"]]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("ablate", "message"),
    [
        (["dropout"], "unknown ablation 'dropout'"),
        (["qk_norm", "qk_norm"], "ablation(s) named twice: qk_norm"),
    ],
)
def test_bad_ablations_are_one_line_naming_the_file_and_field(tmp_path, ablate, message):
    path = spec_with(tmp_path, ablate)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "spec", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "model.ablate" in proc.stderr and message in proc.stderr, proc.stderr


def test_the_spec_switches_reach_the_model(tmp_path):
    from data_specs.pipelines import load_pipeline
    from model.build import build_model, model_choice
    from tasks import shapes_world

    rp = load_pipeline(spec_with(tmp_path, ["lora", "qk_norm"]))
    assert rp.spec.model.ablate == ["lora", "qk_norm"]
    built, _ = build_model(rp.spec.model, tokenizer_corpus=shapes_world.tokenizer_corpus, log=lambda _m: None)
    assert built.model.ablated == ("lora", "qk_norm") and built.model.lora_settings is None
    choice = model_choice(rp.spec.model.model_dump(mode="json"))
    assert choice.ablate == ("lora", "qk_norm")
