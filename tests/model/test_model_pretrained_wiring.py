"""pretrained=True wiring without a download: from_pretrained is replaced by stand-ins that record ids."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import pytest
import torch
from transformers import Blip2ForConditionalGeneration, Blip2QFormerModel, Blip2VisionModel, PhiForCausalLM

from model import VisionLanguageModel, get_preset, group_of


@pytest.fixture
def fake_hub(monkeypatch):
    """Replace both from_pretrained classmethods; stand-ins are built from the preset being loaded."""
    calls: list[tuple[str, str, dict]] = []
    state = {"preset": None, "device": "cpu"}

    def blip2_from_pretrained(name, **kwargs):
        calls.append(("blip2", name, kwargs))
        preset = state["preset"]
        with torch.device(state["device"]):
            queries = torch.full((1, preset.num_query_tokens, preset.qformer_hidden), 0.125)
            return SimpleNamespace(  # what BLIP-2 offers: vision_model, qformer, query_tokens (+ OPT, unused)
                vision_model=Blip2VisionModel(preset.vision_config()),
                qformer=Blip2QFormerModel(preset.qformer_config()),
                query_tokens=torch.nn.Parameter(queries),
            )

    def phi_from_pretrained(name, **kwargs):
        calls.append(("phi", name, kwargs))
        preset = state["preset"]
        config = preset.lm_config()  # the hub config: phi's own vocabulary size
        config.qk_layernorm = kwargs.get("qk_layernorm", False)
        with torch.device(state["device"]):
            return PhiForCausalLM(config)

    monkeypatch.setattr(Blip2ForConditionalGeneration, "from_pretrained", blip2_from_pretrained)
    monkeypatch.setattr(PhiForCausalLM, "from_pretrained", phi_from_pretrained)
    return SimpleNamespace(calls=calls, state=state)


def test_pretrained_parts_are_used_and_embeddings_grow_to_the_tokenizer(fake_hub, tokenizer):
    tiny = get_preset("tiny")
    # A tiny preset pointing at made-up hub ids, with an LM vocabulary smaller than the tokenizer.
    preset = dataclasses.replace(
        tiny,
        vision_source="fake/blip2",
        lm_source="fake/phi",
        lm_kwargs={**tiny.lm_kwargs, "vocab_size": 100},
    )
    fake_hub.state["preset"] = preset
    model = VisionLanguageModel.from_preset(preset, tokenizer, pretrained=True)

    assert [(kind, name) for kind, name, _ in fake_hub.calls] == [
        ("blip2", "fake/blip2"),
        ("phi", "fake/phi"),
    ]
    phi_kwargs = fake_hub.calls[1][2]
    assert phi_kwargs["qk_layernorm"] is True and phi_kwargs["attn_implementation"] == "sdpa"
    assert torch.all(model.qformer.query_tokens == 0.125)  # the checkpoint's queries, not a fresh init
    assert model.vocab_size == len(tokenizer)
    assert model.language_model.lm_head.weight.shape[0] == len(tokenizer)
    ids = torch.tensor([tokenizer("<image>" * 8 + " a red circle")["input_ids"]])
    assert torch.isfinite(model(ids, torch.randn(1, 3, 32, 32), labels=ids).loss)


def test_pretrained_without_sources_is_refused(tokenizer):
    with pytest.raises(ValueError, match="names no pretrained weights"):
        VisionLanguageModel.from_preset("tiny", tokenizer, pretrained=True)


def test_phi2_preset_asks_for_blip2_and_phi2(fake_hub, tokenizer):
    preset = get_preset("tinygptv-phi2")
    fake_hub.state.update(preset=preset, device="meta")
    model = VisionLanguageModel.from_preset(preset, tokenizer, pretrained=True)
    assert [(kind, name) for kind, name, _ in fake_hub.calls] == [
        ("blip2", "Salesforce/blip2-opt-2.7b"),
        ("phi", "microsoft/phi-2"),
    ]
    # 1408 (EVA) -> 768 (Q-Former) -> 4096 -> 2560 (phi-2), 32 image tokens per image.
    assert model.qformer.transformer.config.encoder_hidden_size == 1408
    assert model.projection.proj_in.weight.shape == (4096, 768)
    assert model.projection.proj_out.weight.shape == (2560, 4096)
    assert model.image_tokens_per_image == 32
    assert model.language_model.model.embed_tokens.weight.shape == (51200, 2560)
    lora_layers = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A." in n}
    assert len(lora_layers) == 32 * 4
    assert {group_of(n) for n, _ in model.named_parameters()} >= {"vision", "qformer", "lora", "qk_norm"}
