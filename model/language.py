"""Language model: transformers' PhiForCausalLM with TinyGPT-V's changes and LoRA adapters.

Changes from stock Phi: QK LayerNorm (PhiConfig.qk_layernorm) and an RMSNorm on the output of every
attention block. The norm is added by a forward hook rather than a subclass, so Phi's parameter names
(and real phi-2 checkpoints) stay as they are.
"""

from __future__ import annotations

from functools import partial

import torch
from peft import LoraConfig, inject_adapter_in_model
from torch import nn
from transformers import PhiForCausalLM

from .lora import LoraSettings
from .presets import ABLATIONS, ModelPreset


def check_ablations(names) -> tuple[str, ...]:
    unknown = sorted(set(names) - set(ABLATIONS))
    if unknown:
        raise ValueError(f"unknown ablation(s) {unknown}; known: {', '.join(ABLATIONS)}")
    return tuple(a for a in ABLATIONS if a in set(names))


def build_language_model(
    preset: ModelPreset, vocab_size: int, pad_token_id: int | None, qk_norm: bool = True
) -> PhiForCausalLM:
    """Randomly initialised Phi (torch's global RNG) with QK LayerNorm (unless ablated), from the
    preset's config."""
    return PhiForCausalLM(preset.lm_config(vocab_size, pad_token_id, qk_norm=qk_norm))


def _normalise_attention_output(norm: nn.Module, module: nn.Module, args, output):
    # PhiAttention returns (attn_output, attn_weights); only the output is normalised. Running inside
    # the layer's forward means gradient checkpointing re-runs it during recomputation.
    attn_output, *rest = output
    return (norm(attn_output), *rest)


def add_post_attention_norms(lm: PhiForCausalLM) -> None:
    """Attach `layer.post_attention_norm` (RMSNorm, weight 1) to every decoder layer and hook it in.

    Idempotent: a layer that already has the norm is left alone, so a model is never normalised twice.
    """
    config = lm.config
    reference = lm.model.embed_tokens.weight
    for layer in lm.model.layers:
        if hasattr(layer, "post_attention_norm"):
            continue
        norm = nn.RMSNorm(config.hidden_size, eps=config.layer_norm_eps)
        norm.to(device=reference.device, dtype=reference.dtype)
        layer.post_attention_norm = norm
        layer.self_attn.register_forward_hook(partial(_normalise_attention_output, norm))


def inject_lora(lm: PhiForCausalLM, settings: LoraSettings) -> None:
    """Add LoRA adapters in place. B starts at zero, so the adapted model computes exactly what it did;
    the adapters exist in every stage (same architecture, same checkpoints) and train only when the
    `lora` group is made trainable."""
    if not lora_target_names(lm, settings):
        raise ValueError(
            f"LoRA target_modules {list(settings.target_modules)} name no Linear layer of the language "
            "model (Phi's are q_proj, k_proj, v_proj, dense, fc1, fc2)"
        )
    config = LoraConfig(
        r=settings.r,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=list(settings.target_modules),
        bias="none",
    )
    inject_adapter_in_model(config, lm)
    # peft freezes the base weights as a side effect; trainability is set_trainable's job alone.
    for param in lm.parameters():
        param.requires_grad_(True)


def lora_layers(lm: nn.Module) -> list[nn.Module]:
    """The LM's LoRA-wrapped layers (peft's LoraLayer), in module order."""
    from peft.tuners.lora import LoraLayer

    return [m for m in lm.modules() if isinstance(m, LoraLayer)]


def switch_off_idle_lora(lm: nn.Module) -> bool:
    """Switch LoRA off when it adds exactly nothing: every adapter frozen and every B matrix zero
    (as injected, until a stage trains `lora`). The layers then skip the adapters' dropout and their
    two matrix products, the same outputs for less work (about 1.3x faster shapes_base steps on the
    tiny preset). Returns whether it did. The adapters stay in the model, their weights in its state
    dict; `switch_on_lora` puts them back."""
    layers = lora_layers(lm)
    if not layers:
        return False
    adapters = [p for m in layers for p in (*m.lora_A.parameters(), *m.lora_B.parameters())]
    if any(p.requires_grad for p in adapters):
        return False
    with torch.no_grad():
        if any(bool(b.weight.any()) for m in layers for b in m.lora_B.values()):
            return False
        if any(
            len(getattr(m, name, ()))
            for m in layers
            for name in ("lora_magnitude_vector", "lora_embedding_B")
        ):
            return False  # DoRA or embedding adapters: not the plain zero-B case
    for m in layers:
        m.enable_adapters(False)
    return True


def switch_on_lora(lm: nn.Module) -> None:
    """Undo `switch_off_idle_lora`, keeping every parameter's requires_grad as it was (peft's own
    switch marks the active adapters trainable)."""
    flags = [(p, p.requires_grad) for p in lm.parameters()]
    for m in lora_layers(lm):
        m.enable_adapters(True)
    for p, flag in flags:
        p.requires_grad_(flag)


def lora_switched_off(lm: nn.Module) -> bool:
    return any(m.disable_adapters for m in lora_layers(lm))


def remove_input_layernorms(lm: PhiForCausalLM) -> None:
    """The `input_layernorm` ablation: each decoder layer reads its input unnormalised (Identity)."""
    for layer in lm.model.layers:
        layer.input_layernorm = nn.Identity()


def prepare_language_model(
    lm: PhiForCausalLM, lora: LoraSettings | None, ablate: tuple[str, ...] = ()
) -> PhiForCausalLM:
    """Apply TinyGPT-V's architecture changes to a Phi built with qk_layernorm=True, less the ones
    `ablate` names (ABLATIONS; `lora` there means `lora` is None, `qk_norm` a Phi built without it)."""
    ablate = check_ablations(ablate)
    if bool(lm.config.qk_layernorm) == ("qk_norm" in ablate):
        raise ValueError(
            "the language model must be built with qk_layernorm="
            f"{'qk_norm' not in ablate} (TinyGPT-V's QK norm{', ablated' if 'qk_norm' in ablate else ''})"
        )
    if "post_attention_norm" not in ablate:
        add_post_attention_norms(lm)
    if "input_layernorm" in ablate:
        remove_input_layernorms(lm)
    if lora is not None:
        if "lora" in ablate:
            raise ValueError("LoRA settings given with the lora ablation: pass lora=None")
        inject_lora(lm, lora)
    return lm


def lora_target_names(lm: nn.Module, settings: LoraSettings) -> list[str]:
    """Qualified names of the Linear modules LoRA would wrap (used to check the real presets' wiring)."""
    return [
        name
        for name, module in lm.named_modules()
        if isinstance(module, nn.Linear) and name.rsplit(".", 1)[-1] in settings.target_modules
    ]


def embedding_rows(lm: PhiForCausalLM) -> int:
    return int(lm.get_input_embeddings().weight.shape[0])


@torch.no_grad()
def resize_for_tokenizer(lm: PhiForCausalLM, vocab_size: int) -> None:
    """Grow (never shrink) the embeddings and LM head to cover the tokenizer's ids."""
    if vocab_size > embedding_rows(lm):
        lm.resize_token_embeddings(vocab_size)
