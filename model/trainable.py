"""Named parameter groups and per-stage freezing: which parts of the model a stage trains.

Every parameter belongs to exactly one group, decided from its name alone, so a stage spec can say
`trainable: [projection, lora, qk_norm, ...]` and a checkpoint can store exactly those groups.
`GROUPS` is the registry stage specs are checked against; torch is needed only for type hints here,
so spec validation reads it without loading torch.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn

GROUPS: tuple[str, ...] = (
    "vision",  # EVA ViT tower
    "qformer",  # Q-Former and its query tokens
    "projection",  # proj_in (768->4096) and proj_out (4096->LM hidden)
    "lora",  # LoRA A/B matrices in the LM's attention
    "mm_adapter",  # LaVIN's MM-Adapters (model/mm_adapter.py) in the LM, and in the vision tower when asked
    "qk_norm",  # q_layernorm / k_layernorm in every attention block
    "post_attention_norm",  # TinyGPT-V's RMSNorm after every attention block
    "input_layernorm",  # each decoder layer's input LayerNorm
    "final_layernorm",  # the LM's last LayerNorm
    "language_model",  # all other LM weights: embeddings, attention, MLP, lm_head
)

# Checked in this order inside the language model: the norm and LoRA groups carve pieces out of it.
_LM_MARKERS: tuple[tuple[str, str], ...] = (
    (".mm_adapter.", "mm_adapter"),
    (".lora_", "lora"),
    (".q_layernorm.", "qk_norm"),
    (".k_layernorm.", "qk_norm"),
    (".post_attention_norm.", "post_attention_norm"),
    (".input_layernorm.", "input_layernorm"),
    (".final_layernorm.", "final_layernorm"),
)


def group_of(param_name: str) -> str:
    """Group of a parameter name as it appears in VisionLanguageModel.named_parameters()."""
    top = param_name.split(".", 1)[0]
    if top == "vision" and ".mm_adapter." in param_name:
        return "mm_adapter"
    if top in ("vision", "qformer", "projection"):
        return top
    if top == "language_model":
        for marker, group in _LM_MARKERS:
            if marker in param_name:
                return group
        return "language_model"
    raise KeyError(f"parameter {param_name!r} belongs to no group (expected a VisionLanguageModel parameter)")


def check_groups(groups: Iterable[str]) -> list[str]:
    """Validate group names; returns them as a list in GROUPS order without duplicates."""
    wanted = set(groups)
    unknown = sorted(wanted - set(GROUPS))
    if unknown:
        raise ValueError(f"unknown parameter group(s) {unknown}; known groups: {', '.join(GROUPS)}")
    return [g for g in GROUPS if g in wanted]


def parameter_counts(model: nn.Module) -> dict[str, tuple[int, int]]:
    """{group: (total parameters, trainable parameters)} for every group in GROUPS."""
    counts = {group: [0, 0] for group in GROUPS}
    for name, param in model.named_parameters():
        entry = counts[group_of(name)]
        entry[0] += param.numel()
        entry[1] += param.numel() if param.requires_grad else 0
    return {group: (total, trainable) for group, (total, trainable) in counts.items()}


def format_count(n: int) -> str:
    """Human-readable parameter count: 512, 12.3K, 2.1M, 2.7B."""
    for threshold, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= threshold:
            return f"{n / threshold:.1f}{suffix}"
    return str(n)


def set_trainable(
    model: nn.Module, groups: Iterable[str], log: Callable[[str], None] | None = print
) -> dict[str, int]:
    """Freeze everything, then unfreeze `groups`; log one line per group; return trainable counts."""
    chosen = set(check_groups(groups))
    counts = parameter_counts(model)
    # a group the model's ablations removed (e.g. qk_norm) is skipped: the stage trains the rest
    ablated = {g for g in getattr(model, "ablated", ()) if counts.get(g, (0, 0))[0] == 0}
    # a token merge (visual_tokens: merge) has no Q-Former weights: a stage that trains the towers
    # names `qformer` for either kind of preset, and on a merge preset that part is simply empty
    merged = getattr(getattr(model, "preset", None), "visual_tokens", "qformer") == "merge"
    weightless = {"qformer"} if merged and counts["qformer"][0] == 0 else set()
    chosen -= ablated | weightless
    empty = sorted(group for group in chosen if counts[group][0] == 0)
    if empty:
        # e.g. a stage that trains `lora` on a model built with lora=None would silently train nothing.
        raise ValueError(f"parameter group(s) {empty} have no parameters in this model")
    for name, param in model.named_parameters():
        param.requires_grad_(group_of(name) in chosen)
    counts = parameter_counts(model)
    if log is not None:
        width = max(len(g) for g in GROUPS)
        for group in GROUPS:
            total = counts[group][0]
            if group in ablated:
                log(f"[Ablated] {group:<{width}}  removed from the model")
                continue
            if group in weightless:
                log(f"[No weights] {group:<{width}}  the preset merges ViT tokens instead")
                continue
            if total == 0:
                continue  # e.g. no LoRA injected: nothing to report
            status = "[TRAINABLE]" if group in chosen else "[Frozen]"
            log(f"{status} {group:<{width}}  {format_count(total)} params")
    return {group: counts[group][1] for group in GROUPS}


def group_state_dict(model: nn.Module, groups: Iterable[str]) -> dict[str, torch.Tensor]:
    """The parameters of `groups`, by name (the tensors themselves, not copies)."""
    chosen = set(check_groups(groups))
    return {name: param for name, param in model.named_parameters() if group_of(name) in chosen}
