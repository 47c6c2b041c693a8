"""Helpers shared by the ingest tests (a module of its own: test files cannot import a conftest)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml

# small and quick: img2dataset's start-up (~10 s) dominates every real ingest here
# the loopback test servers are private addresses, which web sources refuse unless allowed by name
FAST_DOWNLOAD = {
    "processes_count": 1,
    "thread_count": 8,
    "timeout": 2,
    "image_size": 32,
    "allowed_hosts": ["127.0.0.1"],
}
SHAPES = {"num_train": 60, "num_heldout": 20, "seed": 7, "canvas_size": 64, "max_shapes": 3}


def spec_file(folder: Path, name: str = "src", **fields) -> Path:
    """Write a source spec YAML into `folder` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"name": name, **fields}, sort_keys=False))
    return path


def url_list_file(folder: Path, rows: list[dict], name: str = "urls.parquet") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path
