"""The pieces of a training stage, in the order a stage uses them: the device and the process group,
the model, the optimizer, one step, the guards. `tasks/train/stage.py` strings them together.

One step over a global batch of `batch_size` rows:

    global batch (every rank packs the same one from the seeded stream; only tokens, cheap)
      └ rank r takes rows [r x B/W, (r+1) x B/W); its loader's workers load those rows' images
        alone (pixels, or cached frozen features), ahead of the step
          └ k micro-batches of B/(W k) rows, each: forward, loss = summed CE / N, backward
    gradients summed over ranks (one all-reduce per dtype), guards, clip, optimizer step

N is the number of label tokens in the whole global batch (all ranks), so the update is the one a
single process would make on all B rows at once, whatever W and k are (to float rounding). The
contrastive loss (InfoNCE over a micro-batch's samples) is weighted by the micro-batch's share of the
global batch's samples; its negatives are the micro-batch's samples, so it alone changes with W x k.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from data_specs.stages import StageSpec
from model.tokenizer import IGNORE_INDEX
from tasks.data.packing import Batch

DEVICE_ENV = "VLMPIPE_DEVICE"


class TrainingHalted(RuntimeError):
    """A guard stopped the stage; `cause` goes to the MLflow run as the tag vlmpipe.failure."""

    def __init__(self, message: str, cause: str):
        super().__init__(message)
        self.cause = cause
        self.mlflow_tags = {"vlmpipe.failure": cause}


# ------------------------------------------------------------------------------ device, processes


def resolve_device(requested: str | None, local_rank: int = 0) -> torch.device:
    """The stage's device: its spec's `device`, else $VLMPIPE_DEVICE, else auto (cuda when present).
    Under torchrun, a bare `cuda` means this process's local rank."""
    name = requested or os.environ.get(DEVICE_ENV) or "auto"
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {name!r} asked for, but torch sees no CUDA device")
        if device.index is None:
            device = torch.device("cuda", local_rank)
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(
                f"device {device} asked for, but torch sees {torch.cuda.device_count()} GPU(s)"
            )
    elif device.type != "cpu":
        raise RuntimeError(f"device {name!r}: use cpu, cuda, cuda:N or auto")
    return device


