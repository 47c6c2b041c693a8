"""Packing vs the original pad-to-longest batching on the same stage mixture.

Prints, for each: the non-pad token share of the batches and the training-step throughput in
real (non-pad) tokens per second on the tiny model, then their ratios. Both modes draw the same
samples per step (pad-to-longest uses as many rows as packing fits samples), so the difference
is padding alone.

    .venv/bin/python benchmarks/packing_bench.py [--stage data_specs/stages/stage4_multitask.yaml] [--steps 40]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from data_specs.pipelines import ModelSpec  # noqa: E402
from data_specs.stages import load_stage_spec  # noqa: E402
from model.build import build_model  # noqa: E402
from model.trainable import set_trainable  # noqa: E402
from tasks import shapes_world, stage_data  # noqa: E402
from tasks.data.stage_data import StageData, build_pools  # noqa: E402


def measure(
    stage, built, pools, *, packing: bool, rows: int, steps: int, warmup: int = 3
) -> dict[str, float]:
    model = built.model
    data = StageData.for_model(stage, pools, built, rows=rows, packing=packing)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    real = cap = samples = 0
    elapsed = 0.0
    for step in range(warmup + steps):
        batch, pixels = data.next_batch()
        t0 = time.perf_counter()
        out = model(
            input_ids=batch.input_ids,
            pixel_values=pixels,
            segment_ids=batch.segment_ids,
            attention_mask=batch.attention_mask,
            labels=batch.labels,
        )
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        if step >= warmup:
            elapsed += time.perf_counter() - t0
            real, cap, samples = real + batch.real_tokens, cap + batch.capacity, samples + batch.num_samples
    return {
        "non_pad_share": real / cap,
        "tokens_per_s": real / elapsed,
        "samples_per_s": samples / elapsed,
        "samples_per_step": samples / steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default=str(ROOT / "data_specs/stages/stage4_multitask.yaml"))
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--images", type=int, default=600)
    args = parser.parse_args()
    torch.manual_seed(0)
    stage = load_stage_spec(args.stage)
    records = shapes_world.in_memory_records(args.images, 0, seed=0)
    stage_data._RECORD_CACHE[("bench", "train")] = records  # the benchmark needs no ingest
    pools = build_pools(
        stage, {name: "bench" for name in {d.source for d in stage.mixture.datasets if d.source}}
    )
    built, _ = build_model(
        ModelSpec(preset="tiny"), image_size=stage.image_size, tokenizer_corpus=shapes_world.tokenizer_corpus
    )
    set_trainable(built.model, stage.trainable, log=None)
    packed = measure(stage, built, pools, packing=True, rows=stage.schedule.batch_size, steps=args.steps)
    rows = max(1, round(packed["samples_per_step"]))
    padded = measure(stage, built, pools, packing=False, rows=rows, steps=args.steps)
    print(
        f"stage {stage.name}: max_len {stage.max_len}, {args.steps} steps each, "
        f"{packed['samples_per_step']:.1f} samples/step in both modes, torch threads {torch.get_num_threads()}"
    )
    print(f"{'mode':<16}{'non-pad share':>14}{'real tok/s':>12}{'samples/s':>11}")
    for name, r in (("packed", packed), ("pad-to-longest", padded)):
        print(f"{name:<16}{r['non_pad_share']:>14.3f}{r['tokens_per_s']:>12.0f}{r['samples_per_s']:>11.1f}")
    print(
        f"ratio packed / pad-to-longest: non-pad share {packed['non_pad_share'] / padded['non_pad_share']:.2f}x, "
        f"tokens/s {packed['tokens_per_s'] / padded['tokens_per_s']:.2f}x"
    )


if __name__ == "__main__":
    main()
