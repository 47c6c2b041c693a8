"""Imports only go down (README, "Layout"): flows -> tasks -> model and data_specs; data_specs may use
model; model uses nothing else of ours. Inside tasks/, training and evaluation are leaves: nothing
but flows imports them, and neither imports the other. Every import counts, those inside
functions too."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flows", "tasks", "model", "data_specs")
# what each top-level package may import of ours
ALLOWED = {
    "flows": {"flows", "tasks", "model", "data_specs"},
    "tasks": {"tasks", "model", "data_specs"},
    "data_specs": {"data_specs", "model"},
    "model": {"model"},
}
LEAVES = ("tasks.train", "tasks.evaluate")  # only flows (and the leaf itself) import these


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, module: str) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in the file, relative ones resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from tasks import shapes_world` imports the module tasks.shapes_world
            out += [(node.lineno, f"{target}.{alias.name}") for alias in node.names]
    return out


def violations(root: Path) -> list[str]:
    found = []
    for top in PACKAGES:
        for path in sorted((root / top).rglob("*.py")):
            module = module_name(root, path)
            for line, target in imported_modules(path, module):
                first = target.split(".")[0]
                where = f"{path.relative_to(root)}:{line}"
                if first in ALLOWED and first not in ALLOWED[top]:
                    found.append(f"{where}: {module} ({top}) imports {target} ({first})")
                    continue
                for leaf in LEAVES:
                    inside = module == leaf or module.startswith(leaf + ".")
                    if (target == leaf or target.startswith(leaf + ".")) and top == "tasks" and not inside:
                        found.append(f"{where}: {module} imports {target}, a leaf only flows may import")
    return found


def test_every_import_goes_down():
    assert violations(ROOT) == []


@pytest.mark.parametrize(
    ("file", "line"),
    [
        ("model/bad.py", "def f():\n    from tasks.state import vlmpipe_home\n"),
        ("model/bad.py", "from flows.cli import main\n"),
        ("data_specs/bad.py", "import tasks.data.examples\n"),
        ("tasks/bad.py", "from flows import pipeline\n"),
        ("tasks/data/bad.py", "from tasks.train.stage import train_stage\n"),
        ("tasks/evaluate/bad.py", "from ..train import stage\n"),
    ],
)
def test_a_wrong_direction_import_is_caught(tmp_path, file, line):
    for top in PACKAGES:
        (tmp_path / top).mkdir()
        (tmp_path / top / "__init__.py").write_text("")
    for sub in ("tasks/data", "tasks/train", "tasks/evaluate"):
        (tmp_path / sub).mkdir()
        (tmp_path / sub / "__init__.py").write_text("")
    (tmp_path / file).write_text(line)
    found = violations(tmp_path)
    assert len(found) == 1 and found[0].startswith(f"{file}:"), found


def test_flows_may_import_every_room(tmp_path):
    for top in PACKAGES:
        (tmp_path / top).mkdir()
    (tmp_path / "flows" / "ok.py").write_text(
        "from tasks.train.stage import train_stage\nfrom model import build\nimport data_specs.registry\n"
    )
    assert violations(tmp_path) == []


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
    """(Here because it is about the command line as a whole, like --help above.)"""
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