def autocast_for(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast on the device in use; fp32 runs without autocast."""
    if precision != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


@dataclass
class Processes:
    """This process's place among the stage's data-parallel processes (rank 0 of 1 when alone)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @classmethod
    def from_env(cls) -> Processes:
        """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK; alone when they are not set."""
        return cls(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )

    def start(self, device: torch.device) -> None:
        if self.distributed and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            if device.type == "cuda":
                torch.cuda.set_device(device)
            torch.distributed.init_process_group(backend=backend, rank=self.rank, world_size=self.world)

    def stop(self) -> None:
        if self.distributed and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()

    def sum_(self, tensors: list[torch.Tensor]) -> None:
        """Sum `tensors` over all processes, in place (flattened: one collective per dtype)."""
        if not self.distributed or not tensors:
            return
        by_dtype: dict[torch.dtype, list[torch.Tensor]] = {}
        for t in tensors:
            by_dtype.setdefault(t.dtype, []).append(t)
        for group in by_dtype.values():
            flat = torch.cat([t.reshape(-1) for t in group])
            torch.distributed.all_reduce(flat)
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()

    def sum_values(self, values: list[float], device: torch.device) -> list[float]:
        if not self.distributed:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        torch.distributed.all_reduce(t)
        return t.tolist()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when it is true on one (stop requests agree on the step)."""
        if not self.distributed:
            return flag
        t = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()


# ------------------------------------------------------------------------------------ model


def store_frozen_in_bf16(model: torch.nn.Module, keep_groups: list[str]) -> int:
    """Under bf16 on a GPU, keep the weights no stage has trained (the base towers and LM) in bf16:
    half their memory, and autocast computes in bf16 anyway. Trained and trainable weights stay
    float32 (the optimizer's and the checkpoint's precision). Returns how many were cast."""
    from model.trainable import group_of

    cast = 0
    for name, param in model.named_parameters():
        if not param.requires_grad and group_of(name) not in keep_groups and param.is_floating_point():
            param.data = param.data.to(torch.bfloat16)
            cast += param.numel()
    return cast


def prepare_model(
    model: torch.nn.Module,
    stage: StageSpec,
    device: torch.device,
    procs: Processes | None = None,
    keep_groups: list[str] | None = None,
) -> torch.nn.Module:
    """Place the model on `device` once; packed attention, frozen base weights in bf16 (bf16 on a
    GPU), gradient checkpointing, FSDP and torch.compile when asked."""
    if stage.precision == "bf16" and device.type == "cuda" and keep_groups is not None:
        store_frozen_in_bf16(model, keep_groups)
    model.to(device)
    model.set_packed_attention(packed_attention(stage, device))
    if stage.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if stage.fsdp and procs is not None and procs.distributed:
        shard_language_model(model, device, procs)
    if stage.compile:
        model.language_model.compile()
    return model


def packed_attention(stage: StageSpec, device: torch.device) -> str:
    """The stage's `attention` on this device: auto is block_sparse on CUDA with FlexAttention."""
    from model.attention import flex_available

    if stage.attention == "block_sparse" and device.type != "cuda":
        raise ValueError(
            f"stage {stage.name}: attention: block_sparse trains on CUDA only (FlexAttention has no "
            "backward on the CPU); use attention: auto or dense"
        )
    if stage.attention != "auto":
        return stage.attention
    return "block_sparse" if device.type == "cuda" and flex_available() else "dense"


def shard_language_model(model: torch.nn.Module, device: torch.device, procs: Processes) -> None:
    """FSDP2 over the language model: one unit per decoder layer, the root unit for the rest (final
    norm, LM head). The token embedding stays whole on every process: the model looks image
    embeddings into it before the LM's forward, outside any unit. Gradients are summed, not averaged,
    over the processes (train_step already divides by the global batch's label tokens)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard

    mesh = init_device_mesh(device.type, (procs.world,))
    lm = model.language_model
    embedding = lm.get_input_embeddings().weight
    layers = [m for m in lm.modules() if type(m).__name__.endswith("DecoderLayer")]
    if not layers:
        raise RuntimeError("fsdp: found no decoder layers in the language model to shard")
    units = [fully_shard(layer, mesh=mesh) for layer in layers]
    units.append(fully_shard(lm, mesh=mesh, ignored_params={embedding}))
    for unit in units:
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)  # plain sums: gloo has no pre-multiplied sum


def is_sharded(t: torch.Tensor | None) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if is_sharded(t) else t


def full_parameters(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter whole, on the CPU of process 0 (a collective: every process calls it; the
    others get an empty dict)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    names = {n for n, _ in model.named_parameters()}
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    return {n: t for n, t in full.items() if n in names}


def full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """The optimizer's state whole, keyed by parameter name (a collective, like full_parameters)."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

    return get_optimizer_state_dict(
        model, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )


def load_full_optimizer_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer, state: dict) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

    set_optimizer_state_dict(
        model, optimizer, optim_state_dict=state, options=StateDictOptions(full_state_dict=True)
    )


def set_train_mode(model: torch.nn.Module) -> None:
    """Train mode, but a tower with no trainable weight stays in eval mode (its dropout off, as at
    inference) and runs under no_grad (model.encode_images checks requires_grad)."""
    model.train()
    for name in ("vision", "qformer"):
        tower = getattr(model, name)
        if not any(p.requires_grad for p in tower.parameters()):
            tower.eval()


