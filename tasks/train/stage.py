"""Run one training stage: build the model, load the previous stage's checkpoint, freeze all but the
stage's groups, train on the stage's packed mixture, and write the checkpoint.

A stage writes `resume/` every `checkpoint_every` steps (weights + optimizer, scheduler, RNG and
data-iterator state) and `checkpoint/` at the end, both atomically; a killed stage that is started
again continues from `resume/`, and a finished one is not run twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
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
from tasks import shapes_world, stopping
from tasks.data.features import select_feature_readers
from tasks.data.stage_data import StageData, StageLoader, build_pools
from tasks.tracking import Tracker
from tasks.train import keys, recipe
from tasks.train.flops import StepFlops, peak_flops
from tasks.train.progress import ProgressBar, duration
from tasks.train.throughput import Throughput

# Keyed by the names of data_specs.registry.CONTRASTIVE_LOSSES (the tests check they match).
CONTRASTIVE_LOSSES: dict[str, Callable[..., Any]] = keys.CONTRASTIVE_LOSSES


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


# Settings that change what is logged, how often a state is saved, or where and in how many pieces
# the same global batch is computed: a resume may differ in them (the update is the same).
_RESUME_NEUTRAL = (
    "description",
    "log_every",
    "checkpoint_every",
    "device",
    "processes",
    "compile",
    "attention",
    "frozen_features",
    "loader",
)
_RESUME_NEUTRAL_SCHEDULE = ("accumulation_steps",)


def resume_relevant(stage: StageSpec) -> dict[str, Any]:
    """The stage spec as a resumed run must find it again (JSON values)."""
    exclude: dict[str, Any] = {k: True for k in _RESUME_NEUTRAL}
    exclude["schedule"] = {k: True for k in _RESUME_NEUTRAL_SCHEDULE}
    return stage.model_dump(mode="json", exclude=exclude)


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

    With `processes: N > 1` (and not already under torchrun) the stage runs as N torchrun processes
    (tasks/train/launch.py); this process relays their log lines and metrics. `max_steps` stops
    early (after saving a resumable state): used to test kill-and-resume.
    """
    from model.checkpoint import CheckpointError, verify_checkpoint

    output_dir = Path(output_dir)
    final_dir = output_dir / "checkpoint"
    if final_dir.exists():
        try:
            verify_checkpoint(final_dir)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; delete {final_dir} to train stage {stage.name} again") from None
        log(f"stage {stage.name}: finished checkpoint found at {final_dir}; not training again")
        return {"checkpoint": str(final_dir), "skipped": True}
    output_dir.mkdir(parents=True, exist_ok=True)
    procs = recipe.Processes.from_env()
    if stage.processes > 1 and not procs.distributed:
        from tasks.train.launch import run_torchrun

        return run_torchrun(
            stage,
            model_spec,
            data_dirs=data_dirs,
            output_dir=output_dir,
            init_checkpoint=init_checkpoint,
            tracker=tracker,
            log=log,
            max_steps=max_steps,
        )
    if procs.distributed and procs.world != stage.processes:
        raise RuntimeError(
            f"stage {stage.name} asks for {stage.processes} processes; torchrun started {procs.world}"
        )
    device = recipe.resolve_device(stage.device, procs.local_rank)
    with recipe.stage_processes(procs, device):
        return _train(
            stage, model_spec, data_dirs, output_dir, init_checkpoint, tracker, log, max_steps, procs, device
        )


