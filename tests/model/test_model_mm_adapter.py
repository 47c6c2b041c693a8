"""LaVIN's MM-Adapter: it starts as the base model, gradients reach exactly the groups a stage names
(for LoRA and MM-Adapter alike), packed rows route each sample by its own modality, the router learns
to send text-only and image inputs down different mixes, generation agrees with and without cache."""

from __future__ import annotations

import pytest
import torch

from model import VisionLanguageModel
from model.lora import MMAdapterSettings
from model.mm_adapter import IMAGE, TEXT, token_modality
from model.trainable import group_of, set_trainable
from tests.model.conftest import TEST_LORA

NORMS = ["qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"]
MMA = MMAdapterSettings(dim=8, temperature=10.0)
MMA_VISION = MMAdapterSettings(dim=8, temperature=10.0, vision=True)


def build(tokenizer, adapter: str, seed: int = 0):
    """adapter: lora, mm_adapter (LM only) or mm_adapter+vision (LM and vision tower)."""
    torch.manual_seed(seed)
    if adapter == "lora":
        return VisionLanguageModel.from_preset("tiny", tokenizer, lora=TEST_LORA)
    settings = MMA_VISION if adapter == "mm_adapter+vision" else MMA
    return VisionLanguageModel.from_preset("tiny", tokenizer, lora=None, mm_adapter=settings)


def test_token_modality_follows_each_packed_sample():
    image = 9
    ids = torch.tensor([[1, 9, 9, 2, 3, 4, 9, 5, 0]])
    segments = torch.tensor([[1, 1, 1, 1, 2, 3, 3, 3, 0]])
    assert token_modality(ids, image, segments).tolist() == [[1, 1, 1, 1, 0, 1, 1, 1, 0]]
    rows = torch.tensor([[1, 9, 2], [1, 2, 3]])
    assert token_modality(rows, image, None).tolist() == [[1, 1, 1], [0, 0, 0]]


def test_new_mm_adapters_compute_exactly_the_base_model(tokenizer, encode, images):
    torch.manual_seed(0)
    base = VisionLanguageModel.from_preset("tiny", tokenizer, lora=None)
    adapted = build(tokenizer, "mm_adapter")
    ids = torch.tensor([encode("{img} ###Human: what colour? ###Assistant:")])
    base.eval(), adapted.eval()
    with torch.no_grad():
        assert torch.allclose(base(ids, images(1)).logits, adapted(ids, images(1)).logits, atol=1e-6)
    names = [n for n, _ in adapted.named_parameters() if group_of(n) == "mm_adapter"]
    assert names and all(n.startswith("language_model.mm_adapter.") for n in names)
    assert not any(group_of(n) == "lora" for n, _ in adapted.named_parameters())


def test_vision_tower_adapters_start_as_the_base_tower_and_route_each_image_by_itself(tokenizer, images):
    torch.manual_seed(0)
    base = VisionLanguageModel.from_preset("tiny", tokenizer, lora=None)
    adapted = build(tokenizer, "mm_adapter+vision")
    pixels = images(2, seed=5)
    base.eval(), adapted.eval()
    with torch.no_grad():
        assert torch.allclose(base.vision(pixels), adapted.vision(pixels), atol=1e-6)
    names = [n for n, _ in adapted.named_parameters() if n.startswith("vision.vit.mm_adapter.")]
    assert len({n.split(".")[4] for n in names}) == len(adapted.vision.vit.encoder.layers)
    assert all(group_of(n) == "mm_adapter" for n in names)
    # the router reads each image's class token at its block: two images, two mixes
    seen = []
    hook = adapted.vision.vit.encoder.layers[1].layer_norm1.register_forward_hook(
        lambda module, args, out: seen.append(adapted.vision.vit.mm_adapter.route(out, 1))
    )
    with torch.no_grad():
        adapted.vision(pixels)
    hook.remove()
    (weights,) = seen
    assert weights.shape == (2, 2) and torch.allclose(weights.sum(-1), torch.ones(2))
    assert not torch.allclose(weights[0], weights[1])