def param_groups(model, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict]:
    """Optimizer groups: decayed matrices and undecayed biases/norms, split again by learning-rate
    scale (`lr_scale` maps a trainable group to its multiplier; the rest use 1.0). Each optimizer
    group carries its "lr_scale" so the schedule can set lr x scale every step."""
    from model.trainable import group_of

    lr_scale = lr_scale or {}
    buckets: dict[tuple[float, bool], list] = {}
    for name, p in model.named_parameters():
        if p.requires_grad:
            decays = not (p.ndim < 2 or "norm" in name)
            buckets.setdefault((float(lr_scale.get(group_of(name), 1.0)), decays), []).append(p)
    return [
        {"params": params, "weight_decay": weight_decay if decays else 0.0, "lr_scale": scale}
        for (scale, decays), params in sorted(buckets.items(), key=lambda kv: (-kv[0][0], not kv[0][1]))
    ]


def make_optimizer(model: torch.nn.Module, stage: StageSpec) -> torch.optim.Optimizer:
    """AdamW over the trainable weights, or bitsandbytes' 8-bit AdamW (its states in 8 bits)."""
    sched = stage.schedule
    groups = param_groups(model, sched.weight_decay, sched.lr_scale)
    if sched.optimizer == "adamw_8bit":
        try:
            import bitsandbytes as bnb
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise RuntimeError(f"schedule.optimizer adamw_8bit needs bitsandbytes: {exc}") from None
        return bnb.optim.AdamW8bit(groups, lr=sched.lr, betas=sched.betas)
    # foreach: one kernel per operation over all the weights (torch's default on CUDA). On the CPU,
    # at the tiny preset, its gain is within the machine's noise (benchmarks/same_maths_bench.py);
    # the demo's published figures were trained with it. A sharded model (FSDP2) mixes DTensor and
    # plain weights, which one foreach call cannot take: torch chooses there.
    sharded = any(is_sharded(p) for group in groups for p in group["params"])
    return torch.optim.AdamW(groups, lr=sched.lr, betas=sched.betas, foreach=None if sharded else True)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


# -------------------------------------------------------------------------------------- step


def label_tokens(batch: Batch) -> int:
    """Label tokens the model's loss will count in `batch` (the shifted targets inside one sample)."""
    from model.packing import same_segment_targets

    targets = batch.labels[:, 1:]
    keep = targets != IGNORE_INDEX
    keep &= same_segment_targets(batch.segment_ids)
    return int(keep.sum())


def split_rows(batch: Batch, parts: int, index: int) -> Batch:
    """Part `index` of `parts` equal row ranges."""
    size = batch.rows // parts
    return batch.select_rows(index * size, (index + 1) * size)


def split_images(batch: Batch, images: torch.Tensor | None, parts: int, index: int) -> torch.Tensor | None:
    """The images of split_rows(batch, parts, index), cut from `images` (all of `batch`'s, row-major)."""
    if images is None:
        return None
    size = batch.rows // parts
    start = sum(1 for r in batch.image_rows if r < index * size)
    count = sum(1 for r in batch.image_rows if index * size <= r < (index + 1) * size)
    return images[start : start + count] if count else None


@dataclass
class StepResult:
    loss: float  # the global batch's loss (the same value on every rank)
    lm_loss: float | None
    contrastive_loss: float | None
    grad_norm: float | None  # before clipping; None when not computed
    tokens: int  # real tokens of the global batch
    rows: int
    samples: int
    images: int
    data_s: float = 0.0
    compute_s: float = 0.0
    group_norms: dict[str, float] = field(default_factory=dict)  # before clipping


