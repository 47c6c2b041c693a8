"""What each same-maths speed-up of the training step buys, against the step without it, in one run.

    python benchmarks/same_maths_bench.py                    # tiny-merge, the demo's shapes, on the CPU
    python benchmarks/same_maths_bench.py --preset tiny --steps 40

The changes compute the same function (to float rounding):
  idle LoRA off   a stage that freezes LoRA while every B is still zero skips the adapters (their
                  dropout and two products per projection; model/language.py switch_off_idle_lora)
  tanh GELU       Phi's tanh-approximated GELU through torch's fused kernel (gelu_pytorch_tanh)
                  instead of transformers' gelu_new, a chain of elementwise operations
  foreach AdamW   one kernel per optimizer operation over all weights instead of a loop over them
                  (on the CPU at the tiny preset its gain is within the machine's noise)
Two step shapes, as the demo trains them: `base` (shapes_base: every group trains, LoRA frozen at
zero; 8 rows x 128 tokens) and `stage4` (LoRA, projection and norms train; 8 rows x 192 tokens).
Each case is timed over --steps steps after 3 warm-up steps, cases interleaved --repeats times;
the median is printed beside its ratio to the baseline (all off). LoRA trains in `stage4`, so it
stays on there, as a stage leaves it. Weights are random.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.language import switch_off_idle_lora  # noqa: E402
from model.trainable import set_trainable  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train_step_bench as bench  # noqa: E402

SHAPES = {
    # groups, tokens per row, text tokens per sample, LoRA B zero (frozen) or trained
    "base": (
        [
            "vision",
            "qformer",
            "projection",
            "language_model",
            "qk_norm",
            "post_attention_norm",
            "input_layernorm",
            "final_layernorm",
        ],
        128,
        (8, 24),
        True,
    ),
    "stage4": (
        ["projection", "lora", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"],
        192,
        (15, 60),
        False,
    ),
}
CASES = {
    "baseline": dict(lora_off=False, tanh=False, foreach=False),
    "idle LoRA off": dict(lora_off=True, tanh=False, foreach=False),
    "tanh GELU": dict(lora_off=False, tanh=True, foreach=False),
    "foreach AdamW": dict(lora_off=False, tanh=False, foreach=True),
    "idle LoRA off + tanh GELU": dict(lora_off=True, tanh=True, foreach=False),
}


def make_step(preset: str, shape: str, *, lora_off: bool, tanh: bool, foreach: bool):
    from transformers.activations import ACT2FN

    groups, seq_len, text, zero_b = SHAPES[shape]
    torch.manual_seed(0)
    model = bench.build(preset, None, torch.device("cpu"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name and not zero_b:
                param.normal_(0.0, 0.02)
    act = ACT2FN["gelu_pytorch_tanh" if tanh else "gelu_new"]
    for layer in model.language_model.model.layers:
        layer.mlp.activation_fn = act
    set_trainable(model, groups, log=None)
    if lora_off:
        switch_off_idle_lora(model.language_model)  # as a stage does: only LoRA that adds nothing
    model.set_packed_attention("dense")
    model.train()
    bench.TEXT_TOKENS[shape] = text
    ids, labels, segs, n_images = bench.packed_rows(
        shape, 8, seq_len, model.preset.num_query_tokens, model.vocab_size
    )
    size = model.preset.image_size
    pixels = torch.randn(n_images, 3, size, size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-4, foreach=foreach)

    def step():
        optimizer.zero_grad(set_to_none=True)
        model(input_ids=ids, segment_ids=segs, labels=labels, pixel_values=pixels).loss.backward()
        optimizer.step()

    return step


def timed(step, steps: int) -> float:
    for _ in range(3):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return (time.perf_counter() - started) / steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="tiny-merge")
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print(f"# {args.preset} on the cpu, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| shape | case | s/step (median) | speed-up |")
    print("|---|---|---|---|")
    for shape in SHAPES:
        steps = {name: make_step(args.preset, shape, **flags) for name, flags in CASES.items()}
        times: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(args.repeats):  # interleaved: a slow spell of the machine hits every case
            for name in times:
                times[name].append(timed(steps[name], args.steps))
        base = statistics.median(times["baseline"])
        for name, samples in times.items():
            median = statistics.median(samples)
            print(f"| {shape} | {name} | {median:.3f} | {base / median:.2f}x |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
