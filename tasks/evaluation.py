"""Evaluation on held-out shapes-world images: VQA accuracy, referring accuracy (IoU >= 0.5) and a
caption score (corpus BLEU-4), each beside its chance level.

Prompts come from the same template registry as training; answers are generated greedily.
Chance levels: VQA, 1 / size of the question type's closed answer set; referring, the rate at
which another held-out image's gold box hits IoU >= 0.5; caption, BLEU-4 of another image's caption.
"""

from __future__ import annotations

import itertools
import math
import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from tasks.boxes import iou, parse_boxes
from tasks.examples import TaskExample, Turn
from tasks.packing import encode_segments
from tasks.templates import clean_answer, render

MAX_NEW_TOKENS = {"vqa": 6, "refer": 24, "caption": 40}


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def corpus_bleu(hypotheses: list[str], references: list[str], max_n: int = 4) -> float:
    """Corpus BLEU with one reference per hypothesis and the usual brevity penalty."""
    matches, totals = [0] * max_n, [0] * max_n
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references, strict=True):
        h, r = hyp.lower().split(), ref.lower().split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, max_n + 1):
            hn, rn = _ngrams(h, n), _ngrams(r, n)
            matches[n - 1] += sum(min(c, rn[g]) for g, c in hn.items())
            totals[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals, strict=True)) / max_n
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def normalise_answer(text: str) -> str:
    return " ".join(text.lower().strip(" .?!").split())


@torch.no_grad()
def generate_answers(
    model,
    tokenizer,
    preprocess,
    items: list[tuple[TaskExample, Any]],
    *,
    template: str,
    end_sym: str,
    num_query_tokens: int,
    max_new_tokens: int,
    batch_size: int,
) -> list[str]:
    """Greedy answers for (example, PIL image) pairs, prompts rendered by the template registry."""
    model.eval()
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    eos = [
        t
        for t in {tokenizer.eos_token_id, *tokenizer(end_sym, add_special_tokens=False)["input_ids"][:1]}
        if t is not None
    ]
    answers: list[str] = []
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        prompts = []
        for example, _ in chunk:
            segments = render(example, template, end_sym=end_sym, with_answer=False)
            ids, _, _ = encode_segments(
                segments,
                tokenizer,
                image_token_id=model.image_token_id,
                num_query_tokens=num_query_tokens,
                max_len=10_000,
            )
            prompts.append(ids)
        width = max(len(p) for p in prompts)
        input_ids = torch.full((len(prompts), width), pad, dtype=torch.long)
        attention = torch.zeros((len(prompts), width), dtype=torch.long)
        for i, p in enumerate(prompts):  # left padding: every prompt ends at the last column
            input_ids[i, width - len(p) :] = torch.tensor(p)
            attention[i, width - len(p) :] = 1
        pixels = preprocess([image for _, image in chunk])
        out = model.generate(
            input_ids=input_ids,
            attention_mask=attention,
            pixel_values=pixels,
            max_new_tokens=max_new_tokens,
            eos_token_ids=eos,
        )
        answers += [clean_answer(tokenizer.decode(t, skip_special_tokens=True), end_sym) for t in out]
    return answers


