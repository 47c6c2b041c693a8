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


def _unshare_works() -> bool:
    probe = subprocess.run(["unshare", "-m", "true"], capture_output=True)
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(not _unshare_works(), reason="needs root and `unshare -m` (CI has both)")


@needs_mounts
def test_a_read_only_state_folder_is_named_in_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    demo = ROOT / "data_specs" / "pipelines" / "shapes_demo.yaml"
    script = (
        f"mount --bind -o ro {home} {home} && exec {sys.executable} -m flows.cli run {demo} --home {home}"
    )
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(home) in lines[0] and "Read-only file system" in lines[0], proc.stderr


FULL_DISK = """
import sys
sys.path.insert(0, {tests!r})
from conftest import sample_corpus
from model import VisionLanguageModel, get_preset, load_tokenizer, save_checkpoint
tok = load_tokenizer(get_preset("tiny"), corpus=sample_corpus())
save_checkpoint({target!r}, VisionLanguageModel.from_preset("tiny", tok), ["language_model"], tokenizer=tok)
"""


@needs_mounts
def test_a_full_disk_names_the_folder_and_leaves_nothing_half_written(tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    code = tmp_path / "save.py"
    code.write_text(
        FULL_DISK.format(tests=str(ROOT / "tests" / "model"), target=str(disk / "stage" / "checkpoint"))
    )
    script = f"mount -t tmpfs -o size=256k tmpfs {disk} && {sys.executable} {code}; find {disk} -mindepth 2"
    proc = subprocess.run(
        ["unshare", "-m", "sh", "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=300
    )
    assert f"CheckpointError: {disk / 'stage'}: cannot write checkpoint checkpoint (" in proc.stderr, (
        proc.stderr
    )
    assert "No space left on device" in proc.stderr
    assert proc.stdout.strip() == ""  # no staging folder, no partial checkpoint
