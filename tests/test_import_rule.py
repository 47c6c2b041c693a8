"""Imports only go down (README, "Layout"): flows -> tasks -> model and data_specs; data_specs may use
model; model uses nothing else of ours. Inside tasks/, training and evaluation are leaves: nothing
but flows imports them, and neither imports the other. Every import counts, those inside
functions too."""

from __future__ import annotations

import ast
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
