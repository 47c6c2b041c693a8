"""Training-step throughput, MFU and peak memory of a preset, at a fixed number of tokens per row.

    python benchmarks/train_step_bench.py                                  # tiny preset, on the CPU
    python benchmarks/train_step_bench.py --preset tinygptv-phi2 --device cuda   # real size, random weights

Two step shapes, each packed to --seq-len tokens per row with the samples' boundaries kept exact:
  stage1  captions right after their image (12-32 text tokens per image, so about 20 images per
          1,024-token row), projections and norms training; images as pixels ("computed") or as
          cached Q-Former outputs ("cached", what a feature cache gives a frozen-tower stage)
  stage4  instruction samples of 20-300 text tokens, at the stage-4 resolution (448 px for the real
          presets), LoRA, projections and norms training
and, for each, fp32 vs bf16 (autocast, frozen base weights stored in bf16 on a GPU) and dense vs
block-sparse packed attention (block-sparse needs CUDA: FlexAttention has no CPU backward).

MFU counts the FLOPs of what runs (tasks/train/flops.py: 2 per weight per token forward, 4 more
for a weight that trains, 2 more where only input gradients flow, attention by sequence) over the
device's bf16 dense peak (set VLMPIPE_PEAK_TFLOPS on a device the table lacks). Needs only torch,
transformers, peft and this repository's model/ and tasks/train/flops.py: runnable on a GPU machine
without the rest of the stack. Weights are random: no download.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from model.lora import DEFAULT_LORA  # noqa: E402
from model.presets import get_preset  # noqa: E402
from model.trainable import set_trainable  # noqa: E402
from model.vlm import VisionLanguageModel  # noqa: E402
from tasks.train.flops import StepFlops, peak_flops  # noqa: E402

STAGE_GROUPS = {
    "stage1": ["projection", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"],
    "stage4": ["projection", "lora", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"],
}
TEXT_TOKENS = {"stage1": (12, 32), "stage4": (20, 300)}
IGNORE = -100


def build(preset_name: str, image_size: int | None, device: torch.device) -> VisionLanguageModel:
    preset = get_preset(preset_name)
    if image_size:
        preset = preset.with_image_size(image_size)
    vocab = int(preset.lm_kwargs.get("vocab_size") or 1024)
    torch.manual_seed(0)
    with torch.device(device):
        model = VisionLanguageModel(
            preset, vocab, image_token_id=vocab - 1, pad_token_id=0, lora=DEFAULT_LORA
        )
    return model


def packed_rows(kind: str, rows: int, seq_len: int, queries: int, vocab: int, seed: int = 0):
    """Rows of whole samples (image tokens, prompt, answer) packed up to seq_len; returns
    input_ids, labels, segment_ids and the number of images."""
    rng = random.Random(seed)
    ids = torch.zeros(rows, seq_len, dtype=torch.long)
    labels = torch.full((rows, seq_len), IGNORE, dtype=torch.long)
    segs = torch.zeros(rows, seq_len, dtype=torch.long)
    images = 0
    low, high = TEXT_TOKENS[kind]
    for r in range(rows):
        pos, seg = 0, 0
        while True:
            text = rng.randint(low, high)
            prompt = 4 if kind == "stage1" else min(24, text // 3)
            n = queries + text
            if pos + n > seq_len:
                break
            seg += 1
            ids[r, pos : pos + queries] = vocab - 1
            ids[r, pos + queries : pos + n] = torch.randint(1, vocab - 2, (text,))
            labels[r, pos + queries + prompt : pos + n] = ids[r, pos + queries + prompt : pos + n]
            segs[r, pos : pos + n] = seg
            pos, images = pos + n, images + 1
    return ids, labels, segs, images


def peak_memory(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    try:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB (process peak)
    except ImportError:
        return None


def run_case(model, kind, *, cached, precision, attention, rows, seq_len, steps, device) -> dict:
    set_trainable(model, STAGE_GROUPS[kind], log=None)
    model.set_packed_attention(attention)
    model.train()
    model.vision.eval()
    model.qformer.eval()
    preset = model.preset
    ids, labels, segs, n_images = packed_rows(kind, rows, seq_len, preset.num_query_tokens, model.vocab_size)
    ids, labels, segs = ids.to(device), labels.to(device), segs.to(device)
    size = preset.image_size
    pixels = torch.randn(n_images, 3, size, size, device=device)
    features = torch.randn(n_images, preset.num_query_tokens, preset.qformer_hidden, device=device)
    images = {"image_features": features} if cached else {"pixel_values": pixels}
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, fused=device.type == "cuda")
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
    )
    flops = StepFlops.of(model).step(rows=rows, seq_len=seq_len, images=n_images, towers=not cached)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            loss = model(input_ids=ids, segment_ids=segs, labels=labels, **images).loss
        loss.backward()
        optimizer.step()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    step()  # warm-up (kernels, compile of FlexAttention, allocator)
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    seconds = (time.perf_counter() - started) / steps
    peak = peak_flops(device)
    tokens = int((segs > 0).sum())
    return {
        "shape": kind,
        "images": "cached" if cached else "computed",
        "precision": precision,
        "attention": attention,
        "step_s": round(seconds, 4),
        "tokens_per_s": round(tokens / seconds, 1),
        "images_per_step": n_images,
        "tflops_per_s": round(flops / seconds / 1e12, 3),
        "mfu": round(flops / seconds / peak, 4) if peak else None,
        "peak_memory_gib": None if (m := peak_memory(device)) is None else round(m, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--preset", default="tiny", help="tiny (CPU) or tinygptv-phi2 / tinygptv-phi1_5 (GPU)"
    )
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per packed row")
    parser.add_argument("--rows", type=int, default=1, help="packed rows per step")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case (after one warm-up)")
    parser.add_argument(
        "--stage4-image-size", type=int, default=None, help="default: 448 px, the preset's for tiny"
    )
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    real = args.preset != "tiny"
    stage4_size = args.stage4_image_size or (448 if real else None)
    attentions = ["dense", "block_sparse"] if device.type == "cuda" else ["dense"]
    precisions = args.precisions.split(",")
    results = []
    print(
        f"# {args.preset} on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
        f"{args.rows} x {args.seq_len} tokens per step, torch {torch.__version__}"
    )
    for kind, image_size, variants in (
        ("stage1", None, [True, False]),
        ("stage4", stage4_size, [False]),
    ):
        model = build(args.preset, image_size, device)
        for cached in variants:
            for precision in precisions:
                for attention in attentions:
                    if device.type == "cuda":
                        torch.cuda.empty_cache()
                    row = run_case(
                        model,
                        kind,
                        cached=cached,
                        precision=precision,
                        attention=attention,
                        rows=args.rows,
                        seq_len=args.seq_len,
                        steps=args.steps,
                        device=device,
                    )
                    results.append(row)
                    print(json.dumps(row), flush=True)
        del model

    # ratios against the baseline in the same run
    def find(**match):
        return next((r for r in results if all(r[k] == v for k, v in match.items())), None)

    print("# ratios")
    for precision in precisions:
        for attention in attentions:
            a = find(shape="stage1", images="cached", precision=precision, attention=attention)
            b = find(shape="stage1", images="computed", precision=precision, attention=attention)
            if a and b:
                print(
                    f"stage1 {precision} {attention}: cached features {b['step_s'] / a['step_s']:.2f}x faster than computed"
                )
    for kind in ("stage1", "stage4"):
        for attention in attentions:
            a = find(shape=kind, images="computed", precision="bf16", attention=attention)
            b = find(shape=kind, images="computed", precision="fp32", attention=attention)
            if a and b:
                print(f"{kind} {attention}: bf16 {b['step_s'] / a['step_s']:.2f}x faster than fp32")
        if "block_sparse" in attentions:
            for precision in precisions:
                a = find(shape=kind, images="computed", precision=precision, attention="block_sparse")
                b = find(shape=kind, images="computed", precision=precision, attention="dense")
                if a and b:
                    print(
                        f"{kind} {precision}: block-sparse {b['step_s'] / a['step_s']:.2f}x faster than dense"
                    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    import warnings

    warnings.filterwarnings("ignore", message="Mismatch dtype between input and weight")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    raise SystemExit(main())
