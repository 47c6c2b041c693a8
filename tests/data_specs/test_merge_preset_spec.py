"""A pipeline on a token-merge preset (no Q-Former) whose stages still name the Q-Former is refused at
validation, before any ingest, with one line naming the stage file and field."""

import subprocess
import sys

import pytest
import yaml

from tests.pipelines import ROOT

DEMO = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"
STAGES = ROOT / "data_specs" / "stages"


def pipeline_with(tmp_path, preset: str, towers_stage):
    data = yaml.safe_load(DEMO.read_text())
    data["model"]["preset"] = preset
    data["sources"] = [str((DEMO.parent / s).resolve()) for s in data["sources"]]
    data["stages"] = [str(towers_stage)]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.mark.parametrize(
    ("stage_file", "field"),
    [("shapes_towers.yaml", "trainable"), ("shapes_base.yaml", "trainable")],
)
def test_a_stage_naming_the_qformer_of_a_merge_preset_is_one_line(tmp_path, stage_file, field):
    path = pipeline_with(tmp_path, "tiny-merge", STAGES / stage_file)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "spec", "validate", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and stage_file in lines[0] and field in lines[0] and "no Q-Former" in lines[0]
