"""Frozen-feature cache over real shards: keyed by sample key, equal to the towers' output, computed
once, and tied to preset, image size and tower weights."""

from __future__ import annotations

import json

import pytest
import torch
from ingest_helpers import spec_file

from data_specs.sources import FeatureCacheSpec, load_source_spec
from model import get_preset
from tasks.ingest import read_records
from tasks.ingest.features import build_feature_cache, build_towers, find_feature_cache, read_feature_cache

pytestmark = pytest.mark.slow
TINY_PX = get_preset("tiny").image_size


def _with_cache(spec, **fields):
    return spec.model_copy(update={"feature_cache": FeatureCacheSpec(**fields)})


def test_cache_matches_the_towers_and_is_computed_once(shapes_ingest):
    spec, out = _with_cache(shapes_ingest["spec"], batch_size=16), shapes_ingest["dir"]
    summary = build_feature_cache(spec, out, log=lambda _: None)
    assert summary["encoded"] == summary["samples"] == shapes_ingest["manifest"]["totals"]["success"]
    cached = dict(read_feature_cache(summary["path"]))
    records = {r["key"]: r for r in read_records(out)}
    assert set(cached) == set(records)

    towers = build_towers(FeatureCacheSpec())
    keys = list(records)[:10]
    expected = towers(towers.preprocess([records[k]["image"] for k in keys]))
    got = torch.stack([cached[k] for k in keys])
    preset = get_preset("tiny")
    assert got.dtype == torch.float16 and got.shape == (10, preset.num_query_tokens, preset.qformer_hidden)
    torch.testing.assert_close(got.float(), expected, atol=2e-3, rtol=2e-3)

    again = build_feature_cache(spec, out, log=lambda _: None)
    assert again["encoded"] == 0 and again["path"] == summary["path"]
    # a shard whose tar changed is encoded again, and only that one
    index_path = f"{summary['path']}/index.json"
    index = json.load(open(index_path))
    index["shards"]["00001"]["source_sha256"] = "0" * 64
    json.dump(index, open(index_path, "w"))
    assert build_feature_cache(spec, out, log=lambda _: None)["encoded"] == 32


def test_cache_is_tied_to_preset_image_size_and_weights(shapes_ingest):
    out = shapes_ingest["dir"]
    base = build_feature_cache(_with_cache(shapes_ingest["spec"]), out, log=lambda _: None)
    smaller = build_feature_cache(_with_cache(shapes_ingest["spec"], image_size=16), out, log=lambda _: None)
    reseeded = build_feature_cache(_with_cache(shapes_ingest["spec"], seed=1), out, log=lambda _: None)
    assert len({base["path"], smaller["path"], reseeded["path"]}) == 3
    assert f"tiny-{TINY_PX}px-float16" in base["cache_id"] and "tiny-16px-float16" in smaller["cache_id"]
    digest = build_towers(FeatureCacheSpec(seed=1)).digest()
    assert str(find_feature_cache(out, "tiny", TINY_PX, digest)) == reseeded["path"]
    assert find_feature_cache(out, "tiny", 2 * TINY_PX, digest) is None


def test_flow_builds_the_cache_when_the_spec_asks(shapes_ingest, prefect_api, tmp_path):
    from flows.ingest import ingest_flow

    fields = load_source_spec(shapes_ingest["spec_path"]).model_dump(mode="json", exclude={"name"})
    fields["feature_cache"] = {"preset": "tiny", "seed": 3}  # not shard-shaping: the shards are reused
    path = spec_file(tmp_path, "shapes_test", **fields)
    summary = ingest_flow(str(path), str(shapes_ingest["dir"]))
    assert summary["feature_cache"]["samples"] == summary["samples"]
    assert summary["feature_cache"]["cache_id"].startswith(f"tiny-{TINY_PX}px-float16-")
