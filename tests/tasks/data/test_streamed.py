"""The streamed data path on real webdataset shards: the on-disk index, loader workers, exact
resume, bounded memory pieces, cached frozen features, and block-sparse packed attention."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

from data_specs.pipelines import ModelSpec
from data_specs.sources import FeatureCacheSpec, load_source_spec
from data_specs.stages import load_stage_spec
from model.build import build_model
from tasks.data.features import FeatureCacheError, select_feature_readers
from tasks.data.mixture import Permutation
from tasks.data.records import SourceRecords
from tasks.data.stage_data import LRUCache, StageData, StageLoader, build_pools
from tasks.ingest import read_records
from tasks.ingest.outputs import write_records_as_source
from tasks.shapes_world import in_memory_records, tokenizer_corpus

SPECS = Path(__file__).resolve().parents[3] / "data_specs"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("stream") / "shapes"
    write_records_as_source(in_memory_records(120, 10, seed=4), out, source="shapes_world", per_shard=50)
    return out


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    built, _ = build_model(ModelSpec(preset="tiny", seed=0), tokenizer_corpus=tokenizer_corpus)
    built.model.eval()
    return built


def stage4(workers: int = 0, **changes):
    stage = load_stage_spec(SPECS / "stages" / "stage4_multitask.yaml")
    stage.loader.workers = workers
    for name, value in changes.items():
        setattr(stage, name, value)
    return stage


def test_the_index_serves_exactly_what_read_records_reads(source):
    records = SourceRecords(source, "train")
    expected = list(read_records(source, split="train"))
    assert len(records) == len(expected) == 120
    for i in (0, 49, 50, 119):
        meta = records.meta(i)
        assert (meta["key"], meta["caption"], meta["annotations"]) == (
            expected[i]["key"],
            expected[i]["caption"],
            expected[i]["annotations"],
        )
        assert records.image(i).tobytes() == expected[i]["image"].tobytes()
    assert len(SourceRecords(source, "heldout")) == 10
    assert len(SourceRecords(source, "nonexistent")) == 0
    # the arrays are memory-mapped, not loaded
    assert isinstance(records._images, __import__("numpy").memmap)


def test_a_changed_shard_gets_a_new_index(tmp_path):
    out = tmp_path / "src"
    write_records_as_source(in_memory_records(20, 0, seed=1), out, source="s", per_shard=10)
    first = SourceRecords(out).folder
    write_records_as_source(in_memory_records(30, 0, seed=2), out, source="s", per_shard=10)
    second = SourceRecords(out)
    assert second.folder != first and len(second) == 30


def test_the_permutation_is_a_bijection_for_every_size_and_seeded():
    for size in (1, 2, 3, 7, 64, 100, 1000):
        perm = Permutation(size, "k")
        assert sorted(perm[i] for i in range(size)) == list(range(size))
    a = [Permutation(1000, "a")[i] for i in range(50)]
    assert a == [Permutation(1000, "a")[i] for i in range(50)]
    assert a != [Permutation(1000, "b")[i] for i in range(50)]
    assert a != list(range(50))


def test_the_image_cache_keeps_to_its_byte_budget():
    cache = LRUCache(max_bytes=10 * 400)  # ten 100-float tensors
    for i in range(25):
        cache.put(i, torch.zeros(100))
        cache.get(0)  # the one in constant use stays
    assert len(cache) == 10 and cache.bytes <= 4000 and cache.get(0) is not None and cache.get(1) is None
    assert LRUCache(0).put("a", torch.zeros(1)) is None and len(LRUCache(0)) == 0


def _batches(loader: StageLoader, n: int):
    out = []
    for _ in range(n):
        loaded = next(loader)
        out.append((loaded.batch.input_ids.clone(), None if loaded.images is None else loaded.images.clone()))
    return out


def _same(a, b) -> None:
    assert len(a) == len(b)
    for (ids_a, img_a), (ids_b, img_b) in zip(a, b, strict=True):
        assert torch.equal(ids_a, ids_b)
        assert (img_a is None) == (img_b is None)
        if img_a is not None:
            assert torch.equal(img_a, img_b)


def test_loader_workers_give_the_batches_and_images_of_the_in_process_path(tiny, source):
    def run(workers: int):
        stage = stage4(workers)
        data = StageData.for_model(stage, build_pools(stage, {"shapes_world": source}), tiny, rows=2)
        loader = StageLoader(data, lambda b: b)
        try:
            return _batches(loader, 4)
        finally:
            loader.close()

    _same(run(0), run(2))


def test_a_resumed_stream_gives_the_batches_of_one_never_stopped(tiny, source):
    """The workers run ahead of the step; the saved state is the step's, not the lookahead's."""
    stage = stage4(2)
    dirs = {"shapes_world": source}
    first = StageLoader(StageData.for_model(stage, build_pools(stage, dirs), tiny, rows=2), lambda b: b)
    _batches(first, 3)
    state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint holds
    expected = _batches(first, 4)
    first.close()
    data = StageData.for_model(stage, build_pools(stage, dirs), tiny, rows=2)
    data.load_state_dict(state)
    resumed = StageLoader(data, lambda b: b)
    _same(_batches(resumed, 4), expected)
    resumed.close()


def test_each_rank_loads_only_the_images_of_its_rows(tiny, source):
    from tasks.train.recipe import split_rows

    stage = stage4(1)
    dirs = {"shapes_world": source}
    whole = StageData.for_model(stage, build_pools(stage, dirs), tiny, rows=4)
    batch, pixels = whole.next_batch()
    got = []
    for rank in range(2):
        data = StageData.for_model(stage, build_pools(stage, dirs), tiny, rows=4)
        loader = StageLoader(data, lambda b, r=rank: split_rows(b, 2, r))
        loaded = next(loader)
        loader.close()
        assert torch.equal(loaded.batch.input_ids, batch.input_ids)
        assert loaded.images.shape[0] == len(split_rows(batch, 2, rank).images)
        got.append(loaded.images)
    assert torch.equal(torch.cat(got), pixels)


# -- cached frozen features ------------------------------------------------------------------------


def _cache(tiny, source: Path, dtype: str = "float32") -> Path:
    from tasks.ingest.features import Towers, build_feature_cache

    spec = load_source_spec(SPECS / "sources" / "shapes_world.yaml")
    spec.feature_cache = FeatureCacheSpec(preset="tiny", dtype=dtype, device="cpu", batch_size=32)
    towers = Towers(tiny.model.vision, tiny.model.qformer, tiny.preprocess, "tiny", tiny.preset.image_size)
    return Path(build_feature_cache(spec, source, towers=towers, log=lambda _m: None)["path"])


def test_cached_features_give_the_same_loss_as_pixels(tiny, source):
    from tasks.train import recipe

    _cache(tiny, source)
    stage = load_stage_spec(SPECS / "stages" / "stage1_warmup.yaml")  # towers frozen
    dirs = {"shapes_world": source}
    lines: list[str] = []
    pools = build_pools(stage, dirs)
    readers = select_feature_readers(stage, pools, tiny.model, lines.append)
    assert readers and "reading cached frozen features" in lines[-1]
    with_features = StageData.for_model(stage, pools, tiny, rows=4, features=readers)
    with_pixels = StageData.for_model(stage, build_pools(stage, dirs), tiny, rows=4)
    assert with_features.uses_features and not with_pixels.uses_features
    for _ in range(2):
        batch, features = with_features.next_batch()
        same_batch, pixels = with_pixels.next_batch()
        assert torch.equal(batch.input_ids, same_batch.input_ids)
        assert features.shape[-1] == tiny.preset.qformer_hidden and pixels.dim() == 4
        with torch.no_grad():
            cached, _ = recipe.forward_losses(
                tiny.model, stage, batch, features, torch.device("cpu"), None, features=True
            )
            computed, _ = recipe.forward_losses(tiny.model, stage, batch, pixels, torch.device("cpu"), None)
        torch.testing.assert_close(cached, computed, rtol=1e-5, atol=1e-4)


def test_a_stage_trained_from_cached_features_follows_the_pixel_stage(tiny, source, tmp_path):
    from tasks.train.stage import train_stage

    _cache(tiny, source)  # the towers of ModelSpec(tiny, seed 0), which train_stage builds again
    runs = {}
    for mode in ("off", "require"):
        stage = load_stage_spec(SPECS / "stages" / "stage1_warmup.yaml")
        stage.schedule.steps, stage.schedule.batch_size, stage.log_every = 3, 4, 1
        stage.frozen_features = mode
        stage.loader.workers = 1
        lines: list[str] = []
        train_stage(
            stage,
            ModelSpec(preset="tiny", seed=0),
            data_dirs={"shapes_world": str(source)},
            output_dir=tmp_path / mode,
            log=lines.append,
        )
        runs[mode] = [
            float(m.group(1)) for line in lines if (m := re.search(r"step \d+/\d+ loss ([0-9.]+)", line))
        ]
        if mode == "require":
            assert any("reading cached frozen features" in line for line in lines)
    assert len(runs["off"]) == 3
    assert runs["off"] == pytest.approx(runs["require"], abs=2e-3)


def test_a_stale_or_foreign_cache_is_refused_with_one_line(tiny, source, tmp_path):
    folder = _cache(tiny, source)
    stage = load_stage_spec(SPECS / "stages" / "stage1_warmup.yaml")
    pools = build_pools(stage, {"shapes_world": source})

    # other tower weights
    torch.manual_seed(0)
    other, _ = build_model(ModelSpec(preset="tiny", seed=1), tokenizer_corpus=tokenizer_corpus)
    lines: list[str] = []
    assert select_feature_readers(stage, pools, other.model, lines.append) == {}
    assert len(lines) == 1 and "other tower weights" in lines[0] and "reading pixels" in lines[0]
    stage.frozen_features = "require"
    with pytest.raises(FeatureCacheError, match="frozen_features: require.*other tower weights"):
        select_feature_readers(stage, pools, other.model, lines.append)

    # a shard changed after the cache was made
    index_path = folder / "index.json"
    saved = index_path.read_text()
    index = json.loads(saved)
    next(iter(index["shards"].values()))["source_sha256"] = "0" * 64
    index_path.write_text(json.dumps(index))
    try:
        with pytest.raises(FeatureCacheError, match=r"stale: shard \d+ changed"):
            select_feature_readers(stage, pools, tiny.model, lines.append)
    finally:
        index_path.write_text(saved)

    # a stage that trains a tower never reads features, and says so when told to
    stage.trainable = ["vision", "projection"]
    with pytest.raises(FeatureCacheError, match="trains vision"):
        select_feature_readers(stage, pools, tiny.model, lines.append)
    # nor one that trains MM-Adapters inside the vision tower (LM-only adapters leave it frozen)
    stage.trainable = ["mm_adapter", "projection"]
    for vision in (True, False):
        spec = ModelSpec(preset="tiny", adapter="mm_adapter", mm_adapter={"vision": vision})
        adapted, _ = build_model(spec, tokenizer_corpus=tokenizer_corpus)
        assert hasattr(adapted.model.vision.vit, "mm_adapter") == vision
        if vision:
            with pytest.raises(FeatureCacheError, match="trains the vision tower's MM-Adapters"):
                select_feature_readers(stage, pools, adapted.model, lines.append)
        else:  # the same seed: the same towers, so the cache fits
            assert select_feature_readers(stage, pools, adapted.model, lines.append)


# -- packed attention without a dense mask ---------------------------------------------------------


def test_dense_and_block_sparse_attention_give_the_same_logits(tiny, source):
    stage = stage4(0)
    data = StageData.for_model(stage, build_pools(stage, {"shapes_world": source}), tiny, rows=2)
    batch, pixels = data.next_batch()
    assert int(batch.segment_ids.max()) >= 3  # several samples per row
    model = tiny.model
    results = {}
    with torch.no_grad():
        for mode in ("dense", "block_sparse"):
            model.set_packed_attention(mode)
            out = model(
                input_ids=batch.input_ids,
                pixel_values=pixels,
                segment_ids=batch.segment_ids,
                labels=batch.labels,
            )
            results[mode] = (out.logits, out.loss)
    model.set_packed_attention("dense")
    assert model.language_model.config._attn_implementation == "sdpa"
    real = batch.segment_ids > 0
    torch.testing.assert_close(
        results["dense"][0][real], results["block_sparse"][0][real], atol=2e-5, rtol=1e-4
    )
    torch.testing.assert_close(results["dense"][1], results["block_sparse"][1])


def test_block_sparse_attention_is_refused_for_training_on_the_cpu(tiny):
    from tasks.train import recipe

    stage = stage4(0, attention="block_sparse")
    with pytest.raises(ValueError, match="attention: block_sparse trains on CUDA only"):
        recipe.packed_attention(stage, torch.device("cpu"))
    assert recipe.packed_attention(stage4(0), torch.device("cpu")) == "dense"


def test_a_source_without_any_cache_reads_pixels_silently_unless_features_are_required(tiny, tmp_path):
    out = tmp_path / "plain"
    write_records_as_source(in_memory_records(20, 0, seed=2), out, source="shapes_world", per_shard=10)
    stage = load_stage_spec(SPECS / "stages" / "stage1_warmup.yaml")
    pools = build_pools(stage, {"shapes_world": out})
    lines: list[str] = []
    assert select_feature_readers(stage, pools, tiny.model, lines.append) == {} and lines == []
    stage.frozen_features = "require"
    with pytest.raises(FeatureCacheError, match="has no feature cache"):
        select_feature_readers(stage, pools, tiny.model, lines.append)


def test_two_index_builds_at_once_agree_and_leave_nothing_half_written(tmp_path):
    import threading

    from tasks.data.records import build_index

    out = tmp_path / "src"
    write_records_as_source(in_memory_records(40, 0, seed=5), out, source="s", per_shard=10)
    folders: list[Path] = []
    threads = [threading.Thread(target=lambda: folders.append(build_index(out))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(folders)) == 1 and (folders[0] / "index.json").is_file()
    assert [p.name for p in (out / "index").iterdir()] == [folders[0].name]  # no temporary folder left
    assert len(SourceRecords(out)) == 40


def test_a_tampered_shard_or_index_fails_with_one_line_naming_the_file(tmp_path):
    out = tmp_path / "src"
    write_records_as_source(in_memory_records(20, 0, seed=6), out, source="s", per_shard=10)
    records = SourceRecords(out)
    shard, offset = records.shards[0], int(records._images[0][1])
    data = bytearray(shard.read_bytes())
    data[offset : offset + 64] = b"\0" * 64  # the image's bytes, in place (the manifest still agrees)
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match=r"00000\.tar: image of record 0 at byte \d+ does not decode"):
        SourceRecords(out).image(0)
    # through a loader worker the stage gets the same one line, not the worker's traceback
    stage = load_stage_spec(SPECS / "stages" / "stage1_warmup.yaml")
    stage.loader.workers = 1
    built, _ = build_model(ModelSpec(preset="tiny"), tokenizer_corpus=tokenizer_corpus, log=lambda _m: None)
    data = StageData.for_model(stage, build_pools(stage, {"shapes_world": out}), built, rows=8)
    loader = StageLoader(data, lambda b: b)
    with pytest.raises(ValueError) as caught:
        for _ in range(20):  # until a batch holds record 0
            next(loader)
    loader.close()
    assert "\n" not in str(caught.value) and "does not decode" in str(caught.value)
    meta = records.folder / "meta.jsonl"
    meta.write_bytes(b"#" + meta.read_bytes()[1:])
    with pytest.raises(ValueError, match=r"meta\.jsonl: record 0 is not the JSON the index wrote.*delete"):
        SourceRecords(out).meta(0)
