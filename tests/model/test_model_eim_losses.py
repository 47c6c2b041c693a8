"""EIM's three contrastive losses: each falls over a short training run, with and without a queue of
keys, and each leaves the groups it must not touch without a gradient even when they could train."""

from __future__ import annotations

import pytest
import torch

from model import VisionLanguageModel
from model.losses import image_encoder_loss, info_nce, language_model_loss, semantic_transform_loss
from model.trainable import GROUPS, group_of, set_trainable
from tasks.train.keys import batch_keys
from tests.model.conftest import TEST_LORA

# what each loss may move (its segment of EIM's segmented training)
REACHES = {
    "semantic_transform": {"vision", "qformer", "projection"},
    "language_model": {
        "lora",
        "qk_norm",
        "post_attention_norm",
        "input_layernorm",
        "final_layernorm",
        "language_model",
    },
    "image_encoder": {"vision"},
}
ANSWERS = ["red circle", "blue square", "green triangle", "yellow star", "white ring", "black cross"]


def packed_batch(encode, images):
    """Two packed rows of three image samples each, every sample with its own text."""
    rows, segs = [], []
    for r in range(2):
        ids, seg = [], []
        for j in range(3):
            text = encode("{img} ###Human: what is it? ###Assistant: " + ANSWERS[3 * r + j] + "###")
            ids += text
            seg += [j + 1] * len(text)
        rows.append(ids)
        segs.append(seg)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    segments = torch.tensor([s + [0] * (width - len(s)) for s in segs])
    return ids, segments, images(6, seed=11)


def run_loss(name, model, ids, segments, pixels, queue=None):
    embeds = model.embed_inputs(ids, pixels)
    if name == "semantic_transform":
        return semantic_transform_loss(embeds, ids, model.image_token_id, segment_ids=segments, queue=queue)
    if name == "language_model":
        return language_model_loss(model, embeds, ids, segment_ids=segments, queue=queue)
    return image_encoder_loss(model, pixels, ids, segment_ids=segments, queue=queue)


@pytest.fixture
def lora_with_updates(tokenizer):
    def make(seed=0):
        torch.manual_seed(seed)
        model = VisionLanguageModel.from_preset("tiny", tokenizer, lora=TEST_LORA)
        with torch.no_grad():  # adapters that already changed the LM: tuned and frozen states differ
            for n, p in model.named_parameters():
                if "lora_B" in n:
                    p.normal_(0.0, 0.05)
        return model

    return make


@pytest.mark.parametrize("name", list(REACHES))
def test_each_loss_touches_only_its_own_groups(lora_with_updates, encode, images, name):
    model = lora_with_updates()
    set_trainable(
        model, [g for g in GROUPS if g != "mm_adapter"], log=None
    )  # all could train: the loss decides
    ids, segments, pixels = packed_batch(encode, images)
    loss, n = run_loss(name, model, ids, segments, pixels)
    assert n == 6 and loss.item() > 0
    loss.backward()
    reached = set()
    for param_name, param in model.named_parameters():
        grad = param.grad
        if grad is not None and grad.abs().sum() > 0:
            reached.add(group_of(param_name))
    assert reached, name
    assert reached <= REACHES[name], (name, sorted(reached - REACHES[name]))


@pytest.mark.parametrize("with_queue", [False, True])
@pytest.mark.parametrize("name", list(REACHES))
def test_each_loss_falls_over_a_short_run_with_and_without_a_queue(
    lora_with_updates, encode, images, name, with_queue
):
    model = lora_with_updates(seed=1)
    trainable = {
        "semantic_transform": ["projection"],
        "language_model": ["lora"],
        "image_encoder": ["vision"],
    }[name]
    set_trainable(model, trainable, log=None)
    ids, segments, pixels = packed_batch(encode, images)
    queue = None
    if with_queue:  # keys from other texts, built the way a stage builds its queue
        other_ids, other_segments, other_pixels = packed_batch(
            lambda t: encode(t.replace("what is it?", "what do you see?")), lambda n, seed: images(n, seed=5)
        )
        queue = batch_keys(name, model, other_ids, other_pixels, other_segments, None)
        assert queue.shape[0] == 6 and torch.isfinite(queue).all()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(25):
        opt.zero_grad()
        loss, _ = run_loss(name, model, ids, segments, pixels, queue)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], (name, with_queue, losses[0], losses[-1])


def test_info_nce_uses_the_queue_as_negatives_only():
    torch.manual_seed(0)
    q = torch.randn(4, 8)
    k = q + 0.01 * torch.randn(4, 8)
    alone = info_nce(q, k, 0.07)
    # a queue of keys far from every query barely changes the loss; one equal to the queries raises it
    far = info_nce(q, k, 0.07, queue=-q * 10)
    near = info_nce(q, k, 0.07, queue=k.clone())
    assert far.item() == pytest.approx(alone.item(), abs=0.05)
    assert near.item() > alone.item() + 0.3