@pytest.mark.parametrize("adapter", ["lora", "mm_adapter", "mm_adapter+vision"])
def test_gradients_reach_exactly_the_groups_a_stage_names(tokenizer, encode, images, adapter):
    model = build(tokenizer, adapter)
    groups = ["projection", adapter.split("+")[0], *NORMS]
    set_trainable(model, groups, log=None)
    text = encode("###Human: what shape? ###Assistant: circle###")
    pictured = encode("{img} ###Human: what colour? ###Assistant: red###")
    ids = torch.tensor([text + pictured])
    segments = torch.tensor([[1] * len(text) + [2] * len(pictured)])
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # the second step: zero-initialised up-projections no longer block the rest
        opt.zero_grad()
        model(ids, pixel_values=images(1), segment_ids=segments, labels=ids).loss.backward()
        opt.step()
    for name, param in model.named_parameters():
        if group_of(name) in groups:
            assert param.grad is not None, name
        else:
            assert param.grad is None, name
    for group in groups:
        grads = [p.grad.abs().sum() for n, p in model.named_parameters() if group_of(n) == group]
        assert sum(grads) > 0, group
    if adapter == "mm_adapter+vision":  # the frozen tower still passes gradients to its adapters
        ups = [
            p.grad.abs().sum() for n, p in model.named_parameters() if n.startswith("vision.vit.mm_adapter.")
        ]
        assert ups and sum(ups) > 0


def test_the_router_learns_different_mixes_for_text_only_and_image_inputs(tokenizer, encode, images):
    model = build(tokenizer, "mm_adapter", seed=1)
    set_trainable(model, ["mm_adapter"], log=None)
    adapters = model.language_model.mm_adapter
    modality = torch.tensor([TEXT, IMAGE])

    def gap() -> float:
        with torch.no_grad():
            weights = adapters.route(modality)  # [layers, 2 modalities, 2 adapters]
        return (weights[:, 1, 1] - weights[:, 0, 1]).abs().mean().item()

    before = gap()
    # the same question, answered differently with and without an image: the two modalities need
    # different adapters, and only the router can tell them apart
    text = encode("###Human: what colour? ###Assistant: blue###")
    pictured = encode("{img} ###Human: what colour? ###Assistant: red###")
    ids = torch.tensor([text + pictured, pictured + text])
    segments = torch.tensor([[1] * len(text) + [2] * len(pictured), [1] * len(pictured) + [2] * len(text)])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        model(ids, pixel_values=images(2, seed=3), segment_ids=segments, labels=ids).loss.backward()
        opt.step()
    after = gap()
    print(f"router gap before {before:.4f} after {after:.4f}")
    assert after > 0.05 and after > 3 * before, (before, after)


def test_generation_routes_each_row_by_its_prompt_with_and_without_cache(tokenizer, encode, images):
    model = build(tokenizer, "mm_adapter", seed=2)
    with torch.no_grad():  # non-zero, and different, adapters: routing changes the answers
        for name, param in model.named_parameters():
            if ".mm_adapter." in name and ".up." in name:
                param.normal_(0.0, 0.5)
    prompts = [encode("{img} ###Human: where? ###Assistant:"), encode("a text only prompt that is longer")]
    width = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    pixels = images(1, seed=4)
    cached = model.generate(ids, mask, pixels, max_new_tokens=8, eos_token_ids=[])
    plain = model.generate(ids, mask, pixels, max_new_tokens=8, eos_token_ids=[], use_cache=False)
    alone = [
        model.generate(torch.tensor([prompts[0]]), None, pixels, 8, [])[0],
        model.generate(torch.tensor([prompts[1]]), None, None, 8, [])[0],
    ]
    assert cached == plain == alone
    assert model.language_model.mm_adapter.modality is None  # nothing left behind for the next call


def test_mm_adapter_weights_round_trip_through_a_checkpoint(tokenizer, tmp_path):
    from model.checkpoint import load_checkpoint, save_checkpoint

    model = build(tokenizer, "mm_adapter+vision", seed=3)
    with torch.no_grad():
        model.language_model.mm_adapter.layers[0].up[1].weight.add_(0.5)
        model.vision.vit.mm_adapter.layers[1].up[0].weight.add_(0.5)
    save_checkpoint(tmp_path / "ckpt", model, ["projection", "mm_adapter"])
    other = build(tokenizer, "mm_adapter+vision", seed=4)
    assert set(load_checkpoint(tmp_path / "ckpt", other).groups) == {"projection", "mm_adapter"}
    for (name, a), (_, b) in zip(model.named_parameters(), other.named_parameters(), strict=True):
        if group_of(name) in ("projection", "mm_adapter"):
            assert torch.equal(a, b), name
