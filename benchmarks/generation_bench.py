"""Generation speed and memory of a preset with its language model in fp32, bf16, 8-bit and 4-bit.

    python benchmarks/generation_bench.py                                   # tiny preset, on the CPU
    python benchmarks/generation_bench.py --preset tinygptv-phi2 --device cuda   # real size, random weights
    python benchmarks/generation_bench.py --preset tinygptv-phi2 --memory-only   # real size, bytes only (CPU)

One image and a --prompt-tokens text prompt at batch 1 (and --batch), greedy, --new-tokens tokens
with no end symbol so every run decodes the same count, through the KV-cache loop the `chat` command
uses (model/generation.py). Per precision it prints: prefill ms (the prompt and the image), decode
ms per new token, tokens/s, the language model's stored bytes (model/inference.py module_bytes),
the whole model's, and on CUDA the peak allocated memory; ratios are against fp32 in the same run.
Weights are random (no download); LoRA is merged before bf16/8-bit/4-bit, as `chat` does.
`--towers` is what the vision tower, Q-Former and projection become (fp32, bf16, or lm: the LM's
precision, quantised Linears for 8/4-bit), as `chat --towers` does. `--memory-only` builds,
converts and weighs each precision without generating: what a machine without the accelerator can
say about a real-size model's footprint (stored bytes, not a CUDA peak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.inference import PRECISIONS, TOWER_PRECISIONS, module_bytes, set_precision  # noqa: E402
from model.lora import DEFAULT_LORA  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.vlm import VisionLanguageModel  # noqa: E402


def build(preset_name: str, device: torch.device, dtype: torch.dtype = torch.float32) -> VisionLanguageModel:
    """Random weights in `dtype` (bf16 halves what a real-size build needs in host memory)."""
    preset = get_preset(preset_name)
    vocab = int(preset.lm_kwargs.get("vocab_size") or 1024)
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            return VisionLanguageModel(
                preset, vocab, image_token_id=vocab - 1, pad_token_id=0, lora=DEFAULT_LORA
            )
    finally:
        torch.set_default_dtype(previous)


def weigh(args, precision: str, device: torch.device) -> dict:
    """--memory-only: stored bytes after set_precision, no generation."""
    dtype = torch.float32 if precision == "fp32" else torch.bfloat16
    model = set_precision(build(args.preset, device, dtype), precision, towers=args.towers)
    parts = {
        part: module_bytes(getattr(model, part))
        for part in ("vision", "qformer", "projection", "language_model")
    }
    result = {
        "precision": precision,
        "towers": args.towers,
        "by_part": parts,
        "model_bytes": module_bytes(model),
    }
    del model
    return result


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed_generate(model, ids, pixels, new_tokens: int, device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    out = model.generate(ids, None, pixels, max_new_tokens=new_tokens, eos_token_ids=[])
    sync(device)
    assert all(len(row) == new_tokens for row in out)
    return time.perf_counter() - start


def measure(args, precision: str, device: torch.device) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    model = set_precision(build(args.preset, device), precision, towers=args.towers)
    preset = model.preset
    vocab = model.vocab_size
    rows = {}
    for batch in sorted({1, args.batch}):
        g = torch.Generator().manual_seed(batch)
        text = torch.randint(1, vocab - 2, (batch, args.prompt_tokens), generator=g)
        images = torch.full((batch, preset.num_query_tokens), vocab - 1)
        ids = torch.cat([images, text], dim=1).to(device)
        pixels = torch.randn(batch, 3, preset.image_size, preset.image_size, generator=g).to(device)
        timed_generate(model, ids, pixels, 4, device)  # warm-up (kernels, allocator, caches)
        prefill = statistics.median(
            timed_generate(model, ids, pixels, 1, device) for _ in range(args.repeats)
        )
        total = statistics.median(
            timed_generate(model, ids, pixels, args.new_tokens, device) for _ in range(args.repeats)
        )
        decode_ms = (total - prefill) / (args.new_tokens - 1) * 1000
        rows[batch] = {
            "prefill_ms": prefill * 1000,
            "decode_ms_per_token": decode_ms,
            "tokens_per_s": batch * 1000 / decode_ms,
        }
    result = {
        "precision": precision,
        "towers": args.towers,
        "by_batch": rows,
        "lm_bytes": module_bytes(model.language_model),
        "model_bytes": module_bytes(model),
    }
    if device.type == "cuda":
        result["peak_allocated_bytes"] = torch.cuda.max_memory_allocated(device)
    del model
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--precisions", default=",".join(PRECISIONS))
    ap.add_argument("--prompt-tokens", type=int, default=32)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=8, help="a second batch size besides 1")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--towers", default="fp32", choices=TOWER_PRECISIONS)
    ap.add_argument("--memory-only", action="store_true", help="weigh each precision, do not generate")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if args.memory_only:
        results = [weigh(args, p, device) for p in precisions]
        if args.json:
            print(json.dumps(results, indent=2))
            return 0
        print(f"stored bytes: preset {args.preset}, towers {args.towers} (random weights, no generation)")
        print(
            f"{'precision':<10}"
            + "".join(f"{k + ' MB':>20}" for k in results[0]["by_part"])
            + f"{'model MB':>12}"
        )
        for r in results:
            cells = "".join(f"{v / 2**20:>20.1f}" for v in r["by_part"].values())
            print(f"{r['precision']:<10}{cells}{r['model_bytes'] / 2**20:>12.1f}")
        return 0
    results = [measure(args, p, device) for p in precisions]
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    name = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"CPU ({torch.get_num_threads()} threads)"
    )
    print(
        f"generation: preset {args.preset} on {name}; prompt {args.prompt_tokens} tokens + 1 image, "
        f"{args.new_tokens} new tokens; towers {args.towers}"
    )
    base = results[0]
    header = f"{'precision':<10}{'batch':>6}{'prefill ms':>12}{'ms/token':>10}{'tok/s':>10}{'LM MB':>10}{'model MB':>10}"
    if device.type == "cuda":
        header += f"{'peak MB':>10}"
    print(header + f"{'LM x fp32':>11}")
    for r in results:
        for batch, row in r["by_batch"].items():
            line = (
                f"{r['precision']:<10}{batch:>6}{row['prefill_ms']:>12.1f}{row['decode_ms_per_token']:>10.2f}"
                f"{row['tokens_per_s']:>10.0f}{r['lm_bytes'] / 2**20:>10.1f}{r['model_bytes'] / 2**20:>10.1f}"
            )
            if device.type == "cuda":
                line += f"{r['peak_allocated_bytes'] / 2**20:>10.0f}"
            print(line + f"{r['lm_bytes'] / base['lm_bytes']:>11.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
