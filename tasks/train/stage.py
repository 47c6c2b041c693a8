"""Run one training stage: build the model, load the previous stage's checkpoint, freeze all but the
stage's groups, train on the stage's packed mixture, and write the checkpoint.

A stage writes `resume/` every `checkpoint_every` steps (weights + optimizer, scheduler, RNG and
data-iterator state) and `checkpoint/` at the end, both atomically; a killed stage that is started
again continues from `resume/`, and a finished one is not run twice.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from data_specs.pipelines import ModelSpec
from data_specs.stages import StageSpec
from model.build import build_model
from model.losses import semantic_transform_loss
from tasks import shapes_world, stopping
from tasks.data.stage_data import StageData, build_pools
from tasks.tracking import Tracker
from tasks.train.throughput import Throughput, flops_per_token

# Keyed by the names of data_specs.registry.CONTRASTIVE_LOSSES (the tests check they match):
# loss(inputs_embeds, input_ids, image_token_id, *, segment_ids, attention_mask, temperature)
CONTRASTIVE_LOSSES: dict[str, Callable[..., Any]] = {"semantic_transform": semantic_transform_loss}


def lr_at(step: int, s) -> float:
    """Linear warm-up from warmup_lr to lr, then cosine from lr to min_lr (LAVIS' schedule)."""
    if step < s.warmup_steps:
        return s.warmup_lr + (s.lr - s.warmup_lr) * step / max(1, s.warmup_steps)
    progress = (step - s.warmup_steps) / max(1, s.steps - s.warmup_steps)
    return s.min_lr + (s.lr - s.min_lr) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(model, weight_decay: float, lr_scale: dict[str, float] | None = None) -> list[dict]:
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


STAGE_RESULT = "result.json"  # beside checkpoint/: the finished stage's summary and MLflow run id


def write_stage_result(output_dir: str | Path, result: dict[str, Any]) -> None:
    path = Path(output_dir) / STAGE_RESULT
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2))
    tmp.replace(path)


def finished_stage(output_dir: str | Path) -> dict[str, Any] | None:
    """The stored result of a stage whose final checkpoint is there and verifies; else None."""
    from model.checkpoint import CheckpointError, verify_checkpoint

    output_dir = Path(output_dir)
    try:
        result = json.loads((output_dir / STAGE_RESULT).read_text())
        verify_checkpoint(output_dir / "checkpoint")
    except (OSError, ValueError, CheckpointError):
        return None
    return result if result.get("checkpoint") == str(output_dir / "checkpoint") else None


# Settings that only change what is logged or how often a state is saved: a resume may differ in them.
_RESUME_NEUTRAL = ("description", "log_every", "checkpoint_every")


def resume_relevant(stage: StageSpec) -> dict[str, Any]:
    """The stage spec as a resumed run must find it again (JSON values)."""
    return stage.model_dump(mode="json", exclude=set(_RESUME_NEUTRAL))


def stage_fingerprint(stage: StageSpec) -> str:
    text = json.dumps(resume_relevant(stage), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def changed_fields(saved: dict[str, Any], stage: StageSpec) -> list[str]:
    """Dotted names of the resume-relevant fields that differ between `saved` and `stage`."""
    from tasks.tracking import flatten

    before, now = flatten(saved), flatten(resume_relevant(stage))
    return sorted(k for k in before.keys() | now.keys() if before.get(k) != now.get(k))


def _rng_state() -> dict:
    return {"python": random.getstate(), "torch": torch.get_rng_state()}


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])


