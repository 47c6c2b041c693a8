"""Caption-style readers: cc_sbu_align (stage 3), COCO captions and TextCaps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats import FormatError, load_examples

FIXTURES = Path(__file__).parent / "fixtures"


def test_cc_sbu_align_gives_detailed_descriptions_without_query():
    examples = list(load_examples("cc_sbu_align", FIXTURES / "cc_sbu_align" / "filter_cap.json"))
    assert examples == [
        TaskExample(
            task="detailed_description",
            turns=[
                Turn(
                    None,
                    "The image shows a man fishing on a lawn next to a river with a bridge in the background. "
                    "Trees can be seen on the other side of the river.",
                )
            ],
            image="2.jpg",
            dataset="cc_sbu_align",
            meta={"image_id": "2"},
        ),
        TaskExample(
            task="detailed_description",
            turns=[Turn(None, "A red double-decker bus drives down a busy street lined with shops.")],
            image="3.jpg",
            dataset="cc_sbu_align",
            meta={"image_id": "3"},
        ),
    ]


def test_dataset_name_can_be_overridden():
    examples = load_examples("cc_sbu_align", FIXTURES / "cc_sbu_align" / "filter_cap.json", dataset="stage3")
    assert {e.dataset for e in examples} == {"stage3"}


def test_coco_captions_one_example_per_caption_in_file_order():
    examples = list(load_examples("coco_caption", FIXTURES / "coco" / "captions_train2017.json"))
    assert [(e.task, e.turns, e.image, e.meta) for e in examples] == [
        (
            "caption",
            [Turn(None, "A man with a red helmet on a small moped on a dirt road.")],
            "000000391895.jpg",
            {"image_id": 391895, "caption_id": 770337},
        ),
        (
            "caption",
            [Turn(None, "A woman wearing a net on her head cutting a cake.")],
            "000000522418.jpg",
            {"image_id": 522418, "caption_id": 772},
        ),
        (
            "caption",
            [Turn(None, "Man riding a motor bike on a dirt road on the countryside.")],
            "000000391895.jpg",
            {"image_id": 391895, "caption_id": 771687},
        ),
    ]


def test_textcaps_uses_textvqa_file_names():
    examples = list(load_examples("textcaps_caption", FIXTURES / "textcaps" / "TextCaps_0.1_train.json"))
    assert examples == [
        TaskExample(
            "caption",
            [Turn(None, "The car is parked in front of a store called Joe's.")],
            "011e7e629fb9ae7b.jpg",
            "textcaps_caption",
            {"image_id": "011e7e629fb9ae7b", "caption_id": 5},
        ),
        TaskExample(
            "caption",
            [Turn(None, "A bottle of Coca-Cola sits on a table.")],
            "0254d9d7c47e9226.jpg",
            "textcaps_caption",
            {"image_id": "0254d9d7c47e9226", "caption_id": 9},
        ),
    ]


def test_missing_caption_names_file_record_and_key(write_json):
    path = write_json(
        "filter_cap.json", {"annotations": [{"image_id": "1", "caption": "ok"}, {"image_id": "7"}]}
    )
    with pytest.raises(FormatError) as err:
        list(load_examples("cc_sbu_align", path))
    assert str(err.value) == f"{path}: annotations[1] has no 'caption'"


def test_empty_caption_is_malformed(write_json):
    path = write_json("filter_cap.json", {"annotations": [{"image_id": "1", "caption": "  "}]})
    with pytest.raises(FormatError, match=r"annotations\[0\] key 'caption' is empty"):
        load_examples("cc_sbu_align", path)


def test_caption_of_unknown_image_is_malformed(write_json):
    path = write_json(
        "captions.json",
        {
            "images": [{"id": 1, "file_name": "1.jpg"}],
            "annotations": [{"image_id": 2, "id": 5, "caption": "x"}],
        },
    )
    with pytest.raises(FormatError, match=r"annotations\[0\] refers to image_id 2, absent from 'images'"):
        load_examples("coco_caption", path)


def test_wrong_top_level_names_what_was_expected(write_json):
    path = write_json("TextCaps_0.1_train.json", [{"caption_str": "a"}])
    with pytest.raises(FormatError, match="top level is list; expected an object with 'data'"):
        load_examples("textcaps_caption", path)
