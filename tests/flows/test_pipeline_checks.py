"""Checks the pipeline flow makes after ingest and before any stage trains."""

import json
from pathlib import Path

import pytest

from data_specs.loader import SpecError
from data_specs.pipelines import load_pipeline

DEMO = Path(__file__).resolve().parents[2] / "data_specs" / "pipelines" / "shapes_demo.yaml"


def test_a_split_the_ingested_source_lacks_fails_before_training(tmp_path):
    from flows.pipeline import check_ingested_splits

    rp = load_pipeline(DEMO)
    data = tmp_path / "shapes_world"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps({"splits": {"train": 5}}))  # the held-out scenes failed
    with pytest.raises(SpecError) as err:
        check_ingested_splits(rp, {"shapes_world": str(data)})
    assert (
        str(err.value)
        == f"{DEMO}: evaluation.split: source shapes_world has no 'heldout' samples; it has train"
    )
    (data / "manifest.json").write_text(json.dumps({"splits": {"train": 5, "heldout": 2}}))
    check_ingested_splits(rp, {"shapes_world": str(data)})