def evaluate_shapes(
    model,
    tokenizer,
    preprocess,
    records: list[dict],
    *,
    tasks: list[str],
    num_query_tokens: int,
    template: str = "human_assistant",
    end_sym: str = "###",
    batch_size: int = 64,
    seed: int = 0,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics (vqa_accuracy, vqa_chance, refer_accuracy, refer_chance, caption_bleu4, ...) and a
    table of every prediction."""
    from tasks import shapes_world

    rng = random.Random(seed)

    def answer(items: list[tuple[TaskExample, Any]], max_new_tokens: int) -> list[str]:
        return generate_answers(
            model,
            tokenizer,
            preprocess,
            items,
            template=template,
            end_sym=end_sym,
            num_query_tokens=num_query_tokens,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )

    metrics: dict[str, float] = {}
    table: list[dict] = []
    ann = [r["annotations"] for r in records]
    if "vqa" in tasks:
        items, golds, qtypes = [], [], []
        for rec, a in zip(records, ann, strict=True):
            for q in shapes_world.vqa_items(a, rng):
                items.append(
                    (TaskExample("vqa", [Turn(q["question"], q["answer"])], image=rec["key"]), rec["image"])
                )
                golds.append(q["answer"])
                qtypes.append(q["qtype"])
        preds = answer(items, MAX_NEW_TOKENS["vqa"])
        hits = [normalise_answer(p) == normalise_answer(g) for p, g in zip(preds, golds, strict=True)]
        metrics["vqa_accuracy"] = sum(hits) / len(hits)
        metrics["vqa_chance"] = sum(1 / len(shapes_world.answer_choices(t)) for t in qtypes) / len(qtypes)
        for qtype in sorted(set(qtypes)):
            sel = [h for h, t in zip(hits, qtypes, strict=True) if t == qtype]
            metrics[f"vqa_accuracy_{qtype.replace('/', '_')}"] = sum(sel) / len(sel)
        table += [
            {
                "task": "vqa",
                "key": ex.image,
                "prompt": ex.turns[0].query,
                "gold": g,
                "prediction": p,
                "correct": h,
            }
            for (ex, _), g, p, h in zip(items, golds, preds, hits, strict=True)
        ]
    if "refer" in tasks:
        items, boxes = [], []
        for rec, a in zip(records, ann, strict=True):
            for r in shapes_world.referring_items(a)[:1]:
                items.append(
                    (TaskExample("refer", [Turn(r["expression"], "")], image=rec["key"]), rec["image"])
                )
                boxes.append(tuple(r["box"]))
        preds = answer(items, MAX_NEW_TOKENS["refer"])
        parsed = [parse_boxes(p) for p in preds]
        hits = [bool(pb) and iou(pb[0], gold) >= 0.5 for pb, gold in zip(parsed, boxes, strict=True)]
        shifted = boxes[1:] + boxes[:1]  # another image's gold box: what a blind guess gets
        metrics["refer_accuracy"] = sum(hits) / len(hits)
        metrics["refer_chance"] = sum(iou(a, b) >= 0.5 for a, b in zip(shifted, boxes, strict=True)) / len(
            boxes
        )
        metrics["refer_parse_rate"] = sum(bool(p) for p in parsed) / len(parsed)
        table += [
            {
                "task": "refer",
                "key": ex.image,
                "prompt": ex.turns[0].query,
                "gold": str(g),
                "prediction": p,
                "correct": h,
            }
            for (ex, _), g, p, h in zip(items, boxes, preds, hits, strict=True)
        ]
    if "caption" in tasks:
        items = [
            (TaskExample("caption", [Turn(None, "")], image=rec["key"]), rec["image"]) for rec in records
        ]
        golds = [shapes_world.caption(a) for a in ann]
        preds = answer(items, MAX_NEW_TOKENS["caption"])
        metrics["caption_bleu4"] = corpus_bleu(preds, golds)
        metrics["caption_bleu4_chance"] = corpus_bleu(golds[1:] + golds[:1], golds)
        table += [
            {"task": "caption", "key": ex.image, "prompt": "", "gold": g, "prediction": p, "correct": None}
            for (ex, _), g, p in zip(items, golds, preds, strict=True)
        ]
    for name in ("vqa", "refer", "caption_bleu4"):
        key = name if name.startswith("caption") else f"{name}_accuracy"
        chance = f"{name}_chance" if name.startswith("caption") else f"{name}_chance"
        if key in metrics:
            log(f"{key:>16}: {metrics[key]:.3f}   (chance {metrics[chance]:.3f})")
    return metrics, table


def evaluate_checkpoint(
    checkpoint: str | Path,
    model_spec,
    *,
    data_dir: str | Path,
    split: str,
    tasks: list[str],
    max_images: int,
    batch_size: int,
    seed: int,
    template: str = "human_assistant",
    end_sym: str = "###",
    log: Callable[[str], None] = print,
):
    """Load a stage checkpoint and evaluate it on an ingested source's held-out split."""
    from tasks.ingest import read_records
    from tasks.training import build_model

    built, _ = build_model(
        model_spec, image_size=_checkpoint_image_size(checkpoint), init_checkpoint=checkpoint, log=log
    )
    records = list(itertools.islice(read_records(Path(data_dir), split=split), max_images))
    if not records:
        raise ValueError(f"no records in split {split!r} of {data_dir}")
    return evaluate_shapes(
        built.model,
        built.tokenizer,
        built.preprocess,
        records,
        tasks=tasks,
        num_query_tokens=built.preset.num_query_tokens,
        template=template,
        end_sym=end_sym,
        batch_size=batch_size,
        seed=seed,
        log=log,
    )


def _checkpoint_image_size(checkpoint: str | Path) -> int | None:
    import json

    meta = json.loads((Path(checkpoint) / "checkpoint.json").read_text()).get("metadata", {})
    return meta.get("image_size")