def forward_losses(
    model,
    stage: StageSpec,
    batch: Batch,
    pixels,
    device,
    contrastive_fn,
    *,
    features: bool = False,
    queue: torch.Tensor | None = None,
) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(summed LM cross-entropy, mean contrastive loss) of one micro-batch. `pixels` are the
    micro-batch's images, or their cached Q-Former outputs when `features`; `queue` the stage's
    contrastive keys (tasks/train/keys.py)."""
    images = {"image_features": pixels} if features else {"pixel_values": pixels}
    ids = batch.input_ids.to(device, non_blocking=True)
    segs = batch.segment_ids.to(device, non_blocking=True)
    mask = batch.attention_mask.to(device, non_blocking=True)
    lm_sum = contrastive = None
    if stage.autoregressive:
        out = model(
            input_ids=ids,
            segment_ids=segs,
            attention_mask=mask,
            labels=batch.labels.to(device, non_blocking=True),
            return_embeds=stage.contrastive is not None,
            **images,
        )
        lm_sum, embeds = out.loss * out.num_label_tokens, out.inputs_embeds
    else:  # contrastive only: the LM's input embeddings are all it needs
        embeds = model.embed_inputs(
            ids, images.get("pixel_values"), image_features=images.get("image_features")
        )
    if stage.contrastive is not None:
        contrastive, _ = contrastive_fn(
            model,
            embeds,
            ids,
            None if features else pixels,
            segment_ids=segs,
            attention_mask=mask,
            temperature=stage.contrastive.temperature,
            queue=queue,
        )
    return lm_sum, contrastive


def trainable_named(model: torch.nn.Module) -> list[tuple[str, torch.nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def gradient_norm(
    named: list[tuple[str, torch.nn.Parameter]], procs: Processes | None = None
) -> tuple[float, dict[str, float]]:
    """The global L2 norm of the gradients (after they were summed over processes) and the norm of
    each trainable group's; a non-finite gradient makes its group's norm non-finite. A sharded
    gradient's squares are summed over the processes. One transfer from the device per step."""
    from model.trainable import GROUPS, group_of

    squares, groups, sharded = [], [], []
    for name, p in named:
        if p.grad is not None:
            squares.append(_local(p.grad.detach()).float().pow(2).sum())
            groups.append(GROUPS.index(group_of(name)))
            sharded.append(is_sharded(p.grad))
    if not squares:
        return 0.0, {}
    values = torch.stack(squares).double().cpu().tolist()
    whole, shards = [0.0] * len(GROUPS), [0.0] * len(GROUPS)
    for value, group, is_shard in zip(values, groups, sharded, strict=True):
        (shards if is_shard else whole)[group] += value
    if procs is not None and procs.distributed and any(sharded):
        shards = procs.sum_values(shards, torch.device("cpu"))
    per_group = {GROUPS[g]: math.sqrt(whole[g] + shards[g]) for g in sorted(set(groups))}
    return math.sqrt(sum(whole) + sum(shards)), per_group


def clip_gradients(params: list[torch.nn.Parameter], max_norm: float, norm: float) -> None:
    """Scale every gradient by max_norm / norm when norm is above max_norm (torch's rule), with the
    norm already summed over processes and shards."""
    if any(is_sharded(p.grad) for p in params if p.grad is not None):
        coef = max_norm / (norm + 1e-6)
        if coef < 1.0:
            for p in params:
                if p.grad is not None:
                    p.grad.mul_(coef)
        return
    # unsharded: torch's own rule recomputes the norm (its foreach kernels, its order of sums); kept
    # so that a run's rounding, and the demo's figures, do not move with this refactor
    torch.nn.utils.clip_grad_norm_(params, max_norm)


