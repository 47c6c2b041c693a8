"""Fixtures of the ingest tests: spec files in tmp folders, loopback servers, and one real
shapes-world ingest (img2dataset in its worker process) shared by the tests that read it."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from ingest_helpers import FAST_DOWNLOAD, SHAPES, spec_file

from data_specs.sources import load_source_spec
from tasks.ingest import ingest_source


@pytest.fixture
def write_spec(tmp_path: Path) -> Callable[..., Path]:
    return lambda name="src", **fields: spec_file(tmp_path / "specs", name, **fields)


@pytest.fixture(scope="session")
def shapes_ingest(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One real ingest of 80 shapes-world images in 3 shards (also written as parquet)."""
    root = tmp_path_factory.mktemp("shapes")
    path = spec_file(
        root,
        "shapes_test",
        kind="shapes_world",
        shapes_world=SHAPES,
        encode_format="png",
        encode_quality=1,
        number_sample_per_shard=32,
        min_success_rate=1.0,
        output_format=["webdataset", "parquet"],
        **FAST_DOWNLOAD,
    )
    spec = load_source_spec(path)
    lines: list[str] = []
    manifest = ingest_source(spec, root / "out", log=lines.append, progress_s=1.0)
    return {"spec": spec, "spec_path": path, "dir": root / "out", "manifest": manifest, "log": lines}


@pytest.fixture(scope="session")
def prefect_api():
    """Prefect's local API for the flow tests (one temporary server per test session)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield
