"""Presets, and the real presets' wiring checked on configs and meta-device modules (no download)."""

from __future__ import annotations

import pytest
import torch
from transformers import PhiForCausalLM

from model import PRESETS, LoraSettings, get_preset
from model.language import add_post_attention_norms, lora_target_names


def test_unknown_preset_lists_known_ones():
    with pytest.raises(KeyError) as error:
        get_preset("tinygptv-phi3")
    for name in PRESETS:
        assert name in str(error.value)


def test_with_image_size_keeps_architecture():
    preset = get_preset("tinygptv-phi2").with_image_size(448)
    assert preset.image_size == 448
    assert preset.vision_kwargs["image_size"] == 224  # position embeddings stay at their trained size
    assert get_preset("tinygptv-phi2").image_size == 224
    with pytest.raises(ValueError):
        preset.with_image_size(450)  # not a multiple of the 14-pixel patch


@pytest.mark.parametrize(
    "name, lm_hidden, layers, rotary",
    [("tinygptv-phi2", 2560, 32, 0.4), ("tinygptv-phi1_5", 2048, 24, 0.5)],
)
def test_real_presets_chain_dimensions(name, lm_hidden, layers, rotary):
    preset = get_preset(name)
    vision, qformer, lm = preset.vision_config(), preset.qformer_config(), preset.lm_config(50297)
    assert (vision.hidden_size, vision.num_hidden_layers) == (1408, 39)
    assert (vision.patch_size, vision.image_size) == (14, 224)
    # Q-Former cross-attends to the vision width, and the projection bridges 768 -> 4096 -> LM width.
    assert qformer.encoder_hidden_size == vision.hidden_size == 1408
    assert (qformer.hidden_size, qformer.num_hidden_layers, qformer.cross_attention_frequency) == (768, 12, 2)
    assert preset.num_query_tokens == 32 and preset.projection_hidden == 4096
    assert (lm.hidden_size, lm.num_hidden_layers, lm.num_attention_heads) == (lm_hidden, layers, 32)
    assert lm.qk_layernorm is True
    assert lm.rope_parameters["partial_rotary_factor"] == rotary
    assert lm.vocab_size == 51200  # phi's table is larger than the tokenizer: kept so weights load
    assert preset.vision_source == "Salesforce/blip2-opt-2.7b"
    assert preset.lm_source == preset.tokenizer


def test_phi2_on_meta_device_has_lora_targets_and_norms():
    preset = get_preset("tinygptv-phi2")
    with torch.device("meta"):
        lm = PhiForCausalLM(preset.lm_config(50297))
        add_post_attention_norms(lm)
    targets = lora_target_names(lm, LoraSettings())
    assert len(targets) == 32 * 4
    assert "model.layers.0.self_attn.q_proj" in targets and "model.layers.31.self_attn.dense" in targets
    assert not any(".mlp." in t for t in targets)  # "dense" must not catch the MLP
    attn = lm.model.layers[0].self_attn
    assert attn.q_layernorm.weight.shape == (2560 // 32,)
    assert lm.model.layers[0].post_attention_norm.weight.shape == (2560,)
    assert lm.lm_head.weight.shape == (51200, 2560)
    # 2.78B parameters incl. the new norms: the size the paper reports for TinyGPT-V's LM.
    assert 2.7e9 < sum(p.numel() for p in lm.parameters()) < 2.9e9
