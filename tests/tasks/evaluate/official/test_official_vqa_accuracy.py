"""The VQA answer normalisation and the leave-one-out VQA accuracy, on cases worked out by hand."""

from __future__ import annotations

import pytest

from tasks.evaluate.official import BENCHMARKS, Item
from tasks.evaluate.official.vqa_accuracy import normalise_vqa_answer, vqa_question_accuracy


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        # articles go, case goes
        ("A dog", "dog"),
        ("the Red Car", "red car"),
        ("an apple", "apple"),
        # a comma between digits: every listed mark is deleted, so the number stays whole
        ("1,000", "1000"),
        ("1,000 dogs!", "1000 dogs"),
        # a period before a digit stays; any other period goes (a trailing one too, even after a digit)
        ("3.5", "3.5"),
        ("3.", "3"),
        ("yes.", "yes"),
        ("Yes.\n", "yes"),
        # a mark touching a space is deleted, one inside a word becomes a space
        ("red, white", "red white"),
        ("red,white", "red white"),
        ("t-shirt", "t shirt"),
        ("what?", "what"),
        # number words become digits
        ("two", "2"),
        ("Two dogs", "2 dogs"),
        ("none", "0"),
        ("ten", "10"),
        ("eleven", "eleven"),
        # contractions get their apostrophe back
        ("dont", "don't"),
        ("whats", "what's"),
        ("I dont know", "i don't know"),
        ("cant", "can't"),
    ],
)
def test_normalisation(raw, expected):
    assert normalise_vqa_answer(raw) == expected


def test_normalisation_is_stable_on_normalised_text():
    for text in ["don't", "1000", "3.5", "red white", "2 dogs"]:
        assert normalise_vqa_answer(text) == text


@pytest.mark.parametrize(
    ("matching", "expected"),
    [
        # 0 of 10: every subset of 9 has 0 matches
        (0, 0.0),
        # 1 of 10: left out itself -> 0 matches (score 0); the other 9 subsets hold it once -> 1/3 each
        #          (1 * 0 + 9 * 1/3) / 10 = 3/10 = 0.3
        (1, 0.3),
        # 2 of 10: leaving out one of the two -> 1 match -> 1/3 (twice);
        #          leaving out one of the 8 others -> 2 matches -> 2/3 (eight times)
        #          (2 * 1/3 + 8 * 2/3) / 10 = (2/3 + 16/3) / 10 = 6/10 = 0.6
        (2, 0.6),
        # 3 of 10: (3 * 2/3 + 7 * min(3/3, 1)) / 10 = (2 + 7) / 10 = 0.9
        (3, 0.9),
        # 4 of 10: every subset keeps at least 3 matches -> 1
        (4, 1.0),
        (10, 1.0),
    ],
)
def test_leave_one_out_average(matching, expected):
    gold = ["cat"] * matching + ["dog"] * (10 - matching)
    assert vqa_question_accuracy("cat", gold) == pytest.approx(expected)


def test_prediction_and_gold_are_normalised_before_matching():
    assert vqa_question_accuracy("Two.", ["2"] * 10) == 1.0
    assert vqa_question_accuracy("The dog", ["a dog"] * 10) == 1.0
    assert vqa_question_accuracy("1,000", ["1000"] * 3 + ["many"] * 7) == pytest.approx(0.9)
    assert vqa_question_accuracy(None, ["yes"] * 10) == 0.0
    assert vqa_question_accuracy("t-shirt", ["t-shirt"] * 10) == 1.0


def _vqa_item(qid: str, answers: list[str], answer_type: str) -> Item:
    return Item(qid, None, "q?", None, answers, {"answer_type": answer_type, "question_type": "what"})


def test_vqav2_score_overall_and_per_answer_type():
    items = [
        _vqa_item("1", ["yes"] * 10, "yes/no"),
        _vqa_item("2", ["no"] * 10, "yes/no"),
        _vqa_item("3", ["2"] * 2 + ["3"] * 8, "number"),
        _vqa_item("4", ["red"] * 10, "other"),
    ]
    predictions = ["Yes", "yes", "two", "the red"]
    scores = BENCHMARKS["vqav2"].score(items, predictions)
    # per question: 1, 0, 0.6 (2 of 10), 1 -> overall 2.6 / 4
    assert scores["accuracy"] == pytest.approx(2.6 / 4)
    assert scores["accuracy_yes_no"] == pytest.approx(0.5)
    assert scores["accuracy_number"] == pytest.approx(0.6)
    assert scores["accuracy_other"] == pytest.approx(1.0)
    assert scores["n"] == 4
    assert BENCHMARKS["okvqa"].score(items, predictions) == scores


def test_vizwiz_unanswerable_is_an_answer_and_a_type():
    items = [
        Item("a.jpg", None, "q", None, ["unanswerable"] * 6 + ["soup"] * 4, {"answer_type": "unanswerable"}),
        Item("b.jpg", None, "q", None, ["soup"] * 1 + ["unanswerable"] * 9, {"answer_type": "other"}),
    ]
    scores = BENCHMARKS["vizwiz"].score(items, ["Unanswerable", "soup"])
    # item a: 6 matches -> 1; item b: 1 match -> 0.3
    assert scores["accuracy_unanswerable"] == 1.0
    assert scores["accuracy_other"] == pytest.approx(0.3)
    assert scores["accuracy"] == pytest.approx(0.65)


def test_vqa_scores_need_one_prediction_per_item():
    with pytest.raises(ValueError, match="2 items but 1 predictions"):
        BENCHMARKS["vqav2"].score([_vqa_item("1", ["a"], "other")] * 2, ["a"])