def _train(
    stage: StageSpec,
    model_spec: ModelSpec,
    data_dirs: dict[str, str],
    output_dir: Path,
    init_checkpoint: str | None,
    tracker: Tracker | None,
    log: Callable[[str], None],
    max_steps: int | None,
    procs: recipe.Processes,
    device: torch.device,
) -> dict[str, Any]:
    from model.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
    from model.language import switch_off_idle_lora
    from model.trainable import set_trainable

    final_dir, resume_dir = output_dir / "checkpoint", output_dir / "resume"
    say = log if procs.main else (lambda _msg: None)
    if not procs.main:
        tracker = None

    # -- the model: built on the CPU from the previous checkpoint, the stage's groups trainable, placed once
    random.seed(stage.seed)
    torch.manual_seed(stage.seed)
    built, prior_groups = build_model(
        model_spec,
        image_size=stage.image_size,
        init_checkpoint=init_checkpoint,
        tokenizer_corpus=shapes_world.tokenizer_corpus,
        log=say,
    )
    model = built.model
    counts = set_trainable(model, stage.trainable, log=say)
    ablated = set(getattr(model, "ablated", ()))  # groups the model's ablations removed hold nothing
    keep_groups = [g for g in dict.fromkeys(prior_groups + list(stage.trainable)) if g not in ablated]

    # -- resume: the weights go into the whole model before it is placed (and sharded)
    start_step, losses, state = 0, [], None
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
    if switch_off_idle_lora(model.language_model):  # before placing: B is read whole, not sharded
        say(
            f"stage {stage.name}: LoRA is frozen and still zero (it adds nothing): switched off for this stage"
        )
    recipe.prepare_model(model, stage, device, procs, keep_groups)
    sharded = any(recipe.is_sharded(p) for p in model.parameters())
    if sharded:
        lm_params = list(model.language_model.parameters())
        here = sum(p.to_local().numel() if recipe.is_sharded(p) else p.numel() for p in lm_params)
        say(
            f"stage {stage.name}: language model sharded over {procs.world} processes (FSDP2): "
            f"{here:,} of its {sum(p.numel() for p in lm_params):,} weights on each"
        )
    named = recipe.trainable_named(model)

    # -- the data: every process packs the same global stream and takes its rows of each batch
    pools = build_pools(stage, data_dirs, log=say)
    readers = select_feature_readers(stage, pools, model, say)
    data = StageData.for_model(stage, pools, built, features=readers)
    sched = stage.schedule
    optimizer = recipe.make_optimizer(model, stage)
    guard = recipe.VanishingGuard(stage)
    if state is not None:  # optimizer, data position, RNG and guard state, as the last save left them
        if sharded:
            recipe.load_full_optimizer_state(model, optimizer, state["optimizer"])
        else:
            optimizer.load_state_dict(state["optimizer"])
        data.load_state_dict(state["data"])
        _set_rng_state(state["rng"])
        guard.load_state_dict(state.get("guard", {}))
        start_step, losses = int(state["step"]), list(state["losses"])
        say(f"stage {stage.name}: resuming at step {start_step} from {resume_dir}")

    flops = StepFlops.of(model)
    peak = peak_flops(device)
    if tracker is not None:
        tracker.log_params(
            {
                "trainable_params": sum(counts.values()),
                "trainable_groups": ",".join(stage.trainable),
                "init_checkpoint": init_checkpoint or "(base model)",
                "device": str(device),
                "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "processes": procs.world,
            }
        )
        tracker.log_dict(model.config_summary(), "model.json")  # sizes and parameters per group
        tracker.log_dict(flops.as_dict(), "flops.json")
    meter = Throughput(peak_flops=peak * procs.world if peak else None, device=device)
    recipe.set_train_mode(model)
    end_step = sched.steps if max_steps is None else min(sched.steps, max_steps)
    contrastive_fn = CONTRASTIVE_LOSSES[stage.contrastive.loss] if stage.contrastive else None
    queue = keys.stage_queue(
        stage,
        model,
        lambda: StageData.for_model(stage, pools, built, features=readers),
        output_dir,
        device,
        fingerprint=spec_digest,
        write=procs.main,
        log=say,
    )
    started = time.perf_counter()

    def save(directory: Path, step: int, *, resumable: bool = True) -> None:
        # rank 0 writes; the finished checkpoint (what the next stage and the registry take) has no
        # optimizer. A sharded model is gathered first, by every process.
        parameters = recipe.full_parameters(model) if sharded else None
        optimizer_state = None
        if resumable:
            optimizer_state = (
                recipe.full_optimizer_state(model, optimizer) if sharded else optimizer.state_dict()
            )
        if procs.main:
            training_state = None
            if resumable:
                training_state = {
                    "step": step,
                    "losses": losses,
                    "optimizer": optimizer_state,
                    "data": loader.state_dict(),
                    "rng": _rng_state(),
                    "guard": guard.state_dict(),
                }
            save_checkpoint(
                directory,
                model,
                keep_groups,
                tokenizer=built.tokenizer,
                training_state=training_state,
                parameters=parameters,
                metadata={
                    "stage": stage.name,
                    "step": step,
                    "preset": built.preset.name,
                    "image_size": built.preset.image_size,
                    "stage_spec": resume_relevant(stage),
                    "stage_spec_sha256": spec_digest,
                },
            )
        procs.barrier()

    # -- the steps
    bar = ProgressBar(stage.name, sched.steps, start_step) if procs.main else None
    # the images of this rank's rows come from loader workers, ahead of the step
    loader = StageLoader(
        data, lambda b: recipe.split_rows(b, procs.world, procs.rank), pin_memory=device.type == "cuda"
    )
    drawn = [0] * len(data.pools)  # samples per dataset, since this process (re)started the stage
    # SIGINT/SIGTERM: the loop stops at the end of the step in progress, its state saved. The whole
    # loop defers, not each step alone: a request landing between two steps (the moment a test or a
    # scheduler reacts to a step's log line) would otherwise interrupt unsaved.
    with stopping.handling(), stopping.deferred(), contextlib.ExitStack() as cleanup:
        cleanup.callback(loader.close)
        if bar is not None:
            cleanup.callback(bar.close)
        for step in range(start_step, end_step):
            lr = sched.lr_at(step)
            recipe.set_lr(optimizer, lr)
            t0 = time.perf_counter()
            loaded = next(loader)
            batch = loaded.batch
            result = recipe.train_step(
                model,
                optimizer,
                stage,
                batch,
                images=loaded.images,
                features=data.uses_features,
                procs=procs,
                device=device,
                named=named,
                contrastive_fn=contrastive_fn,
                queue=queue,
                step=step + 1,
                timer=time.perf_counter,
            )
            guard.check(step + 1, result.grad_norm, result.group_norms)
            losses.append(result.loss)
            for i in batch.datasets:
                drawn[i] += 1
            if bar is not None:
                bar.update(step + 1, result.loss, result.tokens / max(time.perf_counter() - t0, 1e-9))
            meter.add(
                tokens=result.tokens,
                samples=result.samples,
                data_s=time.perf_counter() - t0 - result.compute_s,  # batch building and pixel loading
                compute_s=result.compute_s,
                flops=flops.step(
                    rows=result.rows,
                    seq_len=batch.input_ids.shape[1],
                    images=result.images,
                    lm=stage.autoregressive,
                    towers=not data.uses_features,
                ),
            )
            if (step + 1) % stage.log_every == 0 or step + 1 == end_step:
                _report(stage, step + 1, lr, result, batch, meter.report(), tracker, say, started, start_step)
            if stage.checkpoint_every and (step + 1) % stage.checkpoint_every == 0 and step + 1 < sched.steps:
                save(resume_dir, step + 1)
            stop = procs.any(stopping.requested() is not None, device)  # every rank stops at one step
            if stop:
                save(resume_dir, step + 1)
                raise stopping.Interrupted(
                    stopping.requested() or 15,
                    f"stage {stage.name} stopped after step {step + 1}; state saved in {resume_dir}",
                )

    if end_step < sched.steps:
        save(resume_dir, end_step)
        return {"checkpoint": None, "resume": str(resume_dir), "steps": end_step, "stopped_early": True}

    save(final_dir, sched.steps, resumable=False)
    if procs.main:
        shutil.rmtree(resume_dir, ignore_errors=True)  # the finished checkpoint supersedes it
    window = max(1, len(losses) // 10)
    summary = {
        "checkpoint": str(final_dir),
        "steps": sched.steps,
        "loss_start": sum(losses[:window]) / window,
        "loss_end": sum(losses[-window:]) / window,
        "truncated_samples": loader.state_dict()["truncated"],
        "groups": keep_groups,
        "device": str(device),
        "processes": procs.world,
        "mixture": _realized_mixture(data, drawn),
    }
    if tracker is not None:
        tracker.log_metrics(
            {
                "loss_start": summary["loss_start"],
                "loss_end": summary["loss_end"],
                "truncated_samples": loader.state_dict()["truncated"],
                **{f"mixture_share.{m['dataset']}": m["realized_share"] for m in summary["mixture"]},
            }
        )
    say(
        f"stage {stage.name}: loss {summary['loss_start']:.3f} -> {summary['loss_end']:.3f}; checkpoint {final_dir}"
    )
    return summary


def _realized_mixture(data: StageData, drawn: list[int]) -> list[dict[str, Any]]:
    """Each dataset's share of the samples this process trained on, beside the share the spec asked for."""
    total = max(sum(drawn), 1)
    return [
        {
            "dataset": pool.spec.name,
            "task": pool.spec.task,
            "spec_share": float(data.sampler.shares[i]),
            "realized_share": drawn[i] / total,
            "samples": drawn[i],
        }
        for i, pool in enumerate(data.pools)
    ]


def _report(
    stage: StageSpec,
    step: int,
    lr: float,
    result: recipe.StepResult,
    batch,
    figures: dict[str, float],
    tracker: Tracker | None,
    say: Callable[[str], None],
    started: float,
    start_step: int,
) -> None:
    """The step's metrics to MLflow and one log line with the ETA."""
    metrics = {
        "loss": result.loss,
        "lr": lr,
        "packing_efficiency": batch.real_tokens / batch.capacity,
        **figures,
    }
    if result.grad_norm is not None:
        metrics["grad_norm"] = result.grad_norm
    parts = ""
    if stage.contrastive is not None:
        if result.lm_loss is not None:
            metrics["lm_loss"] = result.lm_loss
            parts = f" (lm {result.lm_loss:.4f}, {stage.contrastive.loss} {result.contrastive_loss:.4f})"
        metrics[f"{stage.contrastive.loss}_loss"] = result.contrastive_loss
    if tracker is not None:
        tracker.log_metrics(metrics, step=step)
    total = stage.schedule.steps
    per_step = (time.perf_counter() - started) / max(1, step - start_step)
    eta = per_step * (total - step)
    say(
        f"{stage.name} step {step}/{total} loss {result.loss:.4f}{parts} lr {lr:.2e} "
        f"tok/s {figures['tokens_per_s']:.0f} data-wait {figures['data_wait_share']:.1%} "
        f"eta {duration(eta)}"
    )
