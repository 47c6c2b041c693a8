"""Parameter groups: full coverage, freezing per stage, gradients reaching exactly the chosen groups."""

from __future__ import annotations

import pytest
import torch

from model import GROUPS, group_of, group_state_dict, set_trainable

STAGE1 = ["projection", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"]
STAGE2 = [*STAGE1, "lora"]


def test_every_parameter_has_exactly_one_known_group(make_model):
    model = make_model()
    seen = {group_of(name) for name, _ in model.named_parameters()}
    assert seen == set(GROUPS) - {"mm_adapter"}  # and group_of raised for nothing (LoRA, not MMA)
    expected = {
        "vision.vit.embeddings.patch_embedding.weight": "vision",
        "qformer.query_tokens": "qformer",
        "projection.proj_out.weight": "projection",
        "language_model.model.layers.1.self_attn.q_proj.lora_A.default.weight": "lora",
        "language_model.model.layers.1.self_attn.q_proj.base_layer.weight": "language_model",
        "language_model.model.layers.1.self_attn.k_layernorm.bias": "qk_norm",
        "language_model.model.layers.1.post_attention_norm.weight": "post_attention_norm",
        "language_model.model.layers.1.input_layernorm.weight": "input_layernorm",
        "language_model.model.final_layernorm.bias": "final_layernorm",
        "language_model.model.embed_tokens.weight": "language_model",
        "language_model.lm_head.weight": "language_model",
    }
    names = dict(model.named_parameters())
    for name, group in expected.items():
        assert name in names
        assert group_of(name) == group
    with pytest.raises(KeyError):
        group_of("decoder.weight")


def test_unknown_group_is_rejected_with_the_known_ones(make_model):
    with pytest.raises(ValueError, match="known groups: vision, qformer"):
        set_trainable(make_model(), ["projection", "projector"])


def test_training_a_group_the_model_lacks_is_an_error(make_model):
    with pytest.raises(ValueError, match="lora"):
        set_trainable(make_model(lora=None), ["projection", "lora"], log=None)


def test_set_trainable_logs_one_line_per_group(make_model):
    lines = []
    counts = set_trainable(make_model(), STAGE1, log=lines.append)
    assert len(lines) == len(GROUPS) - 1  # every group the model has (LoRA, not the MM-Adapter)
    assert any(line.startswith("[TRAINABLE] projection") and line.endswith("params") for line in lines)
    assert any(line.startswith("[Frozen] vision") for line in lines)
    assert counts["vision"] == 0 and counts["projection"] > 0 and counts["lora"] == 0


@pytest.mark.parametrize(
    "groups", [STAGE1, STAGE2, ["qformer", "vision"]], ids=["stage1", "stage2", "towers"]
)
def test_gradients_reach_exactly_the_trainable_groups(make_model, encode, images, groups):
    model = make_model().train()
    set_trainable(model, groups, log=None)
    with_image = encode("{img} a red circle")
    text_only = encode("text only, no image here at all")[: len(with_image)]
    ids = torch.tensor([with_image, text_only])
    model(ids, images(1), labels=ids).loss.backward()
    for name, param in model.named_parameters():
        if group_of(name) in groups:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    # Something in every chosen group actually moves (LoRA A is zero-gradient only if B is zero).
    for group in groups:
        assert any(p.grad.abs().sum() > 0 for n, p in model.named_parameters() if group_of(n) == group), (
            f"no gradient signal reached {group}"
        )


def test_group_state_dict_selects_by_group(make_model):
    model = make_model()
    state = group_state_dict(model, ["projection", "lora"])
    assert state and {group_of(name) for name in state} == {"projection", "lora"}
