"""The command line as a whole: what `--help` loads, and what a runtime failure shows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("argv", [["--help"], ["spec", "--help"], ["spec", "validate", "--help"]])
def test_help_loads_neither_prefect_nor_torch(argv):
    script = (
        f"import sys\nfrom flows.cli import main\ntry:\n    main({argv!r})\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'mlflow', 'pydantic') if m in sys.modules))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_runtime_failure_is_one_line_and_its_traceback_goes_to_a_log(tmp_path):
    bad = tmp_path / "gqa.json"
    bad.write_text('{"q1": {"question": "what?", "answer": 3}}')  # answer is not text
    stage = ROOT / "data_specs" / "stages" / "stage4_multitask.yaml"
    text = stage.read_text()
    start, end = text.index("  datasets:\n"), text.index("trainable:")
    text = (
        text[:start]
        + f"  datasets:\n    - {{name: g, format: gqa, annotations: {bad}, task: vqa, weight: 1}}\n"
        + text[end:]
    )
    spec = tmp_path / "stage.yaml"
    spec.write_text(text)
    proc = subprocess.run(
        [sys.executable, "-m", "flows.cli", "spec", "preview", str(spec), "--home", str(tmp_path / "home")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    log = lines[0].rsplit("(traceback: ", 1)[1].rstrip(")")
    assert Path(log).parent == tmp_path / "home" / "logs" and "Traceback" in Path(log).read_text()
