"""`vlmpipe chat`, `vlmpipe generate` and `vlmpipe export`: ask a trained model, in batches, or write
it out with LoRA merged (flows/ask.py, model/export.py)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any


def _asker(args: argparse.Namespace):
    from flows.ask import load_asker

    return load_asker(args.checkpoint, args.pipeline, args.precision, getattr(args, "towers", "fp32"))


def _sampling(args: argparse.Namespace) -> dict[str, Any]:
    from flows.ask import AskError

    if args.max_new_tokens < 1:
        raise AskError(f"--max-new-tokens must be at least 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise AskError(f"--temperature must be 0 (greedy) or more, got {args.temperature}")
    if not 0 < args.top_p <= 1:
        raise AskError(f"--top-p must be in (0, 1], got {args.top_p}")
    if args.seed is not None:
        import torch

        torch.manual_seed(args.seed)
    return {"max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_p": args.top_p}


def _run(args: argparse.Namespace, body) -> int:
    from flows.ask import AskError
    from flows.cli import print_error

    try:
        return body()
    except AskError as exc:
        print_error(str(exc))
        return 2


def cmd_chat(args: argparse.Namespace) -> int:
    def body() -> int:
        from flows.ask import check_task, default_task, open_image

        image = open_image(args.image, "--image") if args.image else None
        task = check_task(args.task or default_task(image), "--task")
        sampling = _sampling(args)
        asker = _asker(args)
        prompts = [args.prompt] if args.prompt is not None else None
        if prompts is None:  # an interactive session: one prompt per line until EOF
            print("vlmpipe chat: one prompt per line, Ctrl-D to end", file=sys.stderr)
            prompts = (line.rstrip("\n") for line in sys.stdin)
        for prompt in prompts:
            if not prompt.strip():
                continue
            print(asker.answer([(task, prompt, image)], **sampling)[0], flush=True)
        return 0

    return _run(args, body)


def cmd_generate(args: argparse.Namespace) -> int:
    def body() -> int:
        from flows.ask import read_requests, write_jsonl

        requests = read_requests(args.input, args.prompt, args.task)
        sampling = _sampling(args)
        asker = _asker(args)
        started = time.perf_counter()
        answers = asker.answer(
            [(r["task"], r["prompt"], r["_image"]) for r in requests], batch_size=args.batch_size, **sampling
        )
        seconds = time.perf_counter() - started
        rows = [
            {k: v for k, v in r.items() if not k.startswith("_")} | {"answer": a}
            for r, a in zip(requests, answers, strict=True)
        ]
        out = write_jsonl(rows, args.output)
        print(
            f"{len(rows)} answers -> {out}  ({seconds:.1f} s, precision {asker.precision})", file=sys.stderr
        )
        return 0

    return _run(args, body)


def cmd_export(args: argparse.Namespace) -> int:
    def body() -> int:
        from flows.ask import AskError
        from model.export import ExportError, export_merged

        asker = _asker(args)
        try:
            out = export_merged(
                asker.built, args.out, template=asker.template, end_sym=asker.end_sym, source=args.checkpoint
            )
        except ExportError as exc:
            raise AskError(str(exc)) from None
        print(f"merged model (LoRA folded in, Hugging Face format) -> {out}")
        return 0

    args.precision = "fp32"
    return _run(args, body)


def _model_options(p: argparse.ArgumentParser, precision: bool = True) -> None:
    p.add_argument("checkpoint", help="a stage's checkpoint folder, or a merged export (vlmpipe export)")
    p.add_argument(
        "--pipeline", help="the pipeline spec that trained the checkpoint (default: its run folder's record)"
    )
    if precision:
        p.add_argument(
            "--precision",
            default="fp32",
            choices=["fp32", "bf16", "8bit", "4bit"],
            help="the language model's precision (8bit/4bit: bitsandbytes; LoRA is merged first)",
        )
        p.add_argument(
            "--towers",
            default="fp32",
            choices=["fp32", "bf16", "lm"],
            help="the vision tower, Q-Former and projection: float32 (default), bf16, or lm: the "
            "language model's precision (8bit/4bit quantise their Linear layers too)",
        )


def _sampling_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", help="task identifier to ask with (vqa, refer, caption, ...; default free text)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); >0 samples")
    p.add_argument("--top-p", type=float, default=1.0, help="with --temperature: nucleus sampling mass")
    p.add_argument("--seed", type=int, default=None, help="seed for sampling")


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("chat", help="ask a trained model about an image (or text only)")
    _model_options(p)
    p.add_argument("--image", help="an image file (omit for a text-only prompt)")
    p.add_argument("--prompt", help="the question; without it, one prompt per line from stdin")
    _sampling_options(p)
    p.set_defaults(func=cmd_chat)

    p = sub.add_parser("generate", help="answers for a folder of images or a JSONL of requests")
    _model_options(p)
    p.add_argument(
        "--input",
        required=True,
        help='a folder of images (each asked --prompt) or a JSONL file of {"image", "prompt", "task", "id"}',
    )
    p.add_argument("--output", required=True, help="JSONL file of the requests with their answers")
    p.add_argument("--prompt", help="the prompt for a folder, or for JSONL lines that have none")
    p.add_argument("--batch-size", type=int, default=16)
    _sampling_options(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("export", help="write a checkpoint with LoRA merged, in Hugging Face format")
    _model_options(p, precision=False)
    p.add_argument("--out", required=True, help="a new (or empty) folder")
    p.set_defaults(func=cmd_export)
