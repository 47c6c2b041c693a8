"""Readers of the official releases: a tiny copy of each layout written here, read back field by field,
and a wrong root answered by one line naming the benchmark and the file it expected."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from tasks.evaluate.official import BENCHMARKS, BenchmarkDataError


def image(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (10, 200, 30)).save(path)
    return path


def write(path: Path, data: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def write_lines(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def one_line_error(name: str, root: Path, split: str | None = None) -> str:
    with pytest.raises(BenchmarkDataError) as info:
        BENCHMARKS[name].read(root, split)
    text = str(info.value)
    assert "\n" not in text
    assert text.startswith(f"{name}: ")
    return text


# --- GQA -------------------------------------------------------------------------------------------------


def test_gqa_reads_testdev_balanced(tmp_path):
    write(
        tmp_path / "questions" / "testdev_balanced_questions.json",
        {
            "20968379": {
                "imageId": "n288870",
                "question": "Is the sky blue?",
                "answer": "yes",
                "types": {"structural": "verify", "semantic": "attr", "detailed": "verifyAttr"},
            },
            "201640614": {"imageId": "n161313", "question": "What is on the table?", "answer": "laptop"},
        },
    )
    image(tmp_path / "images" / "n288870.jpg")
    image(tmp_path / "images" / "n161313.jpg")
    items = BENCHMARKS["gqa"].read(tmp_path, None)
    assert [it.id for it in items] == ["20968379", "201640614"]
    first = items[0]
    assert first.image == tmp_path / "images" / "n288870.jpg" and first.image.is_file()
    assert first.question == "Is the sky blue?" and first.answers == "yes" and first.choices is None
    assert first.meta == {"structural": "verify", "semantic": "attr"}
    assert items[1].meta == {"structural": None, "semantic": None}


def test_gqa_wrong_root_names_the_file(tmp_path):
    text = one_line_error("gqa", tmp_path)
    assert text == (
        f"gqa: expected testdev_balanced_questions.json in {tmp_path} (the official GQA release: questions/ and images/)"
    )


def test_gqa_missing_field_names_file_and_field(tmp_path):
    path = write(tmp_path / "testdev_balanced_questions.json", {"7": {"question": "q?", "answer": "no"}})
    (tmp_path / "images").mkdir()
    with pytest.raises(BenchmarkDataError) as info:
        BENCHMARKS["gqa"].read(tmp_path, None)
    text = str(info.value)
    assert "\n" not in text and str(path) in text and "'imageId'" in text and "question 7" in text


def test_invalid_json_is_one_line(tmp_path):
    path = tmp_path / "testdev_balanced_questions.json"
    path.write_text('{"1": {\n"imageId": }', encoding="utf-8")
    (tmp_path / "images").mkdir()
    with pytest.raises(BenchmarkDataError) as info:
        BENCHMARKS["gqa"].read(tmp_path, None)
    assert "\n" not in str(info.value) and str(path) in str(info.value) and "line 2" in str(info.value)


# --- VSR -------------------------------------------------------------------------------------------------


def test_vsr_reads_zero_shot_jsonl(tmp_path):
    rows = [
        {
            "image": "000000085637.jpg",
            "caption": "The cat is under the bed.",
            "label": 1,
            "relation": "under",
        },
        {
            "image": "000000135449.jpg",
            "caption": "The dog is left of the car.",
            "label": 0,
            "relation": "left of",
        },
    ]
    write_lines(tmp_path / "test.jsonl", rows)
    for r in rows:
        image(tmp_path / "images" / r["image"])
    items = BENCHMARKS["vsr"].read(tmp_path, None)
    assert [(it.question, it.answers, it.meta["relation"]) for it in items] == [
        ("The cat is under the bed.", True, "under"),
        ("The dog is left of the car.", False, "left of"),
    ]
    assert items[1].image == tmp_path / "images" / "000000135449.jpg" and items[1].image.is_file()
    assert len({it.id for it in items}) == 2


def test_vsr_wrong_root_and_bad_label(tmp_path):
    assert "expected test.jsonl in" in one_line_error("vsr", tmp_path)
    write_lines(tmp_path / "test.jsonl", [{"image": "a.jpg", "caption": "c", "label": 2}])
    (tmp_path / "images").mkdir()
    text = one_line_error("vsr", tmp_path)
    assert "test.jsonl line 1" in text and "'label'" in text


# --- IconQA ----------------------------------------------------------------------------------------------


def test_iconqa_reads_text_choice_and_blank_problems(tmp_path):
    problems = {
        "10": {
            "question": "Which is bigger?",
            "choices": ["circle", "square"],
            "answer": 1,
            "ques_type": "choose_txt",
        },
        "11": {"question": "How many dots?", "answer": "7", "ques_type": "fill_in_blank", "grade": "grade1"},
        "12": {
            "question": "Pick the image",
            "choices": ["a.png", "b.png"],
            "answer": 0,
            "ques_type": "choose_img",
        },
    }
    write(tmp_path / "problems.json", problems)
    write(tmp_path / "pid_splits.json", {"test": ["10", "11", "12"], "train": []})
    image(tmp_path / "iconqa" / "test" / "choose_txt" / "10" / "image.png")
    image(tmp_path / "iconqa" / "test" / "fill_in_blank" / "11" / "image.png")
    items = BENCHMARKS["iconqa"].read(tmp_path, "test")
    assert [it.id for it in items] == ["10", "11"]  # image-choice problems are not read
    txt, blank = items
    assert txt.choices == ["circle", "square"] and txt.answers == 1 and txt.meta["ques_type"] == "choose_txt"
    assert (
        txt.image == tmp_path / "iconqa" / "test" / "choose_txt" / "10" / "image.png" and txt.image.is_file()
    )
    assert (
        blank.choices is None
        and blank.answers == "7"
        and blank.meta == {"ques_type": "fill_in_blank", "grade": "grade1"}
    )
    assert blank.image.is_file()


def test_iconqa_errors(tmp_path):
    assert "iconqa: expected problems.json in" in one_line_error("iconqa", tmp_path)
    write(
        tmp_path / "problems.json",
        {"10": {"question": "q", "ques_type": "choose_txt", "choices": ["a"], "answer": 3}},
    )
    write(tmp_path / "pid_splits.json", {"test": ["10"]})
    (tmp_path / "iconqa" / "test").mkdir(parents=True)
    text = one_line_error("iconqa", tmp_path)
    assert "problems.json problem 10" in text and "'answer'" in text
    assert "'val'" in one_line_error("iconqa", tmp_path, "val")


# --- VizWiz ----------------------------------------------------------------------------------------------


def test_vizwiz_reads_val_json(tmp_path):
    answers = [{"answer": "unanswerable", "answer_confidence": "yes"}] * 6 + [
        {"answer": "soup", "answer_confidence": "maybe"}
    ] * 4
    write(
        tmp_path / "Annotations" / "val.json",
        [
            {
                "image": "VizWiz_val_00000000.jpg",
                "question": "What is this?",
                "answers": answers,
                "answerable": 0,
                "answer_type": "unanswerable",
            },
            {
                "image": "VizWiz_val_00000001.jpg",
                "question": "What colour is the shirt?",
                "answers": [{"answer": "blue", "answer_confidence": "yes"}] * 10,
                "answerable": 1,
                "answer_type": "other",
            },
        ],
    )
    image(tmp_path / "val" / "VizWiz_val_00000000.jpg")
    image(tmp_path / "val" / "VizWiz_val_00000001.jpg")
    items = BENCHMARKS["vizwiz"].read(tmp_path, None)
    assert items[0].id == "VizWiz_val_00000000.jpg" and items[0].image.is_file()
    assert items[0].answers == ["unanswerable"] * 6 + ["soup"] * 4
    assert items[0].meta == {"answer_type": "unanswerable", "answerable": 0}
    assert items[1].question == "What colour is the shirt?" and items[1].answers == ["blue"] * 10


def test_vizwiz_wrong_root(tmp_path):
    assert "vizwiz: expected Annotations/val.json in" in one_line_error("vizwiz", tmp_path)


# --- Hateful Memes ---------------------------------------------------------------------------------------


def test_hateful_memes_reads_dev_seen(tmp_path):
    write_lines(
        tmp_path / "dev_seen.jsonl",
        [
            {"id": 8291, "img": "img/08291.png", "label": 1, "text": "white people is this a shooting range"},
            {"id": 46971, "img": "img/46971.png", "label": 0, "text": "bravery at its finest"},
        ],
    )
    image(tmp_path / "img" / "08291.png")
    image(tmp_path / "img" / "46971.png")
    items = BENCHMARKS["hateful_memes"].read(tmp_path, None)
    assert [(it.id, it.answers) for it in items] == [("8291", 1), ("46971", 0)]
    assert items[0].image == tmp_path / "img" / "08291.png" and items[0].image.is_file()
    assert items[1].question == "bravery at its finest"


def test_hateful_memes_errors(tmp_path):
    assert "hateful_memes: expected dev_seen.jsonl in" in one_line_error("hateful_memes", tmp_path)
    write_lines(tmp_path / "dev_seen.jsonl", [{"id": 1, "img": "img/01.png", "text": "t"}])
    (tmp_path / "img").mkdir()
    text = one_line_error("hateful_memes", tmp_path)
    assert "dev_seen.jsonl line 1" in text and "'label' is missing" in text


# --- VQAv2 and OK-VQA ------------------------------------------------------------------------------------


def _vqa_release(root: Path, questions: str, annotations: str) -> None:
    write(
        root / questions,
        {
            "questions": [
                {"image_id": 262148, "question": "Where is he looking?", "question_id": 262148000},
                {"image_id": 393225, "question": "How many bowls?", "question_id": 393225001},
            ]
        },
    )
    write(
        root / annotations,
        {
            "annotations": [
                {
                    "question_id": 393225001,
                    "image_id": 393225,
                    "answers": [
                        {"answer": "2", "answer_confidence": "yes", "answer_id": i} for i in range(10)
                    ],
                    "answer_type": "number",
                    "question_type": "how many",
                },
                {
                    "question_id": 262148000,
                    "image_id": 262148,
                    "answers": [{"answer": "down", "answer_id": i} for i in range(10)],
                    "answer_type": "other",
                    "question_type": "where is the",
                },
            ]
        },
    )
    image(root / "val2014" / "COCO_val2014_000000262148.jpg")
    image(root / "val2014" / "COCO_val2014_000000393225.jpg")


@pytest.mark.parametrize(
    ("name", "questions", "annotations"),
    [
        ("vqav2", "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json"),
        ("okvqa", "OpenEnded_mscoco_val2014_questions.json", "mscoco_val2014_annotations.json"),
    ],
)
def test_vqa_format_reads_questions_with_their_annotations(tmp_path, name, questions, annotations):
    _vqa_release(tmp_path, questions, annotations)
    items = BENCHMARKS[name].read(tmp_path, None)
    assert [it.id for it in items] == ["262148000", "393225001"]
    second = items[1]
    assert second.image == tmp_path / "val2014" / "COCO_val2014_000000393225.jpg" and second.image.is_file()
    assert second.question == "How many bowls?" and second.answers == ["2"] * 10
    assert second.meta == {"answer_type": "number", "question_type": "how many", "image_id": 393225}
    text = one_line_error(name, tmp_path / "elsewhere")
    assert text.startswith(f"{name}: expected {questions} in")


def test_vqa_question_without_annotation_is_named(tmp_path):
    _vqa_release(tmp_path, "v2_OpenEnded_mscoco_val2014_questions.json", "v2_mscoco_val2014_annotations.json")
    write(tmp_path / "v2_mscoco_val2014_annotations.json", {"annotations": []})
    text = one_line_error("vqav2", tmp_path)
    assert "v2_mscoco_val2014_annotations.json" in text and "262148000" in text


# --- ScienceQA -------------------------------------------------------------------------------------------


def test_scienceqa_reads_only_problems_with_an_image(tmp_path):
    base = {"choices": ["Asia", "Africa"], "answer": 1, "subject": "social science", "grade": "grade4"}
    write(
        tmp_path / "problems.json",
        {
            "1": {**base, "question": "Which continent is highlighted?", "hint": "", "image": "image.png"},
            "2": {**base, "question": "Which word is a noun?", "hint": "Read.", "image": None},
            "3": {**base, "question": "Which is warmer?", "hint": "Two cups.", "image": "image.png"},
            "4": {**base, "question": "Train problem", "hint": "", "image": "image.png"},
        },
    )
    write(tmp_path / "pid_splits.json", {"train": ["4"], "val": [], "test": ["1", "2", "3"]})
    image(tmp_path / "images" / "test" / "1" / "image.png")
    image(tmp_path / "images" / "test" / "3" / "image.png")
    items = BENCHMARKS["scienceqa_img"].read(tmp_path, None)
    assert [it.id for it in items] == ["1", "3"]
    first, third = items
    assert first.choices == ["Asia", "Africa"] and first.answers == 1
    assert first.image == tmp_path / "images" / "test" / "1" / "image.png" and first.image.is_file()
    assert first.meta["context"] == "N/A" and third.meta["context"] == "Two cups."
    assert third.meta["subject"] == "social science" and third.meta["grade"] == "grade4"


def test_scienceqa_nested_layout_and_split_field(tmp_path):
    # problems.json under scienceqa/, no pid_splits.json: the split comes from each problem's "split"
    problem = {
        "question": "Which is a mammal?",
        "choices": ["shark", "whale"],
        "answer": 1,
        "hint": "",
        "image": "image.png",
        "subject": "natural science",
        "grade": "grade2",
    }
    write(
        tmp_path / "scienceqa" / "problems.json",
        {"5": {**problem, "split": "test"}, "6": {**problem, "split": "val"}},
    )
    image(tmp_path / "scienceqa" / "images" / "test" / "5" / "image.png")
    items = BENCHMARKS["scienceqa_img"].read(tmp_path, "test")
    assert [it.id for it in items] == ["5"]
    assert (
        items[0].image == tmp_path / "scienceqa" / "images" / "test" / "5" / "image.png"
        and items[0].image.is_file()
    )


def test_scienceqa_wrong_root(tmp_path):
    assert "scienceqa_img: expected problems.json in" in one_line_error("scienceqa_img", tmp_path)


# --- COCO captions ---------------------------------------------------------------------------------------


def test_coco_karpathy_test_split(tmp_path):
    write(
        tmp_path / "dataset_coco.json",
        {
            "images": [
                {
                    "filepath": "val2014",
                    "filename": "COCO_val2014_000000391895.jpg",
                    "cocoid": 391895,
                    "split": "test",
                    "sentences": [
                        {"raw": "A man riding a bike.", "tokens": ["a", "man"]},
                        {"raw": "A cyclist."},
                    ],
                },
                {
                    "filepath": "train2014",
                    "filename": "COCO_train2014_000000000009.jpg",
                    "cocoid": 9,
                    "split": "train",
                    "sentences": [{"raw": "Food."}],
                },
            ]
        },
    )
    image(tmp_path / "val2014" / "COCO_val2014_000000391895.jpg")
    items = BENCHMARKS["coco_caption"].read(tmp_path, None)
    assert len(items) == 1
    assert items[0].id == "391895" and items[0].answers == ["A man riding a bike.", "A cyclist."]
    assert (
        items[0].image == tmp_path / "val2014" / "COCO_val2014_000000391895.jpg" and items[0].image.is_file()
    )


def test_coco_official_captions_val2014(tmp_path):
    write(
        tmp_path / "annotations" / "captions_val2014.json",
        {
            "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg"}],
            "annotations": [
                {"image_id": 42, "id": 1, "caption": "A dog on a couch."},
                {"image_id": 42, "id": 2, "caption": "A brown dog resting."},
            ],
        },
    )
    image(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    items = BENCHMARKS["coco_caption"].read(tmp_path, "val2014")
    assert [(it.id, it.answers) for it in items] == [("42", ["A dog on a couch.", "A brown dog resting."])]
    assert items[0].image.is_file()


def test_coco_wrong_root(tmp_path):
    assert "coco_caption: expected dataset_coco.json in" in one_line_error("coco_caption", tmp_path)
    assert "expected annotations/captions_val2014.json in" in one_line_error(
        "coco_caption", tmp_path, "val2014"
    )


# --- MME -------------------------------------------------------------------------------------------------


def test_mme_reads_both_folder_variants(tmp_path):
    # nested variant: images/ + questions_answers_YN/
    image(tmp_path / "artwork" / "images" / "10002.jpg")
    qa = tmp_path / "artwork" / "questions_answers_YN" / "10002.txt"
    qa.parent.mkdir(parents=True)
    qa.write_text(
        "Does this artwork exist in the form of painting? Please answer yes or no.\tYes\n"
        "Does this artwork exist in the form of glassware? Please answer yes or no.\tNo\n",
        encoding="utf-8",
    )
    # flat variant: <image>.png beside <image>.txt
    image(tmp_path / "code_reasoning" / "0020.png")
    (tmp_path / "code_reasoning" / "0020.txt").write_text(
        "Is a c++ code shown in the picture? Please answer yes or no.\tYes\r\n"
        "Is a python code shown in the picture? Please answer yes or no.\tNo\r\n",
        encoding="utf-8",
    )
    items = BENCHMARKS["mme"].read(tmp_path, None)
    assert [it.id for it in items] == [
        "artwork/10002/1",
        "artwork/10002/2",
        "code_reasoning/0020/1",
        "code_reasoning/0020/2",
    ]
    assert [it.answers for it in items] == ["yes", "no", "yes", "no"]
    assert items[0].image == tmp_path / "artwork" / "images" / "10002.jpg"
    assert items[2].image == tmp_path / "code_reasoning" / "0020.png"
    assert items[0].question == "Does this artwork exist in the form of painting? Please answer yes or no."
    assert items[0].meta == {"subtask": "artwork", "category": "perception", "image_key": "artwork/10002"}
    assert items[3].meta["category"] == "cognition"
    assert [it.id for it in BENCHMARKS["mme"].read(tmp_path, "code_reasoning")][0] == "code_reasoning/0020/1"


def test_mme_errors(tmp_path):
    assert "mme: expected existence/ in" in one_line_error("mme", tmp_path)
    (tmp_path / "existence").mkdir()
    (tmp_path / "existence" / "000.txt").write_text("Is there a cat?\tYes\n", encoding="utf-8")
    assert "000.jpg" in one_line_error("mme", tmp_path)
    image(tmp_path / "existence" / "000.jpg")
    (tmp_path / "existence" / "000.txt").write_text("Is there a cat? Yes\n", encoding="utf-8")
    text = one_line_error("mme", tmp_path)
    assert "000.txt line 1" in text and "'answer'" in text


# --- RefCOCO ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "folder"), [("refcoco", "refcoco"), ("refcocop", "refcoco+"), ("refcocog", "refcocog")]
)
def test_refcoco_reads_the_json_export(tmp_path, name, folder):
    write(
        tmp_path / folder / "testA.json",
        [
            {"img_id": 580957, "sents": "left man", "bbox": [10, 20, 30, 40], "height": 480, "width": 640},
            {
                "img_id": "COCO_train2014_000000000009_3",
                "sents": ["bowl", "the bowl"],
                "bbox": [0, 0, 5, 5],
                "height": 10,
                "width": 10,
            },
        ],
    )
    image(tmp_path / "train2014" / "COCO_train2014_000000580957.jpg")
    image(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg")
    items = BENCHMARKS[name].read(tmp_path, "testA")
    assert [it.id for it in items] == ["0", "1:0", "1:1"]
    first = items[0]
    assert first.question == "left man" and first.answers == (10.0, 20.0, 40.0, 60.0)
    assert first.meta["width"] == 640.0 and first.meta["height"] == 480.0
    assert first.image == tmp_path / "train2014" / "COCO_train2014_000000580957.jpg" and first.image.is_file()
    assert items[2].question == "the bowl" and items[2].image.is_file()


def test_refcoco_errors(tmp_path):
    text = one_line_error("refcoco", tmp_path, "testA")
    assert text.startswith(f"refcoco: expected refcoco/testA.json in {tmp_path}")
    write(
        tmp_path / "refcoco" / "testA.json",
        [{"img_id": 1, "sents": "x", "bbox": [1, 2, 3], "height": 4, "width": 4}],
    )
    (tmp_path / "train2014").mkdir()
    text = one_line_error("refcoco", tmp_path, "testA")
    assert "refcoco/testA.json record 0" in text and "'bbox'" in text
