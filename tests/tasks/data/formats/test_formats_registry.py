"""The dataset-format registry and `load_examples`: names, options, eager errors, determinism."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.examples import TASKS
from tasks.data.formats import FORMATS, READERS, FormatError, format_options, load_examples

FIXTURES = Path(__file__).parent / "fixtures"

# One fixture per format; refcoco* need the pickle and an image, so they get their own folder below.
SIMPLE = {
    "cc_sbu_align": FIXTURES / "cc_sbu_align" / "filter_cap.json",
    "coco_caption": FIXTURES / "coco" / "captions_train2017.json",
    "coco_vqa": FIXTURES / "vqav2" / "v2_mscoco_train2014_annotations.json",
    "ok_vqa": FIXTURES / "okvqa" / "mscoco_train2014_annotations.json",
    "aok_vqa": FIXTURES / "aokvqa" / "aokvqa_v1p0_train.json",
    "gqa": FIXTURES / "gqa" / "train_balanced_questions.json",
    "ocr_vqa": FIXTURES / "ocrvqa" / "dataset.json",
    "textcaps_caption": FIXTURES / "textcaps" / "TextCaps_0.1_train.json",
    "refvg": FIXTURES / "vg" / "region_descriptions.json",
    "invrefvg": FIXTURES / "vg" / "region_descriptions.json",
    "llava_conversation": FIXTURES / "llava" / "conversation_58k.json",
    "llava_reason": FIXTURES / "llava" / "complex_reasoning_77k.json",
    "llava_instruct": FIXTURES / "llava" / "conversation_58k.json",
    "llava_detail": FIXTURES / "llava" / "detail_23k.json",
    "multitask_conversation": FIXTURES / "llava" / "multitask_conversation.json",
    "flickr_grounded_caption": FIXTURES / "flickr30k_entities",
    "flickr_CaptionToPhrase": FIXTURES / "flickr30k_entities",
    "flickr_ObjectToPhrase": FIXTURES / "flickr30k_entities",
    "unnatural_instruction": FIXTURES / "unnatural" / "core_data.jsonl",
}
REFCOCO = ("refcoco", "refcocop", "invrefcoco", "invrefcocop")  # refcocog reads refs(umd).p


def test_every_format_has_a_fixture():
    assert set(FORMATS) == set(SIMPLE) | set(REFCOCO) | {"refcocog", "invrefcocog"}


def test_stage4_mixture_names_all_have_a_format():
    stage4 = {
        "multitask_conversation", "llava_conversation", "unnatural_instruction", "refvg", "llava_detail",
        "llava_reason", "flickr_grounded_caption", "flickr_CaptionToPhrase", "flickr_ObjectToPhrase",
        "textcaps_caption", "refcoco", "refcocop", "refcocog", "invrefcoco", "invrefcocop", "invrefcocog",
        "coco_vqa", "ok_vqa", "aok_vqa", "gqa",
    }  # fmt: skip
    assert stage4 <= set(FORMATS)


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_format_yields_its_declared_tasks_deterministically(name):
    first = list(load_examples(name, SIMPLE[name]))
    assert first, name
    assert {e.task for e in first} <= set(FORMATS[name].tasks) <= set(TASKS)
    assert {e.dataset for e in first} == {name}
    assert first == list(load_examples(name, SIMPLE[name]))


@pytest.mark.parametrize("name", REFCOCO)
def test_refcoco_family_yields_declared_tasks(name, refcoco_dir, coco_images):
    examples = list(load_examples(name, refcoco_dir, coco_images))
    assert {e.task for e in examples} == set(FORMATS[name].tasks)


@pytest.mark.parametrize("name", sorted(SIMPLE))
def test_missing_annotations_raise_at_the_call(name, tmp_path):
    missing = tmp_path / "nothing-here.json"
    with pytest.raises(FormatError) as err:
        load_examples(name, missing)  # no iteration: the error comes before training would start
    message = str(err.value)
    assert str(missing) in message and "not found" in message and "\n" not in message


def test_invalid_json_names_file_and_position(write_json):
    path = write_json("filter_cap.json", '{"annotations": [')
    with pytest.raises(
        FormatError, match=r"filter_cap.json: not valid JSON \(Expecting value, line 1\); expected MiniGPT-4"
    ):
        load_examples("cc_sbu_align", path)


def test_unknown_format_lists_known_ones():
    with pytest.raises(
        FormatError, match="unknown dataset format 'laion'; known dataset formats: aok_vqa, cc_sbu_align"
    ):
        load_examples("laion", "x.json")


def test_unknown_option_lists_accepted_ones():
    with pytest.raises(FormatError, match="format gqa has no option 'split'; options: dataset, full_answer"):
        load_examples("gqa", SIMPLE["gqa"], split="train")


def test_none_option_means_the_default():
    assert len(list(load_examples("gqa", SIMPLE["gqa"], split=None))) == 2
    assert len(list(load_examples("ocr_vqa", SIMPLE["ocr_vqa"], split=None))) == 3  # default: train


def test_pinned_option_cannot_be_changed():
    with pytest.raises(FormatError, match="format invrefcoco fixes task='identify'; it cannot be set"):
        load_examples("invrefcoco", "refcoco", task="refer")


def test_format_options_show_defaults():
    assert format_options("refcocog") == {"dataset": "refcocog", "split": "train", "split_by": "umd"}
    assert format_options("refvg") == {"dataset": "refvg", "image_data": None, "max_region_area": 16384}
    assert FORMATS["refcocop"].tasks == ("refer",) and FORMATS["invrefcocop"].tasks == ("identify",)


def test_format_info_describes_files():
    for name, info in FORMATS.items():
        assert info.annotations and info.image_root, name


def test_every_format_has_a_reader_that_takes_its_options():
    for name, info in FORMATS.items():
        assert info.reader in READERS, name
        assert info.task in TASKS, name
        options = format_options(name)
        assert set(info.defaults) <= set(options), name
