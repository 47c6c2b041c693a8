"""Shared fixtures: shapes-world records made in memory (for tests of what comes after ingest;
the ingest itself is tested against a real img2dataset download in tests/ingest)."""

import pytest

from tasks.data import records


@pytest.fixture(scope="session")
def shapes_records():
    from tasks.shapes_world import in_memory_records

    return in_memory_records(160, 24, seed=3)


@pytest.fixture
def shapes_source(shapes_records):
    """A fake data dir name whose records are served from memory to build_pools."""
    train = [r for r in shapes_records if r["split"] == "train"]
    heldout = [r for r in shapes_records if r["split"] == "heldout"]
    records.MEMORY_SOURCES[("mem-shapes", "train")] = train
    records.MEMORY_SOURCES[("mem-shapes", "heldout")] = heldout
    yield {"shapes_world": "mem-shapes"}
    records.MEMORY_SOURCES.pop(("mem-shapes", "train"), None)
    records.MEMORY_SOURCES.pop(("mem-shapes", "heldout"), None)
