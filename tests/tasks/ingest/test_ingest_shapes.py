"""A real shapes-world ingest (img2dataset against the loopback server): shards, manifest, reading
back, resuming a finished ingest, and finding and redoing corrupt shards."""

from __future__ import annotations

import hashlib
import json
import shutil
import tarfile

import pyarrow.parquet as pq
import pytest
from ingest_helpers import SHAPES

from tasks import shapes_world as sw
from tasks.ingest import ingest_source, read_records

pytestmark = pytest.mark.slow
N = SHAPES["num_train"] + SHAPES["num_heldout"]


def test_manifest_counts_equal_what_the_server_served(shapes_ingest):
    manifest, out = shapes_ingest["manifest"], shapes_ingest["dir"]
    assert manifest["loopback_served"] == {"ok": N}
    assert manifest["totals"] | {"bytes": 0} == {
        "urls": N,
        "success": N,
        "failed_to_download": 0,
        "failed_to_resize": 0,
        "success_rate": 1.0,
        "bytes": 0,
        "skipped_rows": 0,
    }
    assert manifest["errors"] == {} and manifest["reasons"] == {}
    assert manifest["splits"] == {"heldout": SHAPES["num_heldout"], "train": SHAPES["num_train"]}
    assert [s["urls"] for s in manifest["shards"]] == [32, 32, 16]
    assert json.loads((out / "manifest.json").read_text())["digest"] == manifest["digest"]
    for shard in manifest["shards"]:
        tar = out / shard["path"]
        assert tar.stat().st_size == shard["bytes"]
        assert hashlib.sha256(tar.read_bytes()).hexdigest() == shard["sha256"]
        with tarfile.open(tar) as t:
            names = t.getnames()
        assert len(names) == 3 * shard["samples"]  # png + json + txt per image
        assert (out / shard["meta"]).is_file()
    assert any("shards" in line for line in shapes_ingest["log"])  # progress was reported
    assert manifest["throughput"]["images_per_s"] > 0


def test_parquet_output_when_asked(shapes_ingest):
    files = sorted((shapes_ingest["dir"] / "parquet").glob("*.parquet"))
    assert len(files) == 3
    rows = [r for f in files for r in pq.read_table(f).to_pylist()]
    assert len(rows) == N and {r["source_key"] for r in rows} == {s.key for s in sw.generate_scenes(**SHAPES)}
    assert rows[0]["png"].startswith(b"\x89PNG")


def test_read_records_returns_annotations_intact_and_splits_apart(shapes_ingest):
    out = shapes_ingest["dir"]
    scenes = {s.key: s for s in sw.generate_scenes(**SHAPES)}
    heldout = list(read_records(out, split="heldout"))
    train = list(read_records(out, split="train"))
    assert [r["key"] for r in heldout] == [k for k in scenes if k.startswith("sw-heldout")]
    assert [r["key"] for r in train] == [k for k in scenes if k.startswith("sw-train")]
    assert [r["key"] for r in read_records(out)] == list(scenes)  # fixed order: the URL list's
    for record in train + heldout:
        scene = scenes[record["key"]]
        ann = sw.scene_annotations(scene)
        assert record["annotations"] == ann and record["split"] == scene.split
        assert record["caption"] == sw.caption(ann)
        image = record["image"]
        assert image.mode == "RGB" and image.size == (32, 32)
        for item in ann["shapes"]:  # the stored 32-px pixels still show each shape's colour
            x1, y1, x2, y2 = (round(v * 32 / 100) for v in item["box"])
            pixel = image.getpixel(((x1 + x2) // 2, (y1 + y2) // 2))
            nearest = min(
                sw.COLOURS, key=lambda c: sum((a - b) ** 2 for a, b in zip(sw.COLOURS[c], pixel, strict=True))
            )
            assert nearest == item["colour"]


def test_rerun_of_a_finished_ingest_downloads_nothing(shapes_ingest):
    before = shapes_ingest["manifest"]
    after = ingest_source(shapes_ingest["spec"], shapes_ingest["dir"], log=lambda _: None)
    assert after["rounds"] == [] and after["digest"] == before["digest"]
    assert after["loopback_served"] == {}  # nothing was fetched again


def test_corrupt_and_missing_shards_are_found_and_redone(shapes_ingest, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shapes_ingest["dir"], out)
    before = shapes_ingest["manifest"]["shards"]
    tar1 = out / before[1]["path"]
    tar1.write_bytes(tar1.read_bytes()[: before[1]["bytes"] // 2])  # truncated, its stats still there
    (out / before[2]["path"]).unlink()  # tar gone, stats still there
    lines: list[str] = []
    manifest = ingest_source(shapes_ingest["spec"], out, log=lines.append, progress_s=1.0)
    assert any("shard 00001 is invalid" in line for line in lines)
    assert any("shard 00002 is invalid" in line for line in lines)
    assert [r["shards"] for r in manifest["rounds"]] == [2]  # only the two bad shards were downloaded
    assert manifest["shards"][0]["sha256"] == before[0]["sha256"]
    assert manifest["totals"]["success"] == N and manifest["loopback_served"] == {"ok": 48}
    assert len(list(read_records(out))) == N


def test_a_changed_shard_shaping_setting_starts_afresh(shapes_ingest, tmp_path):
    out = tmp_path / "copy"
    shutil.copytree(shapes_ingest["dir"], out)
    regrouped = shapes_ingest["spec"].model_copy(update={"number_sample_per_shard": 40})
    lines: list[str] = []
    manifest = ingest_source(regrouped, out, log=lines.append)
    assert any("starting the shards afresh" in line for line in lines)
    assert [s["urls"] for s in manifest["shards"]] == [40, 40]
    assert sorted(p.name for p in (out / "shards").glob("*.tar")) == ["00000.tar", "00001.tar"]
    assert [r["key"] for r in read_records(out)] == [s.key for s in sw.generate_scenes(**SHAPES)]


def test_a_second_ingest_into_one_folder_waits_for_the_first_then_reuses_its_shards(shapes_ingest):
    import fcntl
    import threading
    import time

    from tasks.ingest import IngestError

    lines: list[str] = []
    with open(shapes_ingest["dir"] / ".lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(IngestError, match="another ingest is writing into"):
            ingest_source(shapes_ingest["spec"], shapes_ingest["dir"], log=lines.append, wait_s=0.5)
        assert any("waiting up to 0.5 s" in line for line in lines)
        threading.Timer(1.5, held.close).start()  # the first ingest ends
        started = time.monotonic()
        manifest = ingest_source(shapes_ingest["spec"], shapes_ingest["dir"], log=lines.append, wait_s=60)
    assert 1.0 < time.monotonic() - started < 30
    assert manifest["totals"]["success"] == shapes_ingest["manifest"]["totals"]["success"]
    assert not any("downloading" in line for line in lines)  # the first one's shards, reused


def test_in_memory_records_match_the_downloaded_ones(shapes_ingest):
    import numpy as np

    downloaded = list(read_records(shapes_ingest["dir"]))
    in_memory = sw.in_memory_records(
        SHAPES["num_train"], SHAPES["num_heldout"], SHAPES["seed"], image_size=32
    )
    assert [(r["key"], r["split"], r["caption"], r["annotations"]) for r in in_memory] == [
        (r["key"], r["split"], r["caption"], r["annotations"]) for r in downloaded
    ]
    for a, b in zip(in_memory[:20], downloaded[:20], strict=True):
        diff = np.abs(np.asarray(a["image"], dtype=float) - np.asarray(b["image"], dtype=float))
        assert a["image"].size == b["image"].size and diff.mean() < 2.0  # cv2 area vs PIL box resize
