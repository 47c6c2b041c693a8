"""LoRA that adds nothing (frozen, B all zero) is switched off for a stage: same outputs, same
gradients, untouched weights and flags; LoRA that adds something or trains is never switched off."""

from __future__ import annotations

import torch

from model import LoraSettings, set_trainable
from model.language import lora_layers, lora_switched_off, switch_off_idle_lora, switch_on_lora

BASE = ["vision", "qformer", "projection", "language_model", "qk_norm", "post_attention_norm"]
# dropout on: switching off must not change what a zero adapter contributes, dropout or not
LORA = LoraSettings(r=4, alpha=8, dropout=0.5)


def _zero_b(model):
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.zero_()


def _loss_and_grads(model, ids, pixels):
    model.zero_grad(set_to_none=True)
    loss = model(ids, pixels, labels=ids).loss
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def test_idle_lora_switched_off_gives_the_same_loss_and_gradients(make_model, encode, images):
    model = make_model(lora=LORA).train()
    _zero_b(model)
    set_trainable(model, BASE, log=None)
    ids = torch.tensor([encode("{img} a red circle on the left"), encode("{img} a blue star at the top")])
    pixels = images(2)
    torch.manual_seed(1)
    loss_on, grads_on = _loss_and_grads(model, ids, pixels)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}

    assert switch_off_idle_lora(model.language_model)
    assert lora_switched_off(model.language_model)
    assert all(m.disable_adapters for m in lora_layers(model.language_model))
    torch.manual_seed(1)
    loss_off, grads_off = _loss_and_grads(model, ids, pixels)

    torch.testing.assert_close(loss_off, loss_on, rtol=1e-6, atol=1e-6)
    assert grads_off.keys() == grads_on.keys()
    for name in grads_on:
        torch.testing.assert_close(grads_off[name], grads_on[name], rtol=1e-5, atol=1e-7)
    # the adapters stay in the model (and its state dict), weights and flags as they were
    state = model.state_dict()
    assert any("lora_A" in k for k in state) and any("lora_B" in k for k in state)
    for name, param in model.named_parameters():
        assert torch.equal(param, before[name]), name
        assert param.requires_grad == flags[name], name

    switch_on_lora(model.language_model)
    assert not lora_switched_off(model.language_model)
    assert {n: p.requires_grad for n, p in model.named_parameters()} == flags


def test_lora_that_adds_something_stays_on(make_model):
    model = make_model(lora=LORA)  # the fixture gives B random values
    set_trainable(model, BASE, log=None)
    assert not switch_off_idle_lora(model.language_model)
    assert not lora_switched_off(model.language_model)


def test_lora_that_trains_stays_on_even_at_zero(make_model):
    model = make_model(lora=LORA)
    _zero_b(model)
    set_trainable(model, [*BASE, "lora"], log=None)
    assert not switch_off_idle_lora(model.language_model)


def test_one_nonzero_entry_keeps_lora_on(make_model):
    model = make_model(lora=LORA)
    _zero_b(model)
    set_trainable(model, BASE, log=None)
    last = [p for n, p in model.named_parameters() if "lora_B" in n][-1]
    with torch.no_grad():
        last.view(-1)[-1] = 1e-12
    assert not switch_off_idle_lora(model.language_model)


def test_a_model_without_lora_has_nothing_to_switch(make_model):
    model = make_model(lora=None)
    assert not switch_off_idle_lora(model.language_model)
    assert not lora_switched_off(model.language_model)
