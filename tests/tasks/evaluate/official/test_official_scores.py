"""Answer extraction and the per-benchmark metrics: AUROC with ties, MME accuracy+, ScienceQA groups,
RefCOCO malformed answers, and the yes/no, choice and exact-match benchmarks."""

from __future__ import annotations

import pytest

from tasks.evaluate.official import BENCHMARKS, Item
from tasks.evaluate.official.base import choice_index, first_line, parse_yes_no, strip_end
from tasks.evaluate.official.scoring import auroc

# --- extraction ------------------------------------------------------------------------------------------


def test_end_symbol_and_first_line():
    assert strip_end("yes ###Human: more", "###") == "yes"
    assert strip_end("red</s> junk") == "red"
    assert first_line("\n  blue car \nsecond line###") == "blue car"
    assert first_line("<unk>two ###") == "two"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Yes", True),
        ("True.", True),
        ("false", False),
        ("No, it is not.", False),
        ("The statement is not true", False),
        ("It is correct", True),
        ("a cat on a mat", None),
        ("", None),
    ],
)
def test_yes_no(text, expected):
    assert parse_yes_no(text) is expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("B", 1),
        ("(A)", 0),
        ("C.", 2),
        ("(B) dark red", 1),
        ("The answer is C", 2),
        ("Answer: (A)", 0),
        ("dark red", 1),
        ("Dark red.", 1),
        ("it looks dark red to me", 1),  # "red" is inside "dark red": the longer option wins
        ("red", 0),
        ("E", None),  # a letter past the options
        ("A blue one", 2),  # "A" followed by words is the article, not option A: the option text decides
        ("green", None),
    ],
)
def test_choice_index(text, expected):
    assert choice_index(text, ["red", "dark red", "blue"]) == expected


# --- AUROC and Hateful Memes -----------------------------------------------------------------------------


def test_auroc_by_hand_with_ties():
    # positives score 1.0 and 0.5, negatives 0.5 and 0.0. Pairs (pos, neg): (1.0, 0.5) win, (1.0, 0.0) win,
    # (0.5, 0.5) tie = 1/2, (0.5, 0.0) win -> 3.5 / 4. Ranks: 0.0 -> 1, the two 0.5s share (2+3)/2 = 2.5,
    # 1.0 -> 4; (4 + 2.5 - 2*3/2) / (2*2) = 3.5 / 4 = 0.875.
    assert auroc([1, 1, 0, 0], [1.0, 0.5, 0.5, 0.0]) == pytest.approx(0.875)
    assert auroc([1, 0, 1, 0], [0.5, 0.5, 0.5, 0.5]) == pytest.approx(0.5)
    assert auroc([1, 0], [0.9, 0.1]) == 1.0
    assert auroc([1, 0], [0.1, 0.9]) == 0.0
    assert auroc([1, 1], [0.2, 0.3]) is None


def test_hateful_memes_extract():
    bench = BENCHMARKS["hateful_memes"]
    item = Item("1", None, "text", None, 1)
    assert bench.extract("Yes, it is hateful.###", item) == 1.0
    assert bench.extract("no", item) == 0.0
    assert bench.extract("0.83", item) == pytest.approx(0.83)
    assert bench.extract("a picture of a dog", item) is None


def test_hateful_memes_accuracy_and_auroc():
    items = [Item(str(i), None, "t", None, y) for i, y in enumerate([1, 0, 1, 0, 1])]
    predictions = [1.0, 0.0, 0.0, 0.0, None]
    scores = BENCHMARKS["hateful_memes"].score(items, predictions)
    # right: 1st, 2nd, 4th; the 3rd says no to a hateful meme; the 5th is unreadable -> 3/5
    assert scores["accuracy"] == pytest.approx(0.6)
    assert scores["unparsed_rate"] == pytest.approx(0.2)
    # scores with the unreadable one at 0.5: positives 1.0, 0.0, 0.5; negatives 0.0, 0.0
    # pairs: 1.0 beats both (2); 0.0 ties both (1); 0.5 beats both (2) -> 5 / 6
    assert scores["auroc"] == pytest.approx(5 / 6)


# --- MME -------------------------------------------------------------------------------------------------


def _mme_item(subtask: str, image: str, number: int, answer: str) -> Item:
    category = "cognition" if subtask == "code_reasoning" else "perception"
    meta = {"subtask": subtask, "category": category, "image_key": f"{subtask}/{image}"}
    return Item(f"{subtask}/{image}/{number}", None, "q?", None, answer, meta)


