"""VisionLanguageModel on the tiny preset: forward, image splicing, packing exactness, norms, generation."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from model import VisionLanguageModel, get_preset
from model.packing import segment_positions


def test_tiny_model_builds_fast_and_gives_finite_loss(make_model, encode, images):
    start = time.perf_counter()
    model = make_model()
    assert time.perf_counter() - start < 10
    ids = torch.tensor([encode("{img} a red circle on white"), encode("{img} a blue star on black")])
    out = model(ids, images(2), labels=ids)
    assert out.logits.shape == (2, ids.shape[1], model.vocab_size)
    assert torch.isfinite(out.loss) and out.loss.item() > 0
    assert out.num_label_tokens == 2 * (ids.shape[1] - 1)


def test_image_token_count_must_match_images(make_model, encode, images):
    model = make_model()
    ids = torch.tensor([encode("{img} a red circle")])
    with pytest.raises(ValueError, match="<image> token positions"):
        model(ids, images(2))
    with pytest.raises(ValueError, match="<image> token positions"):
        model(ids, None)
    with pytest.raises(ValueError, match="<image> token positions"):
        model(torch.tensor([encode("{img} a red circle", queries=5)]), images(1))


def test_images_change_the_output(make_model, encode, images):
    model = make_model().eval()
    ids = torch.tensor([encode("{img} what colour?")])
    first = model(ids, images(1, seed=1)).logits
    second = model(ids, images(1, seed=2)).logits
    assert not torch.allclose(first, second, atol=1e-4)


def test_segment_positions_restart_per_sample():
    segments = torch.tensor([[1, 1, 1, 2, 2, 3, 0, 0]])
    assert segment_positions(segments).tolist() == [[0, 1, 2, 0, 1, 0, 0, 1]]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_packed_rows_equal_samples_run_alone(make_model, encode, tokenizer, images, attention):
    """Three samples (two with images) packed into two rows give each sample its solo logits and loss."""
    preset = dataclasses.replace(get_preset("tiny"), attn_implementation=attention)
    model = make_model(preset=preset).eval()
    assert model.language_model.config._attn_implementation == attention
    samples = [
        encode("###Human: {img} describe ###Assistant: a red circle"),
        encode("plain text without any image at all"),
        encode("{img} [vqa] what shape? square"),
    ]
    pixels = images(2, seed=3)
    sample_images = [pixels[0:1], None, pixels[1:2]]

    # Row 0 holds samples 0 and 1, row 1 holds sample 2; both right-padded to the same length.
    rows = [samples[0] + samples[1], samples[2]]
    segs = [[1] * len(samples[0]) + [2] * len(samples[1]), [1] * len(samples[2])]
    length = max(len(r) for r in rows) + 3
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([r + [pad] * (length - len(r)) for r in rows])
    segment_ids = torch.tensor([s + [0] * (length - len(s)) for s in segs])
    labels = input_ids.masked_fill(segment_ids == 0, -100)

    packed = model(input_ids, pixels, segment_ids=segment_ids, labels=labels)
    assert torch.isfinite(packed.logits).all()  # padding rows must not produce NaN

    spans = [(0, 0, len(samples[0])), (0, len(samples[0]), len(rows[0])), (1, 0, len(samples[2]))]
    loss_sum, count = 0.0, 0
    for sample, image, (row, start, end) in zip(samples, sample_images, spans, strict=True):
        ids = torch.tensor([sample])
        alone = model(ids, image, labels=ids)
        torch.testing.assert_close(packed.logits[row, start:end], alone.logits[0], atol=1e-5, rtol=1e-5)
        loss_sum += alone.loss.item() * alone.num_label_tokens
        count += alone.num_label_tokens
    # No sample is trained to predict the next sample's first token.
    assert packed.num_label_tokens == count
    assert packed.loss.item() == pytest.approx(loss_sum / count, rel=1e-5)


def test_left_padded_batch_matches_unpadded(make_model, encode, tokenizer, images):
    model = make_model().eval()
    short, long = encode("{img} hi"), encode("{img} a much longer prompt here")
    pad = tokenizer.pad_token_id
    gap = len(long) - len(short)
    ids = torch.tensor([[pad] * gap + short, long])
    mask = torch.tensor([[0] * gap + [1] * len(short), [1] * len(long)])
    pixels = images(2, seed=4)
    batched = model(ids, pixels, attention_mask=mask).logits
    assert torch.isfinite(batched).all()
    alone = model(torch.tensor([short]), pixels[:1]).logits
    torch.testing.assert_close(batched[0, gap:], alone[0], atol=1e-5, rtol=1e-5)


def test_post_attention_norm_changes_the_output(make_model, encode, images):
    model = make_model().eval()
    ids = torch.tensor([encode("{img} a red circle")])
    pixels = images(1)
    before = model(ids, pixels).logits
    with torch.no_grad():
        for layer in model.language_model.model.layers:
            layer.post_attention_norm.weight.fill_(3.0)
    after = model(ids, pixels).logits
    assert not torch.allclose(before, after, atol=1e-3)


def test_gradient_checkpointing_keeps_the_norm_hook_and_gradients(make_model, encode, images):
    ids = torch.tensor([encode("{img} a red circle"), encode("{img} a blue cross")])
    pixels = images(2)

    def gradients(checkpointing: bool) -> dict[str, torch.Tensor]:
        model = make_model(seed=7).train()
        if checkpointing:
            model.enable_gradient_checkpointing()
        model(ids, pixels, labels=ids).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys()
    norm_grad = "language_model.model.layers.0.post_attention_norm.weight"
    assert plain[norm_grad].abs().sum() > 0
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], atol=1e-5, rtol=1e-4)


def test_higher_resolution_interpolates_position_embeddings(tokenizer, encode, images):
    torch.manual_seed(0)
    preset = get_preset("tiny").with_image_size(64)
    model = VisionLanguageModel.from_preset(preset, tokenizer).eval()
    out = model(torch.tensor([encode("{img} big")]), images(1, size=64))
    assert torch.isfinite(out.logits).all()


def _greedy_without_cache(model, ids, pixels, steps, eos):
    ids = ids.clone()
    new = []
    for _ in range(steps):
        token = int(model(ids, pixels).logits[0, -1].argmax())
        if token in eos:
            break
        new.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return new


def test_generate_left_padded_batch_equals_each_prompt_alone(make_model, encode, tokenizer, images):
    model = make_model(seed=3)
    eos = [tokenizer.eos_token_id]
    prompts = [
        encode("{img} ###Human: what? ###Assistant:"),
        encode("a text only prompt that is longer"),
        encode("{img} hi"),
    ]
    prompt_images = [images(1, seed=5), None, images(1, seed=6)]
    length = max(len(p) for p in prompts)
    pad = tokenizer.pad_token_id
    ids = torch.tensor([[pad] * (length - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (length - len(p)) + [1] * len(p) for p in prompts])
    pixels = torch.cat([img for img in prompt_images if img is not None])

    batched = model.generate(ids, mask, pixels, max_new_tokens=8, eos_token_ids=eos)
    assert model.training  # generate restores the mode it found
    alone = [
        model.generate(torch.tensor([p]), None, img, max_new_tokens=8, eos_token_ids=eos)[0]
        for p, img in zip(prompts, prompt_images, strict=True)
    ]
    assert batched == alone
    model.eval()
    # The KV-cache loop agrees with recomputing the whole sequence every step.
    assert alone[0] == _greedy_without_cache(model, torch.tensor([prompts[0]]), prompt_images[0], 8, eos)


def test_generate_stops_at_eos_and_rejects_right_padding(make_model, encode, tokenizer, images):
    model = make_model(seed=3)
    ids = torch.tensor([encode("{img} hello")])
    first = model.generate(ids, None, images(1), max_new_tokens=5, eos_token_ids=[tokenizer.eos_token_id])[0]
    assert first, "greedy decoding of a random model produced nothing to test with"
    # Declaring the first generated token an eos ends generation before it: nothing is returned.
    assert model.generate(ids, None, images(1), max_new_tokens=5, eos_token_ids=[first[0]]) == [[]]
    sampled = model.generate(
        ids, None, images(1), max_new_tokens=5, eos_token_ids=[], temperature=0.8, top_p=0.9
    )
    assert len(sampled[0]) == 5
    with pytest.raises(ValueError, match="left-padded"):
        model.generate(ids, torch.tensor([[1] * (ids.shape[1] - 1) + [0]]), images(1), 3, [0])


def test_config_summary_counts_every_group(make_model):
    summary = make_model().config_summary()
    assert summary["preset"] == "tiny"
    assert summary["total_parameters"] == sum(summary["parameters"].values())
    assert summary["parameters"]["lora"] > 0 and summary["parameters"]["post_attention_norm"] == 4 * 128
