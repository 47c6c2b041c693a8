"""The data path training uses, end to end on real rendered samples: mixture -> template ->
tokens -> packing -> the tiny model. Packed logits equal solo logits; loss only on answers."""

from pathlib import Path

import pytest
import torch

from data_specs.pipelines import ModelSpec
from data_specs.stages import load_stage_spec
from model.build import build_model
from model.tokenizer import IGNORE_INDEX
from tasks.data.packing import collate
from tasks.data.preview import preview_stage
from tasks.data.stage_data import StageData, build_pools
from tasks.shapes_world import tokenizer_corpus

STAGE4 = Path(__file__).resolve().parents[3] / "data_specs" / "stages" / "stage4_multitask.yaml"


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    built, _ = build_model(ModelSpec(preset="tiny"), tokenizer_corpus=tokenizer_corpus)
    built.model.eval()
    return built


def stage_data(built, data_dirs, **kwargs) -> StageData:
    stage = load_stage_spec(STAGE4)
    return StageData.for_model(stage, build_pools(stage, data_dirs), built, **kwargs)


def test_packed_samples_give_the_same_logits_as_alone(tiny, shapes_source):
    data = stage_data(tiny, shapes_source, rows=2)
    batch, pixels = data.next_batch()
    assert batch.segment_ids.max() >= 3  # several samples share a row
    model = tiny.model
    with torch.no_grad():
        packed = model(input_ids=batch.input_ids, pixel_values=pixels, segment_ids=batch.segment_ids).logits
    image_index = 0
    checked = 0
    for row in range(batch.input_ids.shape[0]):
        for seg in range(1, int(batch.segment_ids[row].max()) + 1):
            cols = (batch.segment_ids[row] == seg).nonzero().flatten()
            ids = batch.input_ids[row, cols].unsqueeze(0)
            has_image = bool((ids == model.image_token_id).any())
            alone_pixels = pixels[image_index : image_index + 1] if has_image else None
            image_index += has_image
            with torch.no_grad():
                alone = model(input_ids=ids, pixel_values=alone_pixels).logits[0]
            torch.testing.assert_close(packed[row, cols], alone, atol=2e-5, rtol=1e-4)
            checked += 1
    assert checked == batch.num_samples and image_index == pixels.shape[0]


def test_labels_only_on_answer_tokens(tiny, shapes_source):
    data = stage_data(tiny, shapes_source, rows=2)
    batch, _ = data.next_batch()
    tok = tiny.tokenizer
    for row in range(batch.input_ids.shape[0]):
        labelled = batch.labels[row] != IGNORE_INDEX
        assert not labelled[batch.segment_ids[row] == 0].any()  # never on padding
        assert not labelled[batch.input_ids[row] == tiny.model.image_token_id].any()  # never on images
        text = tok.decode(batch.input_ids[row][labelled])
        assert "###Human" not in text and "Assistant" not in text and "[vqa]" not in text
        assert text.count("###") >= int(
            batch.segment_ids[row].max()
        )  # every answer closes with the end symbol
        assert text.endswith("###")


def test_iterator_state_restores_the_same_batches(tiny, shapes_source):
    a = stage_data(tiny, shapes_source, rows=3)
    for _ in range(2):
        a.next_batch()
    state = a.state_dict()
    expected = [a.next_batch()[0].input_ids for _ in range(3)]
    b = stage_data(tiny, shapes_source, rows=3)
    b.load_state_dict(state)
    for want in expected:
        assert torch.equal(b.next_batch()[0].input_ids, want)


def test_data_parallel_ranks_get_different_samples(tiny, shapes_source):
    seen = []
    for rank in range(2):
        data = stage_data(tiny, shapes_source, rows=2, rank=rank, world_size=2)
        seen.append({(r.dataset, r.example, r.draw) for r in data.sampler.take(50)})
    assert not seen[0] & seen[1]
    assert {d for _, _, d in seen[0]} == set(range(0, 100, 2))


def test_preview_of_demo_stage4_meets_shares_and_packing_targets(shapes_source):
    stage = load_stage_spec(STAGE4)
    result = preview_stage(stage, shapes_source, samples=4000, show=2)
    assert result["packing_efficiency"] >= 0.97
    for d in result["datasets"]:
        assert abs(d["realized_share"] - d["spec_share"]) < 0.01, d
    assert len(result["rendered"]) == 2 and "[[" in result["rendered"][0]
    unpacked = preview_stage(stage, shapes_source, samples=1000, show=0, packing=False)
    assert unpacked["packing_efficiency"] < result["packing_efficiency"]
    assert result["losses"] == ["next-token on answers"]


def test_preview_names_the_losses_of_a_contrastive_stage(shapes_source):
    stage = load_stage_spec(STAGE4.parent / "shapes_towers.yaml")
    result = preview_stage(stage, shapes_source, samples=200, show=0)
    assert result["losses"] == ["semantic_transform (image vs. all text of its sample)"]
    stage.autoregressive = True
    assert len(preview_stage(stage, shapes_source, samples=200, show=0)["losses"]) == 2


def test_collate_rejects_overflow():
    from tasks.data.packing import EncodedSample

    with pytest.raises(ValueError, match="overflows"):
        collate([[EncodedSample([1] * 5, [1] * 5)]], pad_id=0, length=4)
