"""VQA readers: VQAv2 and OK-VQA (VQA layout), A-OKVQA, GQA, OCR-VQA."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats import FormatError, load_examples

FIXTURES = Path(__file__).parent / "fixtures"


def test_vqav2_takes_most_common_answer_and_keeps_all_ten():
    examples = list(load_examples("coco_vqa", FIXTURES / "vqav2" / "v2_mscoco_train2014_annotations.json"))
    net = ["net", "net", "netting", "net", "net", "mesh", "net", "net", "netting", "net"]
    tie = ["gray", "white", "white", "gray", "white", "gray", "white", "gray", "white", "gray"]
    assert examples == [
        TaskExample(
            "vqa",
            [Turn("What is this photo taken looking through?", "net")],
            "COCO_train2014_000000458752.jpg",
            "coco_vqa",
            {"answers": net, "question_id": 458752000, "qtype": "what is this", "answer_type": "other"},
        ),
        # 5 against 5: the first answer given wins, the same on every run
        TaskExample(
            "vqa",
            [Turn("What color is the snow?", "gray")],
            "COCO_train2014_000000262146.jpg",
            "coco_vqa",
            {"answers": tie, "question_id": 262146001, "qtype": "what color is the", "answer_type": "other"},
        ),
    ]


def test_okvqa_finds_its_questions_file_and_subtype_from_file_names(tmp_path):
    # OK-VQA's annotation file has no data_subtype here; the questions file name is derived too
    folder = tmp_path / "okvqa"
    shutil.copytree(FIXTURES / "okvqa", folder)
    questions = folder / "OpenEnded_mscoco_train2014_questions.json"
    data = json.loads(questions.read_text())
    del data["data_subtype"]
    questions.write_text(json.dumps(data))
    (example,) = load_examples("ok_vqa", folder / "mscoco_train2014_annotations.json")
    assert example == TaskExample(
        "vqa",
        [Turn("What is the hairstyle of the blond called?", "pony tail")],
        "COCO_train2014_000000051606.jpg",
        "ok_vqa",
        {
            "answers": ["pony tail"] * 4 + ["braid"] * 2 + ["ponytail"] * 2 + ["up"] * 2,
            "question_id": 516065,
            "qtype": "four",
            "answer_type": "other",
        },
    )


def test_vqa_questions_file_can_be_named(tmp_path):
    shutil.copy(FIXTURES / "vqav2" / "v2_mscoco_train2014_annotations.json", tmp_path / "answers.json")
    questions = FIXTURES / "vqav2" / "v2_OpenEnded_mscoco_train2014_questions.json"
    examples = list(load_examples("coco_vqa", tmp_path / "answers.json", questions=str(questions)))
    assert [e.turns[0].answer for e in examples] == ["net", "gray"]


def test_vqa_missing_questions_file_names_the_expected_path(tmp_path):
    path = tmp_path / "v2_mscoco_val2014_annotations.json"
    shutil.copy(FIXTURES / "vqav2" / "v2_mscoco_train2014_annotations.json", path)
    with pytest.raises(FormatError) as err:
        load_examples("coco_vqa", path)
    assert str(err.value).startswith(
        f"{tmp_path / 'v2_OpenEnded_mscoco_val2014_questions.json'}: file not found"
    )


def test_vqa_question_without_annotation(write_json):
    write_json(
        "OpenEnded_mscoco_train2014_questions.json",
        {"questions": [{"image_id": 1, "question": "Why?", "question_id": 7}]},
    )
    path = write_json("mscoco_train2014_annotations.json", {"annotations": []})
    with pytest.raises(
        FormatError,
        match=r"no annotation for question_id 7 \(OpenEnded_mscoco_train2014_questions.json questions\[0\]\)",
    ):
        load_examples("ok_vqa", path)


def test_aokvqa_answers_with_the_correct_choice():
    examples = list(load_examples("aok_vqa", FIXTURES / "aokvqa" / "aokvqa_v1p0_train.json"))
    assert examples[0] == TaskExample(
        "vqa",
        [Turn("What is the man by the bags awaiting?", "cab")],
        "000000299207.jpg",
        "aok_vqa",
        {
            "answers": ["ride"] * 2
            + ["bus", "taxi", "travelling", "traffic", "taxi", "cab", "cab", "his ride"],
            "choices": ["skateboarder", "train", "delivery", "cab"],
            "correct_choice_idx": 3,
            "rationales": [
                "A train would not be on the street.",
                "He is waiting for a cab.",
                "He is looking for a taxi.",
            ],
            "question_id": "22MexNkBPpdZGX6sxbxVBH",
        },
    )
    assert (examples[1].turns, examples[1].image) == (
        [Turn("Which object has the most sugar?", "cake")],
        "000000001137.jpg",
    )


def test_aokvqa_test_record_without_answer_is_rejected(write_json):
    record = {"question_id": "q1", "image_id": 5, "question": "Why?", "choices": ["a", "b"]}
    path = write_json("aokvqa_v1p0_test.json", [record])
    with pytest.raises(FormatError, match=r"record 0 \(question_id q1\) has no 'correct_choice_idx'"):
        load_examples("aok_vqa", path)


def test_gqa_short_answer_by_default_full_on_request():
    path = FIXTURES / "gqa" / "train_balanced_questions.json"
    examples = list(load_examples("gqa", path))
    assert examples == [
        TaskExample(
            "vqa",
            [Turn("Is the sky dark?", "yes")],
            "2354786.jpg",
            "gqa",
            {
                "answers": ["yes"],
                "question_id": "02930152",
                "full_answer": "Yes, the sky is dark.",
                "qtype": "verify",
            },
        ),
        TaskExample(
            "vqa",
            [Turn("What is on the white wall?", "pipe")],
            "2375429.jpg",
            "gqa",
            {
                "answers": ["pipe"],
                "question_id": "07333408",
                "full_answer": "The pipe is on the wall.",
                "qtype": "query",
            },
        ),
    ]
    full = [e.turns[0].answer for e in load_examples("gqa", path, full_answer=True)]
    assert full == ["Yes, the sky is dark.", "The pipe is on the wall."]


def test_gqa_reads_a_folder_of_question_files_in_name_order(tmp_path):
    data = json.loads((FIXTURES / "gqa" / "train_balanced_questions.json").read_text())
    first, second = list(data.items())
    (tmp_path / "train_all_questions_1.json").write_text(json.dumps(dict([second])))
    (tmp_path / "train_all_questions_0.json").write_text(json.dumps(dict([first])))
    assert [e.meta["question_id"] for e in load_examples("gqa", tmp_path)] == ["02930152", "07333408"]


def test_gqa_record_missing_image_id(write_json):
    path = write_json("q.json", {"123": {"question": "Is it?", "answer": "no"}})
    with pytest.raises(FormatError, match="question 123 has no 'imageId'"):
        load_examples("gqa", path)


def test_ocrvqa_pairs_questions_and_answers_and_filters_split():
    path = FIXTURES / "ocrvqa" / "dataset.json"
    examples = list(load_examples("ocr_vqa", path))
    meta = {"book_id": "1552528033", "title": "Sourdough Bread", "genre": "Cookbooks, Food & Wine"}
    assert examples[:2] == [
        TaskExample("vqa", [Turn("Who wrote this book?", "Marc Lessard")], "1552528033.jpg", "ocr_vqa",
                    {"answers": ["Marc Lessard"], **meta}),
        TaskExample("vqa", [Turn("What is the title of this book?", "Sourdough Bread")], "1552528033.jpg", "ocr_vqa",
                    {"answers": ["Sourdough Bread"], **meta}),
    ]  # fmt: skip
    assert [(e.turns[0].answer, e.image) for e in examples[2:]] == [("Travel", "0767903862.gif")]
    assert [e.image for e in load_examples("ocr_vqa", path, split="test")] == ["0060938447.jpg"]
    assert len(list(load_examples("ocr_vqa", path, split="all"))) == 4
    jpg = [e.image for e in load_examples("ocr_vqa", path, image_extension=".jpg")]
    assert jpg == ["1552528033.jpg", "1552528033.jpg", "0767903862.jpg"]


def test_ocrvqa_unequal_questions_and_answers(write_json):
    book = {"imageURL": "http://x/1.jpg", "questions": ["a?", "b?"], "answers": ["a"], "split": 1}
    path = write_json("dataset.json", {"42": book})
    with pytest.raises(FormatError, match="book 42 has 2 questions but 1 answers"):
        load_examples("ocr_vqa", path)


def test_ocrvqa_unknown_split(tmp_path):
    with pytest.raises(FormatError, match="unknown split 'dev'; expected all or train, val, test"):
        load_examples("ocr_vqa", FIXTURES / "ocrvqa" / "dataset.json", split="dev")


def test_vqa_blank_answers_do_not_count_and_empty_lists_fall_back(write_json):
    write_json(
        "OpenEnded_mscoco_val2014_questions.json",
        {
            "questions": [
                {"image_id": 3, "question": "Q1?", "question_id": 1},
                {"image_id": 4, "question": "Q2?", "question_id": 2},
            ]
        },
    )
    answers = [{"answer": " "}, {"answer": "two"}, {"answer": "2"}, {"answer": "2"}]
    path = write_json(
        "mscoco_val2014_annotations.json",
        {
            "annotations": [
                {"question_id": 1, "answers": answers},
                {"question_id": 2, "answers": [], "multiple_choice_answer": "no"},
            ]
        },
    )
    first, second = load_examples("ok_vqa", path)
    assert (first.turns[0].answer, first.meta["answers"], first.image) == (
        "2",
        ["two", "2", "2"],
        "COCO_val2014_000000000003.jpg",
    )
    assert (second.turns[0].answer, second.meta["answers"]) == ("no", ["no"])


def test_vqa_answer_record_without_answer_key(write_json):
    write_json(
        "OpenEnded_mscoco_val2014_questions.json",
        {"questions": [{"image_id": 3, "question": "Q?", "question_id": 1}]},
    )
    path = write_json(
        "mscoco_val2014_annotations.json",
        {"annotations": [{"question_id": 1, "answers": [{"raw_answer": "x"}]}]},
    )
    with pytest.raises(FormatError, match=r"annotation of question_id 1 answers\[0\] has no 'answer'"):
        load_examples("ok_vqa", path)
