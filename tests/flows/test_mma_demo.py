"""The MM-Adapter demo variant (data_specs/pipelines/shapes_demo_mma.yaml), shrunk, end to end: stages
2-4 train `mm_adapter` (never `lora`), text-only samples share packed rows with image samples, the
evaluation reports text-only answers, and `vlmpipe chat` answers a text-only prompt from the result."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.pipelines import ROOT, STAGES, env_for, mini_pipeline

pytestmark = pytest.mark.slow


def test_the_mm_adapter_demo_runs_end_to_end_and_answers_text_only_prompts(tmp_path):
    import safetensors

    home = tmp_path / "home"
    spec = mini_pipeline(tmp_path, "shapes_demo_mma.yaml")
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
    assert [s["stage"] for s in summary["stages"]] == STAGES
    final = Path(summary["stages"][-1]["checkpoint"])
    manifest = json.loads((final / "checkpoint.json").read_text())
    assert "mm_adapter" in manifest["groups"] and "lora" not in manifest["groups"]
    with safetensors.safe_open(str(final / "weights.safetensors"), "pt") as weights:
        names = list(weights.keys())
    assert any(".mm_adapter.layers." in n for n in names) and not any("lora_" in n for n in names)
    assert 0.0 <= summary["metrics"]["text_accuracy"] <= 1.0
    assert 0.0 <= summary["metrics"]["vqa_accuracy"] <= 1.0

    chat = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "chat",
            str(final),
            "--prompt",
            "a red circle at the top. what colour is the shape at the top?",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env_for(home),
        timeout=300,
    )
    assert chat.returncode == 0 and len(chat.stdout.splitlines()) == 1, chat.stderr[-2000:]
