"""The shapes-world benchmark, on held-out scenes: VQA accuracy, referring accuracy (IoU >= 0.5)
and a caption score (corpus BLEU-4), each beside its chance level; optionally the accuracy
on the same questions asked of the scene told in words, with no image (text-only answers).

Prompts come from the same template registry as training; answers are generated greedily.
Chance levels: VQA, 1 / size of the question type's closed answer set; referring, the rate at
which another held-out image's gold box hits IoU >= 0.5; caption, BLEU-4 of another image's caption.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from tasks import shapes_world
from tasks.data.boxes import iou, parse_boxes
from tasks.data.examples import TaskExample, Turn
from tasks.evaluate.generation import generate_answers
from tasks.evaluate.metrics import corpus_bleu, normalise_answer

MAX_NEW_TOKENS = {"vqa": 6, "text_instruction": 6, "refer": 24, "caption": 40}


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
    train_annotations: list[dict] | None = None,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[dict]]:
    """Metrics (vqa_accuracy, vqa_chance, refer_accuracy, refer_chance, caption_bleu4, ...) and a
    table of every prediction.

    Two VQA baselines: `vqa_chance` (uniform over each question type's answers) and, given the
    training scenes' annotations, `vqa_majority` (a blind model that always gives the most common
    training answer of the question's type). `vqa_gate` = (1 + the stronger baseline) / 2 and
    `refer_gate` = 3 x refer_chance are the levels a model that learnt should reach
    (`*_gate_met` 1.0 or 0.0)."""
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
        baseline = metrics["vqa_chance"]
        if train_annotations:
            majority = majority_answers(train_annotations, seed)
            metrics["vqa_majority"] = sum(
                normalise_answer(g) == majority.get(t) for g, t in zip(golds, qtypes, strict=True)
            ) / len(golds)
            baseline = max(baseline, metrics["vqa_majority"])
        metrics["vqa_gate"] = (1 + baseline) / 2
        metrics["vqa_gate_met"] = float(metrics["vqa_accuracy"] >= metrics["vqa_gate"])
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
                "qtype": t,
            }
            for (ex, _), g, p, h, t in zip(items, golds, preds, hits, qtypes, strict=True)
        ]
    if (
        "text_instruction" in tasks
    ):  # the scene told in words, no image (shapes_world's text_instruction task)
        examples = [
            e
            for rec, a in zip(records, ann, strict=True)
            for e in shapes_world.task_examples(
                {"key": rec["key"], "annotations": a}, "text_instruction", rng
            )
        ]
        items = [(TaskExample("text_instruction", [Turn(e.turns[0].query, "")]), None) for e in examples]
        golds = [e.turns[0].answer for e in examples]
        preds = answer(items, MAX_NEW_TOKENS["text_instruction"])
        hits = [normalise_answer(p) == normalise_answer(g) for p, g in zip(preds, golds, strict=True)]
        metrics["text_accuracy"] = sum(hits) / len(hits)
        table += [
            {
                "task": "text",
                "key": "",
                "prompt": e.turns[0].query,
                "gold": g,
                "prediction": p,
                "correct": h,
                "qtype": e.meta["qtype"],
            }
            for e, g, p, h in zip(examples, golds, preds, hits, strict=True)
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
        metrics["refer_gate"] = 3 * metrics["refer_chance"]
        metrics["refer_gate_met"] = float(metrics["refer_accuracy"] >= metrics["refer_gate"])
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
            extra = (
                f", majority {metrics['vqa_majority']:.3f}"
                if name == "vqa" and "vqa_majority" in metrics
                else ""
            )
            gate = f"; gate {metrics[name + '_gate']:.3f}" if f"{name}_gate" in metrics else ""
            log(f"{key:>16}: {metrics[key]:.3f}   (chance {metrics[chance]:.3f}{extra}{gate})")
    if "text_accuracy" in metrics:
        log(f"{'text_accuracy':>16}: {metrics['text_accuracy']:.3f}   (no image: the scene told in words)")
    return metrics, table


def majority_answers(train_annotations: list[dict], seed: int = 0) -> dict[str, str]:
    """Each question type's most common answer over the training scenes' questions (asked as the
    evaluation asks them): what a model that ignores the image would learn to say."""
    from collections import Counter, defaultdict

    rng = random.Random(seed)
    counts: dict[str, Counter] = defaultdict(Counter)
    for ann in train_annotations:
        for q in shapes_world.vqa_items(ann, rng):
            counts[q["qtype"]][normalise_answer(q["answer"])] += 1
    return {qtype: c.most_common(1)[0][0] for qtype, c in counts.items()}


def confusion(table: list[dict], top: int = 5) -> dict[str, dict]:
    """Per question type: accuracy, and its most frequent wrong answers as `gold -> prediction`."""
    from collections import Counter, defaultdict

    rows: dict[str, list[dict]] = defaultdict(list)
    for row in table:
        if row.get("task") == "vqa":
            rows[row["qtype"]].append(row)
    out = {}
    for qtype, group in sorted(rows.items()):
        wrong = Counter(
            f"{normalise_answer(r['gold'])} -> {normalise_answer(r['prediction'])}"
            for r in group
            if not r["correct"]
        )
        out[qtype] = {
            "questions": len(group),
            "accuracy": sum(bool(r["correct"]) for r in group) / len(group),
            "top_confusions": dict(wrong.most_common(top)),
        }
    return out
