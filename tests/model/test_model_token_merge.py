"""Visual tokens as a preset choice: BLIP-2's Q-Former or MiniGPT-v2's merge of adjacent ViT tokens.
Both build in the tiny and the real-size presets, both train on the shapes world, and the merge's
token count follows the image size."""

from __future__ import annotations

import pytest
import torch

from model import VisionLanguageModel, get_preset
from model.qformer import QueryTransformer, TokenMerge
from model.trainable import set_trainable


def test_the_merge_presets_have_no_qformer_and_a_wider_projection():
    tiny, merge = get_preset("tiny"), get_preset("tiny-merge")
    assert merge.visual_tokens == "merge" and merge.num_query_tokens == 64 // 4
    assert merge.bridge_width == 4 * tiny.vision_hidden
    assert merge.with_image_size(128).num_query_tokens == (128 // 8) ** 2 // 4
    assert tiny.with_image_size(128).num_query_tokens == tiny.num_query_tokens  # a Q-Former: fixed
    real = get_preset("tinygptv-phi2-merge")
    assert real.num_query_tokens == 64 and real.with_image_size(448).num_query_tokens == 256
    assert real.bridge_width == 4 * 1408


def test_token_merge_concatenates_adjacent_patches():
    merge = TokenMerge(4, 2)
    states = torch.arange(2 * 9 * 3, dtype=torch.float32).reshape(2, 9, 3)  # CLS + 8 patches of width 3
    out = merge(states)
    assert out.shape == (2, 2, 12)
    assert torch.equal(out[0, 1], states[0, 5:9].reshape(-1))  # patches 5-8 side by side
    with pytest.raises(ValueError, match="patch tokens"):
        merge(states[:, :5])


@pytest.mark.parametrize("preset", ["tiny", "tiny-merge"])
def test_both_compressions_train_on_the_shapes_world(tokenizer, preset, shapes_records):
    from model.image_processing import ImagePreprocessor
    from tasks import shapes_world

    torch.manual_seed(0)
    model = VisionLanguageModel.from_preset(preset, tokenizer, lora=None)
    bridge = QueryTransformer if preset == "tiny" else TokenMerge
    assert isinstance(model.qformer, bridge)
    q = model.image_tokens_per_image
    assert q == get_preset(preset).num_query_tokens
    groups = ["vision", "projection", "language_model"] + (["qformer"] if preset == "tiny" else [])
    set_trainable(model, groups, log=None)
    preprocess = ImagePreprocessor.from_preset(model.preset)
    records = [r for r in shapes_records if r["split"] == "train"][:6]
    image_id = model.image_token_id
    ids, labels = [], []
    for r in records:
        text = tokenizer(" " + shapes_world.caption(r["annotations"]) + "\n")["input_ids"]
        ids.append([image_id] * q + text)
        labels.append([-100] * q + text)
    width = max(len(i) for i in ids)
    pad = tokenizer.pad_token_id
    mask = torch.tensor([[1] * len(i) + [0] * (width - len(i)) for i in ids])
    labels_t = torch.tensor([row + [-100] * (width - len(row)) for row in labels])
    ids_t = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
    pixels = preprocess([r["image"] for r in records])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    losses = []
    for _ in range(12):
        opt.zero_grad()
        loss = model(ids_t, pixel_values=pixels, attention_mask=mask, labels=labels_t).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses
    assert model.projection.proj_in.weight.grad.abs().sum() > 0


def test_the_real_size_merge_preset_builds_on_the_meta_device(tokenizer):
    """tinygptv-phi2-merge at real size (meta device, no weights, no download): ViT-g, no Q-Former,
    a projection from 4 x 1408 to Phi-2's width, 256 image tokens at stage 4's 448 px."""
    preset = get_preset("tinygptv-phi2-merge").with_image_size(448)
    with torch.device("meta"):
        model = VisionLanguageModel(preset, 51200, image_token_id=51199, pad_token_id=0, lora=None)
    assert isinstance(model.qformer, TokenMerge) and not list(model.qformer.parameters())
    assert model.image_tokens_per_image == 256
    assert model.projection.proj_in.weight.shape == (4096, 4 * 1408)
    assert model.projection.proj_out.weight.shape == (2560, 4096)
    with torch.device("meta"):
        out = model.encode_images(torch.empty(1, 3, 448, 448))
    assert out.shape == (1, 256, 2560)


def test_a_stage_naming_the_qformer_trains_the_rest_on_a_merge_preset(tokenizer):
    """The towers' stage files name `qformer` for both kinds of preset; a merge has no weights there."""
    torch.manual_seed(0)
    model = VisionLanguageModel.from_preset("tiny-merge", tokenizer, lora=None)
    lines: list[str] = []
    counts = set_trainable(model, ["vision", "qformer", "projection"], log=lines.append)
    assert counts["qformer"] == 0 and counts["vision"] > 0 and counts["projection"] > 0
    assert any(line.startswith("[No weights] qformer") for line in lines)
    assert all(
        p.requires_grad == n.startswith(("vision.", "projection.")) for n, p in model.named_parameters()
    )
    # on the Q-Former preset the same list trains the Q-Former; naming an empty group is still refused
    tiny = VisionLanguageModel.from_preset("tiny", tokenizer, lora=None)
    assert set_trainable(tiny, ["vision", "qformer", "projection"], log=None)["qformer"] > 0
    with pytest.raises(ValueError, match=r"\['lora'\] have no parameters"):
        set_trainable(model, ["lora"], log=None)
