"""FLOPs of one training step, counted by component, and the device peaks that turn them into MFU.

A matrix multiply of a [tokens, n_in] input by an [n_in, n_out] weight costs 2 x n_in x n_out FLOPs
per token forward. Backward costs the same again for the input's gradient (needed when anything
upstream trains) and again for the weight's gradient (needed when the weight trains). So per token
and weight element:

    trained weight                                  6   (forward, input grad, weight grad)
    frozen weight, something upstream trains        4   (forward, input grad): a LoRA base, the LM
                                                         when only the projection trains
    frozen weight, nothing upstream trains          2   (forward only): frozen towers

Each component counts its own tokens: the LM every position of the batch (text and image query
tokens, padding included: it is computed), the vision tower its patches + CLS per image, the
Q-Former its query tokens per image (its cross-attention keys and values: the vision tokens), the
projection the query tokens per image. Attention's own matmuls (scores and weighted sum) add
4 x seq x width per token and layer forward, x3 with backward; the LM's use the full row length (the
usual convention: a causal or packed mask computes less). Embedding tables and position tables are
lookups and count nothing; the LM head is a matmul and counts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch

# Dense bf16 tensor-core peaks in TFLOP/s, keyed by torch.cuda.get_device_name() exactly: a name not
# here gives no MFU rather than a guessed one (set VLMPIPE_PEAK_TFLOPS to name the peak yourself).
PEAK_TFLOPS = {
    "NVIDIA H200": 989.0,
    "NVIDIA H100 80GB HBM3": 989.0,
    "NVIDIA H100 PCIe": 756.0,
    "NVIDIA H100 NVL": 835.0,
    "NVIDIA A100-SXM4-80GB": 312.0,
    "NVIDIA A100-SXM4-40GB": 312.0,
    "NVIDIA A100 80GB PCIe": 312.0,
    "NVIDIA A100-PCIE-40GB": 312.0,
    "NVIDIA L4": 121.0,
    "NVIDIA A10": 125.0,
    "NVIDIA L40S": 362.0,
    "NVIDIA GeForce RTX 4090": 165.2,
    "NVIDIA GeForce RTX 3090": 71.0,
}


def peak_flops(device: torch.device | str | None = None) -> float | None:
    """FLOP/s peak of `device` (bf16, dense); VLMPIPE_PEAK_TFLOPS overrides (and is the only way on
    a CPU). None when unknown."""
    if os.environ.get("VLMPIPE_PEAK_TFLOPS"):
        return float(os.environ["VLMPIPE_PEAK_TFLOPS"]) * 1e12
    device = torch.device(device) if device is not None else None
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        tflops = PEAK_TFLOPS.get(torch.cuda.get_device_name(device))
        return tflops * 1e12 if tflops else None
    return None


# the chain an image and its tokens go through; what trains upstream decides whether backward runs
CHAIN = ("vision", "qformer", "projection", "language_model")


def _component(name: str) -> str:
    head = name.split(".", 1)[0]
    return head if head in CHAIN else "language_model"


def _is_lookup(name: str, p: torch.nn.Parameter) -> bool:
    lookups = ("embed_tokens", "class_embedding", "position_embedding", "query_tokens")
    return p.ndim < 2 or any(k in name for k in lookups)


@dataclass(frozen=True)
class StepFlops:
    """Per-token FLOP coefficients of a model under one choice of trainable weights."""

    lm_per_token: float  # weights, per LM position
    lm_attention_per_token_per_seq: float  # x row length, per LM position
    vision_per_image: float
    qformer_per_image: float
    projection_per_image: float

    @classmethod
    def of(cls, model: torch.nn.Module) -> StepFlops:
        """Count from `model`'s parameters (meta tensors work): what trains is read from requires_grad;
        LoRA switched off for the stage (model/language.py switch_off_idle_lora) runs nothing."""
        from model.language import lora_switched_off

        preset = model.preset
        trains = {c: False for c in CHAIN}
        weights = {c: {2: 0, 4: 0, 6: 0} for c in CHAIN}
        cross_kv = {2: 0, 4: 0, 6: 0}  # Q-Former weights that run over the vision tokens
        patch_embed = {2: 0, 4: 0, 6: 0}  # the patch convolution runs over the patches (no CLS)
        for name, p in model.named_parameters():
            trains[_component(name)] |= p.requires_grad
        upstream = {c: any(trains[u] for u in CHAIN[: CHAIN.index(c)]) for c in CHAIN}
        lora_off = lora_switched_off(model.language_model)  # adapters that add nothing, skipped
        # a component also needs input gradients when one of its own earlier weights trains (LoRA in
        # layer 0 needs layer 31's input gradient): inside a component any trained weight counts
        for name, p in model.named_parameters():
            if _is_lookup(name, p) or (lora_off and ".lora_" in name):
                continue
            c = _component(name)
            mult = 6 if p.requires_grad else (4 if upstream[c] or trains[c] else 2)
            if c == "qformer" and "crossattention" in name and (".key." in name or ".value." in name):
                cross_kv[mult] += p.numel()
            elif "patch_embedding" in name:
                patch_embed[mult] += p.numel()
            else:
                weights[c][mult] += p.numel()

        def per(c: str, tokens: int) -> float:
            return float(sum(m * n for m, n in weights[c].items()) * tokens)

        patch = int(preset.vision_kwargs["patch_size"])
        vision_tokens = (preset.image_size // patch) ** 2 + 1
        queries = preset.num_query_tokens
        lm_layers = int(preset.lm_kwargs["num_hidden_layers"])
        vit_layers = int(preset.vision_kwargs["num_hidden_layers"])
        q_layers = int(preset.qformer_kwargs["num_hidden_layers"])
        cross_every = int(preset.qformer_kwargs.get("cross_attention_frequency", 2))
        cross_layers = len(range(0, q_layers, cross_every))

        def attn(mult_of: str) -> int:  # forward 4, + backward (input grads through the scores) 8
            return 12 if (trains[mult_of] or upstream[mult_of]) else 4

        vit_w = preset.vision_hidden
        q_w = preset.qformer_hidden
        return cls(
            lm_per_token=per("language_model", 1),
            lm_attention_per_token_per_seq=float(attn("language_model") * lm_layers * preset.lm_hidden),
            vision_per_image=per("vision", vision_tokens)
            + float(sum(m * n for m, n in patch_embed.items()) * (vision_tokens - 1))
            + attn("vision") * vit_layers * vit_w * vision_tokens * vision_tokens,
            # a token merge (visual_tokens: merge) is a reshape: no weights, no FLOPs
            qformer_per_image=0.0
            if preset.visual_tokens == "merge"
            else per("qformer", queries)
            + float(sum(m * n for m, n in cross_kv.items()) * vision_tokens)
            + attn("qformer") * q_w * (q_layers * queries * queries + cross_layers * queries * vision_tokens),
            projection_per_image=per("projection", queries),
        )

    def step(self, *, rows: int, seq_len: int, images: int, lm: bool = True, towers: bool = True) -> float:
        """FLOPs of one step over `rows` LM rows of `seq_len` positions and `images` images;
        `lm=False` for a step that skips the LM (a contrastive-only stage embeds tokens only);
        `towers=False` when the images come as cached Q-Former outputs (the towers do not run)."""
        lm_flops = rows * seq_len * (self.lm_per_token + self.lm_attention_per_token_per_seq * seq_len)
        lm_flops = lm_flops if lm else 0.0
        tower_flops = self.vision_per_image + self.qformer_per_image if towers else 0.0
        return lm_flops + images * (tower_flops + self.projection_per_image)

    def as_dict(self) -> dict[str, float]:
        return {
            "lm_per_token": self.lm_per_token,
            "lm_attention_per_token_per_seq": self.lm_attention_per_token_per_seq,
            "vision_per_image": self.vision_per_image,
            "qformer_per_image": self.qformer_per_image,
            "projection_per_image": self.projection_per_image,
        }