def test_mme_extract_follows_its_parser():
    extract = BENCHMARKS["mme"].extract
    item = _mme_item("existence", "1", 1, "yes")
    assert extract("Yes.", item) == "yes"
    assert extract("No, there is not.", item) == "no"
    assert extract("yes, there is a dog", item) == "yes"
    assert extract("There is a dog", item) == "other"
    assert extract("Not sure", item) == "no"  # "not " holds "no" in its first four characters


def test_mme_accuracy_plus_and_totals():
    items = [
        _mme_item("existence", "a", 1, "yes"),
        _mme_item("existence", "a", 2, "no"),
        _mme_item("existence", "b", 1, "yes"),
        _mme_item("existence", "b", 2, "no"),
        _mme_item("code_reasoning", "c", 1, "yes"),
        _mme_item("code_reasoning", "c", 2, "no"),
    ]
    predictions = ["yes", "no", "yes", "yes", "no", "no"]
    scores = BENCHMARKS["mme"].score(items, predictions)
    # existence: 3 of 4 questions right; image a has both right, image b one -> accuracy+ 1/2
    assert scores["existence_accuracy"] == pytest.approx(0.75)
    assert scores["existence_accuracy_plus"] == pytest.approx(0.5)
    assert scores["existence_score"] == pytest.approx(125.0)
    # code_reasoning: 1 of 2 right, its one image not fully right -> (0.5 + 0) * 100
    assert scores["code_reasoning_accuracy"] == pytest.approx(0.5)
    assert scores["code_reasoning_accuracy_plus"] == 0.0
    assert scores["code_reasoning_score"] == pytest.approx(50.0)
    assert scores["perception_total"] == pytest.approx(125.0) and scores["perception_subtasks"] == 1
    assert scores["cognition_total"] == pytest.approx(50.0) and scores["cognition_subtasks"] == 1
    assert scores["accuracy"] == pytest.approx(4 / 6)


# --- ScienceQA -------------------------------------------------------------------------------------------


def _sqa_item(pid: str, subject: str, grade: str, hint: str, answer: int = 0, has_image: bool = True) -> Item:
    meta = {
        "subject": subject,
        "grade": grade,
        "hint": hint,
        "context": hint or "N/A",
        "has_image": has_image,
    }
    return Item(pid, None, "q?", ["x", "y"], answer, meta)


def test_scienceqa_groups():
    items = [
        _sqa_item("1", "natural science", "grade3", ""),
        _sqa_item("2", "social science", "grade8", "a map"),
        _sqa_item("3", "language science", "grade10", "a poem"),
        _sqa_item("4", "natural science", "grade6", ""),
    ]
    predictions = [0, 1, 0, None]
    scores = BENCHMARKS["scienceqa_img"].score(items, predictions)
    assert scores["accuracy"] == pytest.approx(0.5)
    assert scores["accuracy_nat"] == pytest.approx(0.5)  # items 1 (right) and 4 (unparsed)
    assert scores["accuracy_soc"] == 0.0
    assert scores["accuracy_lan"] == 1.0
    assert scores["accuracy_txt"] == pytest.approx(0.5)  # items 2 and 3 have a hint
    assert scores["accuracy_img"] == pytest.approx(0.5)  # every item has an image
    assert "accuracy_no" not in scores  # no item without context on the IMG subset
    assert scores["accuracy_g1_6"] == pytest.approx(0.5)  # items 1 and 4
    assert scores["accuracy_g7_12"] == pytest.approx(0.5)  # items 2 and 3
    assert scores["unparsed_rate"] == pytest.approx(0.25)


def test_scienceqa_no_context_group_and_extract():
    items = [_sqa_item("1", "natural science", "grade1", "", has_image=False)]
    scores = BENCHMARKS["scienceqa_img"].score(items, [0])
    assert scores["accuracy_no"] == 1.0 and "accuracy_img" not in scores and "accuracy_txt" not in scores
    item = Item("9", None, "Which is a mammal?", ["shark", "whale"], 1, {})
    assert BENCHMARKS["scienceqa_img"].extract("(B) whale###", item) == 1
    assert BENCHMARKS["scienceqa_img"].extract("shark", item) == 0


# --- RefCOCO ---------------------------------------------------------------------------------------------


def _ref_item(i: int) -> Item:
    # image 200 x 100; gold box x 20..100, y 10..60 pixels = 10..50, 10..60 on the 0-100 scale
    return Item(str(i), None, "man", None, (20.0, 10.0, 100.0, 60.0), {"width": 200.0, "height": 100.0})


