"""The registry of official benchmarks: every entry complete, prompts that fill, and a package that keeps
to its imports (no torch, nothing from flows or tasks.train)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tasks.evaluate.official import BENCHMARKS, BenchmarkDataError, Item, OfficialBenchmark, get_benchmark

PACKAGE = Path(__file__).resolve().parents[4] / "tasks" / "evaluate" / "official"
ALLOWED_ROOTS = {"numpy", "pyarrow", "PIL", "tasks", "model", "data_specs", "__future__"}


def test_the_registry_holds_every_benchmark():
    assert set(BENCHMARKS) == {
        "gqa",
        "vsr",
        "iconqa",
        "vizwiz",
        "hateful_memes",
        "vqav2",
        "okvqa",
        "scienceqa_img",
        "coco_caption",
        "mme",
        "refcoco",
        "refcocop",
        "refcocog",
    }
    for name, bench in BENCHMARKS.items():
        assert isinstance(bench, OfficialBenchmark) and bench.name == name
        assert bench.task in {"vqa", "refer", "caption", "conversation"}
        assert bench.max_new_tokens > 0
        assert callable(bench.read) and callable(bench.extract) and callable(bench.score)
        assert bench.layout and "\n" not in bench.layout
        assert bench.paper_metric in {None, "accuracy"}
        if bench.task != "caption":
            assert "{question}" in bench.default_prompt
    assert [n for n, b in BENCHMARKS.items() if b.paper_metric] == [
        "gqa",
        "vsr",
        "iconqa",
        "vizwiz",
        "hateful_memes",
    ]
    assert BENCHMARKS["refcoco"].task == "refer" and BENCHMARKS["coco_caption"].task == "caption"
    assert BENCHMARKS["gqa"].unavailable() == {}


def test_get_benchmark_names_the_known_ones():
    assert get_benchmark("mme") is BENCHMARKS["mme"]
    with pytest.raises(KeyError, match="known: gqa, vsr"):
        get_benchmark("nope")


def test_prompts_fill_question_choices_and_context():
    item = Item(
        "1",
        None,
        "Which is a mammal?",
        ["shark", "whale"],
        1,
        {"context": "N/A", "subject": "natural science"},
    )
    prompt = BENCHMARKS["scienceqa_img"].format_prompt(item)
    assert prompt.startswith("Context: N/A\nWhich is a mammal?\nOptions: (A) shark (B) whale\n")
    iconqa = BENCHMARKS["iconqa"]
    assert "Options: (A) shark (B) whale" in iconqa.format_prompt(item)
    blank = Item("2", None, "How many dots?", None, "7", {"ques_type": "fill_in_blank"})
    assert iconqa.format_prompt(blank).endswith("short answer: How many dots?")
    assert BENCHMARKS["refcoco"].format_prompt(Item("3", None, "left man", None, (0, 0, 1, 1))) == (
        "give me the location of left man"
    )
    assert BENCHMARKS["gqa"].format_prompt(blank, "Q: {question}") == "Q: How many dots?"


def test_an_unknown_task_is_refused():
    with pytest.raises(ValueError, match="task 'ocr'"):
        OfficialBenchmark("x", "ocr", "{question}", 4, len, len, len, None, None, "layout")


def test_benchmark_data_error_is_both_kinds_and_one_line():
    exc = BenchmarkDataError("gqa: expected\n a.json in /x")
    assert isinstance(exc, FileNotFoundError) and isinstance(exc, ValueError)
    assert str(exc) == "gqa: expected a.json in /x"


def test_the_package_imports_only_what_it_may():
    for path in sorted(PACKAGE.glob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            else:
                continue
            for name in names:
                root = name.split(".")[0]
                assert root in ALLOWED_ROOTS or root in sys.stdlib_module_names, f"{path.name} imports {name}"
                assert not name.startswith("tasks.train"), f"{path.name} imports {name}"


def test_importing_the_package_does_not_import_torch():
    code = "import sys, tasks.evaluate.official; print('torch' in sys.modules)"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parents[2], check=True
    )
    assert out.stdout.strip() == "False"
