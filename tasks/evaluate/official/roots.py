"""Where each official benchmark's release sits under a data root, and reading its items (no torch,
no Prefect: `vlmpipe evaluate` checks every release with this before anything heavy starts)."""

from __future__ import annotations

from pathlib import Path

from . import BENCHMARKS

# the RefCOCO family shares one folder (and its COCO train2014 images)
FOLDERS = {name: name for name in BENCHMARKS} | {"refcocop": "refcoco", "refcocog": "refcoco"}


def benchmark_root(data_root: str | Path, name: str) -> Path:
    return Path(data_root) / FOLDERS[name]


def read_items(
    name: str, data_root: str | Path, split: str | None = None, max_items: int | None = None
) -> list:
    """The benchmark's items (BenchmarkDataError, one line naming the benchmark and the file, when
    the release is not where it should be)."""
    bench = BENCHMARKS[name]
    items = bench.read(benchmark_root(data_root, name), split or bench.default_split)
    return items[:max_items] if max_items else items