def test_refcoco_counts_malformed_answers_as_wrong_and_apart():
    bench = BENCHMARKS["refcoco"]
    raw = [
        "{<10><10><50><60>}",  # exact
        "{ <10> <10> <50> <60> }###",  # exact, spaced, end symbol
        "the man on the left",  # no box: malformed
        "{<60><60><90><90>}",  # a box, no overlap: wrong, not malformed
        "{<10><10><50>}",  # three numbers: malformed
    ]
    items = [_ref_item(i) for i in range(len(raw))]
    predictions = [bench.extract(r, it) for r, it in zip(raw, items, strict=True)]
    assert predictions[0] == (10, 10, 50, 60) and predictions[2] is None and predictions[4] is None
    scores = bench.score(items, predictions)
    assert scores == {"accuracy": pytest.approx(2 / 5), "malformed_rate": pytest.approx(2 / 5), "n": 5.0}
    assert bench.score(items, raw) == scores  # raw strings are parsed the same way


def test_refcoco_iou_threshold_is_inclusive():
    item = Item("0", None, "left half", None, (0.0, 0.0, 100.0, 100.0), {"width": 100.0, "height": 100.0})
    bench = BENCHMARKS["refcocog"]
    assert bench.score([item], [(0, 0, 50, 100)])["accuracy"] == 1.0  # IoU exactly 0.5
    assert bench.score([item], [(0, 0, 49, 100)])["accuracy"] == 0.0  # IoU 0.49
    assert bench.score([item], [(50, 100, 0, 0)])["accuracy"] == 1.0  # corners given in reverse order


# --- GQA, VSR, IconQA ------------------------------------------------------------------------------------


def test_gqa_exact_match_after_normalisation():
    items = [
        Item("1", None, "q", None, "laptop", {"structural": "query", "semantic": "rel"}),
        Item("2", None, "q", None, "yes", {"structural": "verify", "semantic": "attr"}),
        Item("3", None, "q", None, "yes", {"structural": "verify", "semantic": "attr"}),
    ]
    bench = BENCHMARKS["gqa"]
    predictions = [bench.extract(r, it) for r, it in zip(["The laptop.###", "Yes", "no"], items, strict=True)]
    scores = bench.score(items, predictions)
    assert scores["accuracy"] == pytest.approx(2 / 3)
    assert scores["accuracy_structural_query"] == 1.0
    assert scores["accuracy_structural_verify"] == pytest.approx(0.5)
    assert scores["accuracy_semantic_attr"] == pytest.approx(0.5)


def test_vsr_accuracy_and_unparsed():
    items = [
        Item(str(i), None, "c", None, True, {"relation": r}) for i, r in enumerate(["under", "under", "near"])
    ]
    bench = BENCHMARKS["vsr"]
    predictions = [bench.extract(r, it) for r, it in zip(["True", "maybe", "false"], items, strict=True)]
    assert predictions == [True, None, False]
    scores = bench.score(items, predictions)
    assert scores["accuracy"] == pytest.approx(1 / 3)
    assert scores["unparsed_rate"] == pytest.approx(1 / 3)
    assert scores["accuracy_relation_under"] == pytest.approx(0.5)
    assert scores["accuracy_relation_near"] == 0.0


def test_iconqa_per_type():
    bench = BENCHMARKS["iconqa"]
    items = [
        Item("1", None, "q", ["circle", "square"], 1, {"ques_type": "choose_txt"}),
        Item("2", None, "q", ["circle", "square"], 0, {"ques_type": "choose_txt"}),
        Item("3", None, "q", None, "7", {"ques_type": "fill_in_blank"}),
        Item("4", None, "q", None, "7", {"ques_type": "fill_in_blank"}),
        Item("5", None, "q", None, "12", {"ques_type": "fill_in_blank"}),
    ]
    raw = ["B", "square", "seven.", "7.0", "11"]
    predictions = [bench.extract(r, it) for r, it in zip(raw, items, strict=True)]
    assert predictions == [1, 1, "seven.", "7.0", "11"]
    scores = bench.score(items, predictions)
    assert scores["accuracy_choose_txt"] == pytest.approx(0.5)
    assert scores["accuracy_fill_in_blank"] == pytest.approx(2 / 3)  # "seven." -> "7", "7.0" = 7
    assert scores["accuracy"] == pytest.approx(3 / 5)