def train_stage(
    stage: StageSpec,
    model_spec: ModelSpec,
    *,
    data_dirs: dict[str, str],
    output_dir: str | Path,
    init_checkpoint: str | None = None,
    tracker: Tracker | None = None,
    log: Callable[[str], None] = print,
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train one stage; returns a small JSON-able summary with the checkpoint path.

    `max_steps` stops early (after saving a resumable state): used to test kill-and-resume.
    """
    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, verify_checkpoint
    from model.trainable import set_trainable

    output_dir = Path(output_dir)
    final_dir, resume_dir = output_dir / "checkpoint", output_dir / "resume"
    if final_dir.exists():
        try:
            verify_checkpoint(final_dir)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete {final_dir} to train stage {stage.name} again") from None
        log(f"stage {stage.name}: finished checkpoint found at {final_dir}; not training again")
        return {"checkpoint": str(final_dir), "skipped": True}
    output_dir.mkdir(parents=True, exist_ok=True)

    random.seed(stage.seed)
    torch.manual_seed(stage.seed)
    built, prior_groups = build_model(
        model_spec,
        image_size=stage.image_size,
        init_checkpoint=init_checkpoint,
        tokenizer_corpus=shapes_world.tokenizer_corpus,
        log=log,
    )
    model = built.model
    counts = set_trainable(model, stage.trainable, log=log)
    keep_groups = list(dict.fromkeys(prior_groups + list(stage.trainable)))
    if stage.gradient_checkpointing:
        model.enable_gradient_checkpointing()

    pools = build_pools(stage, data_dirs)
    data = StageData.for_model(stage, pools, built)
    sched = stage.schedule
    contrastive = stage.contrastive
    optimizer = torch.optim.AdamW(
        _param_groups(model, sched.weight_decay, sched.lr_scale), lr=sched.lr, betas=sched.betas
    )
    start_step, losses = 0, []
    spec_digest = stage_fingerprint(stage)
    if resume_dir.exists():
        start_over = f"delete {resume_dir} to start stage {stage.name} over"
        try:
            info = load_checkpoint(resume_dir, model)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; {start_over}") from None
        changed = changed_fields(info.metadata.get("stage_spec", {}), stage)
        if changed:
            raise CheckpointError(
                f"{resume_dir}: written for another version of stage {stage.name} "
                f"({', '.join(changed[:4])}{' ...' if len(changed) > 4 else ''} changed); "
                f"put the spec back to resume, or {start_over}"
            )
        state = info.training_state or {}
        optimizer.load_state_dict(state["optimizer"])
        data.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        start_step, losses = int(state["step"]), list(state["losses"])
        log(f"stage {stage.name}: resuming at step {start_step} from {resume_dir}")

    if tracker is not None:
        tracker.log_params(
            {
                "trainable_params": sum(counts.values()),
                "trainable_groups": ",".join(stage.trainable),
                "init_checkpoint": init_checkpoint or "(base model)",
            }
        )
        tracker.log_dict(model.config_summary(), "model.json")  # sizes and parameters per group
    autocast = torch.autocast(device_type="cpu", dtype=torch.bfloat16, enabled=stage.precision == "bf16")
    # MFU counts the LM's forward and backward; a contrastive-only stage skips the LM, so none is reported.
    meter = Throughput(flops_per_token=flops_per_token(model) if stage.autoregressive else 0.0)
    model.train()
    end_step = sched.steps if max_steps is None else min(sched.steps, max_steps)

    def save(directory: Path, step: int, *, resumable: bool = True) -> None:
        # the finished checkpoint (what the next stage and the registry take) carries no optimizer
        training_state = None
        if resumable:
            training_state = {
                "step": step,
                "losses": losses,
                "optimizer": optimizer.state_dict(),
                "data": data.state_dict(),
                "rng": _rng_state(),
            }
        save_checkpoint(
            directory,
            model,
            keep_groups,
            tokenizer=built.tokenizer,
            training_state=training_state,
            metadata={
                "stage": stage.name,
                "step": step,
                "preset": built.preset.name,
                "image_size": built.preset.image_size,
                "stage_spec": resume_relevant(stage),
                "stage_spec_sha256": spec_digest,
            },
        )

    with stopping.handling():  # SIGINT/SIGTERM end the stage at a step boundary, state saved
        for step in range(start_step, end_step):
            with stopping.deferred():  # a stop request waits for the step to end
                lr = lr_at(step, sched)
                for group in optimizer.param_groups:
                    group["lr"] = lr * group.get("lr_scale", 1.0)
                t0 = time.perf_counter()
                batch, pixels = data.next_batch()
                t1 = time.perf_counter()
                lm_loss = contrastive_loss = None
                with autocast:
                    if stage.autoregressive:
                        out = model(
                            input_ids=batch.input_ids,
                            pixel_values=pixels,
                            segment_ids=batch.segment_ids,
                            attention_mask=batch.attention_mask,
                            labels=batch.labels,
                            return_embeds=contrastive is not None,
                        )
                        lm_loss, embeds = out.loss, out.inputs_embeds
                    else:  # contrastive only: the LM's input embeddings are all it needs
                        embeds = model.embed_inputs(batch.input_ids, pixels)
                if contrastive is not None:
                    contrastive_loss, _ = CONTRASTIVE_LOSSES[contrastive.loss](
                        embeds,
                        batch.input_ids,
                        model.image_token_id,
                        segment_ids=batch.segment_ids,
                        attention_mask=batch.attention_mask,
                        temperature=contrastive.temperature,
                    )
                if lm_loss is None:
                    loss = contrastive.weight * contrastive_loss
                elif contrastive_loss is None:
                    loss = lm_loss
                else:
                    loss = lm_loss + contrastive.weight * contrastive_loss
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"stage {stage.name}: loss is {loss.item()} at step {step + 1}; lower "
                        "schedule.lr or check the data (vlmpipe spec preview)"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = None
                if sched.grad_clip:
                    params = [p for g in optimizer.param_groups for p in g["params"]]
                    grad_norm = float(torch.nn.utils.clip_grad_norm_(params, sched.grad_clip))
                optimizer.step()
                t2 = time.perf_counter()
                loss_value = loss.item()
                losses.append(loss_value)
                meter.add(
                    tokens=batch.real_tokens, samples=batch.num_samples, data_s=t1 - t0, compute_s=t2 - t1
                )
                if (step + 1) % stage.log_every == 0 or step + 1 == end_step:
                    figures = meter.report()
                    metrics = {
                        "loss": loss_value,
                        "lr": lr,
                        "packing_efficiency": batch.real_tokens / batch.capacity,
                        **figures,
                    }
                    if grad_norm is not None:
                        metrics["grad_norm"] = grad_norm
                    if contrastive is not None:
                        if lm_loss is not None:
                            metrics["lm_loss"] = lm_loss.item()
                        metrics[f"{contrastive.loss}_loss"] = contrastive_loss.item()
                    if tracker is not None:
                        tracker.log_metrics(metrics, step=step + 1)
                    parts = ""
                    if contrastive is not None and lm_loss is not None:
                        parts = (
                            f" (lm {lm_loss.item():.4f}, {contrastive.loss} {contrastive_loss.item():.4f})"
                        )
                    log(
                        f"{stage.name} step {step + 1}/{sched.steps} loss {loss_value:.4f}{parts} lr {lr:.2e} "
                        f"tok/s {figures['tokens_per_s']:.0f} data-wait {figures['data_wait_share']:.1%}"
                    )
                if (
                    stage.checkpoint_every
                    and (step + 1) % stage.checkpoint_every == 0
                    and step + 1 < sched.steps
                ):
                    save(resume_dir, step + 1)
            if stopping.requested() is not None:
                save(resume_dir, step + 1)
                raise stopping.Interrupted(
                    stopping.requested(),
                    f"stage {stage.name} stopped after step {step + 1}; state saved in {resume_dir}",
                )

    if end_step < sched.steps:
        save(resume_dir, end_step)
        return {"checkpoint": None, "resume": str(resume_dir), "steps": end_step, "stopped_early": True}

    save(final_dir, sched.steps, resumable=False)
    shutil.rmtree(resume_dir, ignore_errors=True)  # the finished checkpoint supersedes it
    window = max(1, len(losses) // 10)
    summary = {
        "checkpoint": str(final_dir),
        "steps": sched.steps,
        "loss_start": sum(losses[:window]) / window,
        "loss_end": sum(losses[-window:]) / window,
        "truncated_samples": data.truncated,
        "groups": keep_groups,
    }
    if tracker is not None:
        tracker.log_metrics(
            {
                "loss_start": summary["loss_start"],
                "loss_end": summary["loss_end"],
                "truncated_samples": data.truncated,
            }
        )
    log(
        f"stage {stage.name}: loss {summary['loss_start']:.3f} -> {summary['loss_end']:.3f}; checkpoint {final_dir}"
    )
    return summary
