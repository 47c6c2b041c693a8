"""Evaluation: the shared metrics, greedy generation through the template registry, and the
shapes-world benchmark's metrics, chance levels and prediction table on a tiny random model."""

from __future__ import annotations

import math
import random

import pytest

from data_specs.pipelines import ModelSpec
from model.build import build_model
from tasks import shapes_world
from tasks.data.examples import TaskExample, Turn
from tasks.evaluate.generation import generate_answers
from tasks.evaluate.metrics import corpus_bleu, normalise_answer
from tasks.evaluate.shapes import evaluate_shapes


def test_bleu_is_one_for_copies_zero_without_a_shared_4gram_and_penalises_brevity():
    refs = ["a red circle on the left", "two blue squares at the top"]
    assert corpus_bleu(refs, refs) == pytest.approx(1.0)
    assert corpus_bleu(["green star", "yellow ring"], refs) == 0.0
    # a hypothesis that is a 4-word prefix of a 6-word reference: all n-grams match, brevity e^(1-6/4)
    assert corpus_bleu(["a red circle on"], ["a red circle on the left"]) == pytest.approx(
        math.exp(1 - 6 / 4)
    )


def test_answers_are_compared_without_case_spaces_or_end_punctuation():
    assert normalise_answer("  Top   Left. ") == normalise_answer("top left") == "top left"
    assert normalise_answer("Yes?") == "yes"


@pytest.fixture(scope="module")
def built():
    return build_model(
        ModelSpec(preset="tiny", seed=0), tokenizer_corpus=shapes_world.tokenizer_corpus, log=print
    )[0]


def test_generation_gives_one_answer_per_item_whatever_the_batching(built):
    records = shapes_world.in_memory_records(3, 0, seed=5)
    items = [
        (TaskExample("vqa", [Turn("what colour is it?", "")], image=r["key"]), r["image"]) for r in records
    ]

    def answers(batch_size: int) -> list[str]:
        return generate_answers(
            built.model,
            built.tokenizer,
            built.preprocess,
            items,
            template="human_assistant",
            end_sym="###",
            num_query_tokens=built.preset.num_query_tokens,
            max_new_tokens=4,
            batch_size=batch_size,
        )

    one_by_one, together = answers(1), answers(3)
    assert len(together) == 3 and all("###" not in a for a in together)
    assert together == one_by_one  # left padding does not change a greedy answer


def test_shapes_benchmark_reports_each_task_beside_its_chance_and_every_prediction(built):
    records = [r for r in shapes_world.in_memory_records(0, 6, seed=7) if r["split"] == "heldout"]
    metrics, table = evaluate_shapes(
        built.model,
        built.tokenizer,
        built.preprocess,
        records,
        tasks=["vqa", "refer", "caption", "text_instruction"],
        num_query_tokens=built.preset.num_query_tokens,
        batch_size=16,
        seed=0,
        log=lambda _m: None,
    )
    rng = random.Random(0)
    questions = [q for r in records for q in shapes_world.vqa_items(r["annotations"], rng)]
    expected_chance = sum(1 / len(shapes_world.answer_choices(q["qtype"])) for q in questions) / len(
        questions
    )
    assert metrics["vqa_chance"] == pytest.approx(expected_chance)
    for key in ("vqa_accuracy", "refer_accuracy", "refer_chance", "refer_parse_rate", "caption_bleu4"):
        assert 0.0 <= metrics[key] <= 1.0, key
    counts = {task: sum(row["task"] == task for row in table) for task in ("vqa", "refer", "caption", "text")}
    assert counts == {
        "vqa": len(questions),
        "refer": len(records),
        "caption": len(records),
        "text": 2 * len(records),
    }
    text = [row for row in table if row["task"] == "text"]
    assert all(row["key"] == "" and row["prompt"].endswith("?") for row in text)  # no image, a question
    assert metrics["text_accuracy"] == pytest.approx(sum(r["correct"] for r in text) / len(text))
    hits = [row["correct"] for row in table if row["task"] == "vqa"]
    assert metrics["vqa_accuracy"] == pytest.approx(sum(hits) / len(hits))


def test_the_blind_majority_baseline_and_the_gate_use_the_training_answers(built):
    """vqa_majority: always the training set's most common answer of the question's type; the gate
    is (1 + the stronger baseline) / 2; the confusion summary counts each wrong gold -> prediction."""
    from collections import Counter

    from tasks.evaluate.shapes import confusion, majority_answers

    records = shapes_world.in_memory_records(60, 6, seed=7)
    train = [r["annotations"] for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    majority = majority_answers(train, seed=0)
    rng = random.Random(0)
    by_type: dict[str, Counter] = {}
    for ann in train:
        for q in shapes_world.vqa_items(ann, rng):
            by_type.setdefault(q["qtype"], Counter())[q["answer"].lower()] += 1
    assert majority == {t: c.most_common(1)[0][0] for t, c in by_type.items()}

    metrics, table = evaluate_shapes(
        built.model,
        built.tokenizer,
        built.preprocess,
        heldout,
        tasks=["vqa", "refer"],
        num_query_tokens=built.preset.num_query_tokens,
        batch_size=16,
        seed=0,
        train_annotations=train,
        log=lambda _m: None,
    )
    rows = [r for r in table if r["task"] == "vqa"]
    expected = sum(r["gold"].lower() == majority[r["qtype"]] for r in rows) / len(rows)
    assert metrics["vqa_majority"] == pytest.approx(expected)
    baseline = max(metrics["vqa_chance"], metrics["vqa_majority"])
    assert metrics["vqa_gate"] == pytest.approx((1 + baseline) / 2)
    assert metrics["vqa_gate_met"] == float(metrics["vqa_accuracy"] >= metrics["vqa_gate"])
    assert metrics["refer_gate"] == pytest.approx(3 * metrics["refer_chance"])
    summary = confusion(table)
    assert sum(s["questions"] for s in summary.values()) == len(rows)
    for qtype, s in summary.items():
        wrong = [r for r in rows if r["qtype"] == qtype and not r["correct"]]
        assert sum(s["top_confusions"].values()) <= len(wrong)
        assert s["accuracy"] == pytest.approx(1 - len(wrong) / s["questions"])