def train_step(
    model,
    optimizer: torch.optim.Optimizer,
    stage: StageSpec,
    batch: Batch,
    *,
    images: torch.Tensor | None,
    procs: Processes,
    device: torch.device,
    named: list[tuple[str, torch.nn.Parameter]],
    contrastive_fn: Callable[..., Any] | None,
    step: int,
    timer: Callable[[], float],
    features: bool = False,
    queue: torch.Tensor | None = None,
) -> StepResult:
    """One optimizer step over the global `batch` (see the module docstring). `images` are those of
    this rank's rows (split_rows(batch, world, rank)), row-major: pixels, or cached Q-Former
    outputs when `features`."""
    k = stage.schedule.accumulation_steps
    mine = split_rows(batch, procs.world, procs.rank)
    total_labels = max(label_tokens(batch), 1)  # the same on every rank: every rank has the global batch
    total_samples = max(batch.num_samples, 1)
    autocast = autocast_for(device, stage.precision)
    optimizer.zero_grad(set_to_none=True)
    lm_total = torch.zeros((), dtype=torch.float64)
    con_total = torch.zeros((), dtype=torch.float64)
    data_s = compute_s = 0.0
    for i in range(k):
        t0 = timer()
        micro = split_rows(mine, k, i)
        pixels = split_images(mine, images, k, i)
        if pixels is not None:
            pixels = pixels.to(device, non_blocking=True)
        t1 = timer()
        with autocast:
            lm_sum, con = forward_losses(
                model, stage, micro, pixels, device, contrastive_fn, features=features, queue=queue
            )
        loss = torch.zeros((), device=device)
        if lm_sum is not None:
            loss = loss + lm_sum / total_labels
            lm_total += float(lm_sum.detach()) / total_labels
        if con is not None:
            share = micro.num_samples / total_samples
            loss = loss + stage.contrastive.weight * con * share
            con_total += float(con.detach()) * share
        if not torch.isfinite(loss.detach()):
            raise TrainingHalted(
                f"stage {stage.name}: loss is {float(loss.detach())} at step {step}; lower schedule.lr "
                "or check the data (vlmpipe spec preview)",
                "nonfinite_loss",
            )
        loss.backward()
        data_s += t1 - t0
        compute_s += timer() - t1
    t2 = timer()
    grads = [p.grad for _, p in named if p.grad is not None and not is_sharded(p.grad)]
    procs.sum_(grads)  # a sharded (FSDP) gradient was reduce-scattered, summed, in backward
    lm_value, con_value = procs.sum_values([float(lm_total), float(con_total)], device)
    norm, group_norms = gradient_norm(named, procs)
    bad = [g for g, v in group_norms.items() if not math.isfinite(v)]
    if bad:
        raise TrainingHalted(
            f"stage {stage.name}: non-finite gradient at step {step} in group {', '.join(bad)}; lower "
            "schedule.lr, set schedule.grad_clip, or use precision fp32",
            "nonfinite_gradient",
        )
    if stage.schedule.grad_clip:
        clip_gradients([p for _, p in named], stage.schedule.grad_clip, norm)
    optimizer.step()
    compute_s += timer() - t2
    lm_loss = lm_value if stage.autoregressive else None
    con_loss = con_value if stage.contrastive is not None else None
    total = (lm_loss or 0.0) + (stage.contrastive.weight * con_loss if con_loss is not None else 0.0)
    return StepResult(
        loss=total,
        lm_loss=lm_loss,
        contrastive_loss=con_loss,
        grad_norm=norm,
        tokens=batch.real_tokens,
        rows=batch.rows,
        samples=batch.num_samples,
        images=len(batch.images),
        data_s=data_s,
        compute_s=compute_s,
        group_norms=group_norms,
    )


class VanishingGuard:
    """Stops the stage when the gradient norm stays under `floor` for `steps` steps in a row."""

    def __init__(self, stage: StageSpec):
        self.stage = stage
        self.floor = stage.guards.grad_norm_floor
        self.steps = stage.guards.floor_steps
        self.run = 0

    def check(self, step: int, norm: float | None, groups: dict[str, float]) -> None:
        """`norm` and `groups` (each group's norm) as train_step's StepResult gives them."""
        if self.floor is None or norm is None:
            return
        self.run = self.run + 1 if norm < self.floor else 0
        if self.run >= self.steps:
            largest = max(groups, key=groups.get) if groups else "none"
            raise TrainingHalted(
                f"stage {self.stage.name}: gradient norm under {self.floor:g} for {self.steps} steps "
                f"(last {norm:.3g} at step {step}; largest group {largest} {groups.get(largest, 0.0):.3g}): "
                "the gradients vanished; raise schedule.lr or check which groups train",
                "vanishing_gradient",
            )

    def state_dict(self) -> dict[str, int]:
        return {"run": self.run}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.run = int(state.get("run", 0))


@contextlib.contextmanager
def stage_processes(procs: Processes, device: torch.device) -> Iterator[Processes]:
    procs.start(device)
    try:
        yield procs
    finally:
        procs.stop()
