"""A trained model made ready to answer: LoRA folded into the weights it adapts, the language model in
bf16, 8-bit or 4-bit (bitsandbytes), and what the result weighs.

By default only the language model changes precision (as in the paper's 8-bit figure): the vision
tower, Q-Former and projection stay in float32, and `embed_inputs` casts the image embeddings to the
LM's embedding dtype. `towers="bf16"` casts them to bf16, and `towers="lm"` gives them the LM's
precision: bf16, or their Linear layers in 8/4-bit with the rest in bf16 (the real ViT-g holds a
quarter of TinyGPT-V's weights, so a small serving footprint needs it quantised too). Quantisation
keeps `lm_head` and the embeddings in their precision (bitsandbytes' own recommendation for the
output layer). bitsandbytes' CPU path serves the tiny model here; on a GPU the same calls run its
CUDA kernels.
"""

from __future__ import annotations

import torch
from torch import nn

PRECISIONS = ("fp32", "bf16", "8bit", "4bit")
# What the towers (vision, Q-Former or token merge, projection) become beside the LM's precision.
TOWER_PRECISIONS = ("fp32", "bf16", "lm")
# Linear layers that keep their precision when the LM is quantised (by attribute name).
KEEP_FULL_PRECISION = ("lm_head",)


def merge_lora(model: nn.Module) -> int:
    """Fold every LoRA adapter of `model.language_model` into its base Linear (W + B A * alpha / r)
    and put the plain Linear back in its place. Returns the number of layers merged; the model no
    longer has a `lora` group afterwards (it computes what it computed, up to float rounding)."""
    from peft.tuners.lora import LoraLayer

    lm = model.language_model
    merged = 0
    for name, module in list(lm.named_modules()):
        if not isinstance(module, LoraLayer):
            continue
        module.merge(safe_merge=True)  # refuses an update that is not finite
        parent_name, _, child = name.rpartition(".")
        parent = lm.get_submodule(parent_name) if parent_name else lm
        setattr(parent, child, module.get_base_layer())
        merged += 1
    if hasattr(model, "lora_settings"):
        model.lora_settings = None
    return merged


def _quantised_linear(linear: nn.Linear, precision: str) -> nn.Module:
    import bitsandbytes as bnb

    device = linear.weight.device
    weight = linear.weight.data.detach().to("cpu", torch.float32).clone()
    bias = None if linear.bias is None else linear.bias.data.detach().clone()  # keeps its dtype
    if precision == "8bit":
        layer = bnb.nn.Linear8bitLt(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            has_fp16_weights=False,  # int8 weights, not a float copy
            threshold=6.0,  # LLM.int8(): outlier features above 6 stay in 16 bit
        )
        layer.weight = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        layer = bnb.nn.Linear4bit(
            linear.in_features,
            linear.out_features,
            bias=bias is not None,
            compute_dtype=torch.bfloat16 if device.type == "cuda" else torch.float32,
            quant_type="nf4",
        )
        layer.weight = bnb.nn.Params4bit(weight, requires_grad=False, quant_type="nf4")
    if bias is not None:
        layer.bias = nn.Parameter(bias, requires_grad=False)
    return layer.to(device)  # bitsandbytes quantises on the move to a device


def _quantise_linears(module: nn.Module, precision: str, keep: tuple[str, ...] = ()) -> None:
    """Every nn.Linear under `module` (but those whose attribute name is in `keep`) -> 8/4-bit."""
    for name, child_module in list(module.named_modules()):
        if not isinstance(child_module, nn.Linear) or name.rpartition(".")[2] in keep:
            continue
        parent_name, _, child = name.rpartition(".")
        parent = module.get_submodule(parent_name) if parent_name else module
        setattr(parent, child, _quantised_linear(child_module, precision))


def set_precision(model: nn.Module, precision: str, towers: str = "fp32") -> nn.Module:
    """The language model in `precision` (fp32, bf16, 8bit, 4bit), in place; returns `model`.
    `towers` (fp32, bf16, lm) is what the vision tower, Q-Former and projection become: kept in
    float32, cast to bf16, or given the LM's precision (quantised Linears, bf16 elsewhere).

    Anything but float32 throughout folds LoRA in first (a quantised base cannot take a float update,
    and a merged model is what one serves). The model is put in eval mode: this is for answering, not
    training.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if towers not in TOWER_PRECISIONS:
        raise ValueError(f"towers {towers!r}: choose one of {', '.join(TOWER_PRECISIONS)}")
    model.eval()
    if precision == "fp32" and towers != "bf16":
        return model
    merge_lora(model)
    parts = [model.vision, model.qformer, model.projection]
    if towers == "bf16" or (towers == "lm" and precision != "fp32"):
        for part in parts:
            part.to(torch.bfloat16)
        if towers == "lm" and precision in ("8bit", "4bit"):
            for part in parts:
                _quantise_linears(part, precision)
    lm = model.language_model
    if precision == "bf16":
        lm.to(torch.bfloat16)
    elif precision in ("8bit", "4bit"):
        _quantise_linears(lm, precision, keep=KEEP_FULL_PRECISION)
    return model


def module_bytes(module: nn.Module) -> int:
    """Bytes held by the module's parameters and buffers as stored (int8 / packed 4-bit weights count
    at their stored size; bitsandbytes' per-row scales and quantisation states are included)."""
    total = 0
    for tensor in [*module.parameters(), *module.buffers()]:
        total += tensor.numel() * tensor.element_size()
        for extra in ("SCB",):  # LLM.int8() row scales
            value = getattr(tensor, extra, None)
            if isinstance(value, torch.Tensor):
                total += value.numel() * value.element_size()
        state = getattr(tensor, "quant_state", None)  # 4-bit absmax (and its nested state)
        if state is not None:
            for value in (getattr(state, "absmax", None), getattr(state, "code", None)):
                if isinstance(value, torch.Tensor):
                    total += value.numel() * value.element_size()
    return total
