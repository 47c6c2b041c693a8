"""Serving forms of a model: LoRA merged, the LM in bf16 / 8-bit / 4-bit, the merged export, and
generation with and without the KV cache."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from model.build import BuiltModel
from model.export import ExportError, export_merged, load_merged
from model.image_processing import ImagePreprocessor
from model.inference import merge_lora, module_bytes, set_precision


def _logits(model, ids, pixels):
    model.eval()
    with torch.no_grad():
        return model(ids, pixel_values=pixels).logits.float()


def test_merging_lora_keeps_the_logits_and_removes_the_adapters(make_model, encode, images):
    model = make_model(seed=1)
    ids = torch.tensor([encode("{img} ###Human: what colour? ###Assistant:")])
    before = _logits(model, ids, images(1))
    assert any("lora_" in n for n, _ in model.named_parameters())
    merged = merge_lora(model)
    assert merged == 4 * 4  # q, k, v, dense in each of the tiny LM's 4 layers
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert torch.allclose(_logits(model, ids, images(1)), before, atol=1e-5)
    assert merge_lora(model) == 0  # nothing left to merge


def test_generation_without_the_kv_cache_gives_the_same_tokens_batched(make_model, encode, tokenizer, images):
    model = make_model(seed=4)
    prompts = [encode("{img} ###Human: where? ###Assistant:"), encode("{img} hi")]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pixels = images(2, seed=9)
    cached = model.generate(ids, mask, pixels, max_new_tokens=10, eos_token_ids=[])
    plain = model.generate(ids, mask, pixels, max_new_tokens=10, eos_token_ids=[], use_cache=False)
    assert cached == plain and all(len(row) == 10 for row in cached)


@pytest.mark.parametrize(("precision", "min_cosine"), [("bf16", 0.999), ("8bit", 0.99), ("4bit", 0.9)])
def test_lower_precision_language_models_answer_close_to_fp32_and_weigh_less(
    make_model, encode, images, precision, min_cosine
):
    reference = make_model(seed=2)
    ids = torch.tensor([encode("{img} ###Human: what shape is at the top? ###Assistant:")])
    pixels = images(1, seed=3)
    expected = _logits(reference, ids, pixels)
    merge_lora(reference)
    full = module_bytes(reference.language_model)

    model = set_precision(make_model(seed=2), precision)
    got = _logits(model, ids, pixels)
    assert not model.training
    cosine = F.cosine_similarity(got.flatten(), expected.flatten(), dim=0).item()
    assert cosine >= min_cosine, (precision, cosine)
    lm = model.language_model
    if precision != "bf16":
        import bitsandbytes as bnb

        kind = bnb.nn.Linear8bitLt if precision == "8bit" else bnb.nn.Linear4bit
        layers = [m for m in lm.modules() if isinstance(m, kind)]
        assert len(layers) == 4 * 6  # q, k, v, dense, fc1, fc2 per layer; lm_head stays float
        assert isinstance(lm.lm_head, torch.nn.Linear) and lm.lm_head.weight.dtype == torch.float32
        stored = {"8bit": torch.int8, "4bit": torch.uint8}[precision]
        assert all(m.weight.dtype == stored for m in layers)
    # what the decoder layers weigh: 2 bytes, ~1 byte, ~0.5 byte per weight against 4
    layers_fp32 = module_bytes(reference.language_model.model.layers)
    layers_now = module_bytes(lm.model.layers)
    ratio = layers_now / layers_fp32
    assert {"bf16": 0.45 <= ratio <= 0.55, "8bit": 0.2 <= ratio <= 0.35, "4bit": 0.1 <= ratio <= 0.25}[
        precision
    ], (precision, ratio)
    assert module_bytes(lm) < full
    tokens = model.generate(ids, None, pixels, max_new_tokens=6, eos_token_ids=[])
    assert len(tokens[0]) == 6


@pytest.mark.parametrize(("precision", "towers", "min_cosine"), [("bf16", "bf16", 0.99), ("8bit", "lm", 0.9)])
def test_towers_served_in_bf16_or_quantised_answer_close_to_fp32_and_weigh_less(
    make_model, encode, images, precision, towers, min_cosine
):
    import bitsandbytes as bnb

    reference = make_model(seed=4)
    ids = torch.tensor([encode("{img} ###Human: what colour is it? ###Assistant:")])
    pixels = images(2, seed=5)[:1]
    expected = _logits(reference, ids, pixels)
    parts = ("vision", "qformer", "projection")
    full = {part: module_bytes(getattr(reference, part)) for part in parts}

    model = set_precision(make_model(seed=4), precision, towers=towers)
    got = _logits(model, ids, pixels)  # float32 pixels go in: the tower casts them
    cosine = F.cosine_similarity(got.float().flatten(), expected.flatten(), dim=0).item()
    assert cosine >= min_cosine, (precision, towers, cosine)
    for part in parts:
        module = getattr(model, part)
        floats = {t.dtype for t in module.parameters() if t.is_floating_point()}
        assert floats == {torch.bfloat16}, (part, floats)
        assert module_bytes(module) < full[part] * 0.55, part
    quantised = [m for m in model.vision.modules() if isinstance(m, bnb.nn.Linear8bitLt)]
    assert bool(quantised) == (towers == "lm")
    tokens = model.generate(ids, None, pixels, max_new_tokens=4, eos_token_ids=[])
    assert len(tokens[0]) == 4


def test_an_unknown_precision_is_refused(make_model):
    with pytest.raises(ValueError, match="precision 'int3'"):
        set_precision(make_model(), "int3")
    with pytest.raises(ValueError, match="towers 'fp8'"):
        set_precision(make_model(), "bf16", towers="fp8")


def _built(model, tokenizer) -> BuiltModel:
    return BuiltModel(model, tokenizer, model.preset, ImagePreprocessor.from_preset(model.preset))


def test_the_merged_export_loads_back_and_answers_as_the_model_did(
    make_model, encode, tokenizer, images, tmp_path
):
    from transformers import PhiForCausalLM

    model = make_model(seed=5)
    ids = torch.tensor([encode("{img} ###Human: how many shapes? ###Assistant:")])
    pixels = images(1, seed=2, size=model.preset.image_size)
    expected = _logits(model, ids, pixels)
    tokens = model.generate(ids, None, pixels, max_new_tokens=8, eos_token_ids=[])

    out = export_merged(
        _built(model, tokenizer),
        tmp_path / "export",
        template="human_assistant",
        end_sym="###",
        source="ckpt",
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "connector.safetensors",
        "language_model",
        "preprocessor_config.json",
        "qformer",
        "tokenizer",
        "vision_model",
        "vlmpipe.json",
    ]
    assert not list(tmp_path.glob(".export.tmp-*"))
    manifest = json.loads((out / "vlmpipe.json").read_text())
    assert manifest["lora_layers_merged"] == 16 and manifest["template"] == "human_assistant"
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["size"] == {"height": 64, "width": 64} and processor["image_processor_type"]
    # the language model folder is a transformers checkpoint on its own, with no LoRA in it
    phi = PhiForCausalLM.from_pretrained(out / "language_model")
    assert phi.config.qk_layernorm and not any("lora" in n for n, _ in phi.named_parameters())

    built, loaded_manifest = load_merged(out)
    assert loaded_manifest == manifest
    assert torch.allclose(_logits(built.model, ids, pixels), expected, atol=1e-5)
    assert built.model.generate(ids, None, pixels, max_new_tokens=8, eos_token_ids=[]) == tokens
    # and the norms TinyGPT-V adds after attention came back with their trained values
    norm = built.model.language_model.model.layers[0].post_attention_norm.weight
    assert torch.equal(norm, model.language_model.model.layers[0].post_attention_norm.weight)


def test_an_export_refuses_a_used_folder_and_names_a_damaged_file(make_model, tokenizer, tmp_path):
    used = tmp_path / "used"
    used.mkdir()
    (used / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="not an empty folder"):
        export_merged(_built(make_model(), tokenizer), used, template="t", end_sym="#", source="s")
    assert (used / "keep.txt").read_text() == "mine"

    out = export_merged(
        _built(make_model(), tokenizer), tmp_path / "ok", template="t", end_sym="#", source="s"
    )
    weights = out / "qformer" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(ExportError, match="qformer/model.safetensors"):
        load_merged(out)
    (out / "vlmpipe.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ExportError, match="vlmpipe.json: field format"):
        load_merged(out)


@pytest.mark.parametrize("variant", ["mm_adapter", "ablated"])
def test_exports_of_mm_adapter_and_ablated_models_answer_as_they_did(
    tokenizer, encode, images, tmp_path, variant
):
    from model import VisionLanguageModel
    from model.lora import MMAdapterSettings

    torch.manual_seed(7)
    if variant == "mm_adapter":
        model = VisionLanguageModel.from_preset(
            "tiny", tokenizer, lora=None, mm_adapter=MMAdapterSettings(vision=True)
        )
        with torch.no_grad():
            for name, param in model.named_parameters():
                if ".mm_adapter." in name:
                    param.normal_(0.0, 0.2)
    else:
        model = VisionLanguageModel.from_preset(
            "tiny", tokenizer, lora=None, ablate=("input_layernorm", "qk_norm", "post_attention_norm")
        )
    ids = torch.tensor([encode("{img} ###Human: where? ###Assistant:")])
    pixels = images(1, seed=8, size=64)
    expected = _logits(model, ids, pixels)
    out = export_merged(_built(model, tokenizer), tmp_path / "x", template="t", end_sym="#", source="s")
    built, manifest = load_merged(out)
    assert torch.allclose(_logits(built.model, ids, pixels), expected, atol=1e-5)
    assert built.model.ablated == model.ablated
    assert (manifest["mm_adapter"] is not None) == (variant == "mm_adapter")
