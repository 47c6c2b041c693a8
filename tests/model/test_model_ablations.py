"""The paper's ablations as model switches: each removes exactly its module, the rest of the model is
unchanged, a stage that names the removed group trains the others, and the ablated model trains."""

from __future__ import annotations

import pytest
import torch

from model import VisionLanguageModel
from model.presets import ABLATIONS
from model.trainable import group_of, set_trainable
from tests.model.conftest import TEST_LORA

STAGE4 = ["projection", "lora", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"]
# the parameters each ablation takes away, by name marker
REMOVED = {
    "lora": ".lora_",
    "input_layernorm": ".input_layernorm.",
    "post_attention_norm": ".post_attention_norm.",
    "qk_norm": "_layernorm.",  # q_layernorm and k_layernorm
}


def build(tokenizer, ablate=()):
    torch.manual_seed(0)
    return VisionLanguageModel.from_preset("tiny", tokenizer, lora=TEST_LORA, ablate=tuple(ablate))


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_each_ablation_removes_exactly_its_module(tokenizer, ablation):
    full, ablated = build(tokenizer), build(tokenizer, [ablation])
    # peft keeps an adapted Linear's own weight under `.base_layer`: the same weight, named apart
    names_full = {n.replace(".base_layer", ""): p.shape for n, p in full.named_parameters()}
    names_ablated = {n.replace(".base_layer", ""): p.shape for n, p in ablated.named_parameters()}
    gone = set(names_full) - set(names_ablated)
    assert not set(names_ablated) - set(names_full)  # nothing added
    assert gone and all(group_of(n) == ablation for n in gone), sorted(gone)[:5]
    marker = REMOVED[ablation]
    if ablation == "qk_norm":
        assert all(".q_layernorm." in n or ".k_layernorm." in n for n in gone)
        assert not ablated.language_model.config.qk_layernorm
    else:
        assert all(marker in n for n in gone)
    # every other parameter is kept with its shape
    assert all(names_ablated[n] == names_full[n] for n in names_ablated)
    assert ablated.config_summary()["ablated"] == [ablation]
    layer = ablated.language_model.model.layers[0]
    if ablation == "input_layernorm":
        assert isinstance(layer.input_layernorm, torch.nn.Identity)
    if ablation == "post_attention_norm":
        assert not hasattr(layer, "post_attention_norm")
        assert not layer.self_attn._forward_hooks  # nothing normalises the attention output
    if ablation == "lora":
        assert ablated.lora_settings is None


@pytest.mark.parametrize("ablation", ABLATIONS)
def test_a_stage_naming_an_ablated_group_trains_the_rest_and_the_model_learns(
    tokenizer, encode, images, ablation
):
    model = build(tokenizer, [ablation])
    lines = []
    counts = set_trainable(model, STAGE4, log=lines.append)
    assert counts[ablation] == 0
    assert any(line.startswith("[Ablated]") and ablation in line for line in lines)
    for group in set(STAGE4) - {ablation}:
        assert counts[group] > 0, group
    ids = torch.tensor([encode("{img} ###Human: what colour? ###Assistant: red###")])
    labels = ids.clone()
    pixels = images(1, seed=1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-3)
    losses = []
    for _ in range(8):
        opt.zero_grad()
        loss = model(ids, pixel_values=pixels, labels=labels).loss
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    for name, param in model.named_parameters():
        if group_of(name) not in STAGE4:
            assert param.grad is None, name


def test_unknown_ablations_and_a_group_no_ablation_explains_are_refused(tokenizer):
    with pytest.raises(ValueError, match="unknown ablation"):
        build(tokenizer, ["dropout"])
    model = VisionLanguageModel.from_preset("tiny", tokenizer, lora=None)  # no LoRA, not ablated
    with pytest.raises(ValueError, match=r"\['lora'\] have no parameters"):
        set_trainable(model, STAGE4, log=None)


def test_an_ablated_model_round_trips_through_a_checkpoint(tokenizer, tmp_path):
    from model.checkpoint import load_checkpoint, save_checkpoint

    model = build(tokenizer, ["qk_norm", "post_attention_norm"])
    with torch.no_grad():
        model.projection.proj_in.weight.add_(1.0)
    groups = [g for g in STAGE4 if g not in model.ablated]
    save_checkpoint(tmp_path / "ckpt", model, groups)
    other = build(tokenizer, ["qk_norm", "post_attention_norm"])
    info = load_checkpoint(tmp_path / "ckpt", other)
    assert set(info.groups) == set(groups)
    assert torch.equal(other.projection.proj_in.weight, model.projection.proj_in.weight)
