"""The template registry: identifiers, answer-only segments, prompts for generation."""

import random

import pytest

from tasks.data.boxes import format_box, iou, parse_boxes
from tasks.data.examples import TaskExample, Turn
from tasks.data.templates import Segment, clean_answer, render


def prompt_text(segments: list[Segment]) -> str:
    return "".join(s.text for s in segments)


def test_stage1_pairs_have_no_prompt_and_the_caption_is_the_answer():
    ex = TaskExample("image_text", [Turn(None, "a red circle")], image="k")
    segs = render(ex, "image_text", end_sym="\n")
    assert [(s.text, s.is_answer) for s in segs] == [
        ("<Img><ImageHere></Img> ", False),
        ("a red circle\n", True),
    ]


def test_vqa_gets_its_identifier_and_the_human_assistant_frame():
    ex = TaskExample("vqa", [Turn("what colour is the square?", "blue")], image="k")
    segs = render(ex, "human_assistant", end_sym="###", instructions=["{}"])
    assert segs[0].text == "###Human: <Img><ImageHere></Img> [vqa] what colour is the square? ###Assistant: "
    assert segs[1].text == "blue###" and segs[1].is_answer


def test_merged_questions_put_the_vqa_identifier_on_every_turn_as_a_single_question_has_it():
    turns = [Turn("is there a red circle?", "yes"), Turn("is there a blue square?", "no")]
    segs = render(
        TaskExample("vqa_turns", turns, image="k"), "human_assistant", end_sym="###", instructions=["{}"]
    )
    assert [s.text for s in segs] == [
        "###Human: <Img><ImageHere></Img> [vqa] is there a red circle? ###Assistant: ",
        "yes###",
        "Human: [vqa] is there a blue square? ###Assistant: ",
        "no###",
    ]
    assert [s.is_answer for s in segs] == [False, True, False, True]
    single = render(
        TaskExample("vqa", turns[:1], image="k"), "human_assistant", end_sym="###", instructions=["{}"]
    )
    assert [s.text for s in single] == [s.text for s in segs[:2]]  # the first turn is a plain question


def test_generation_prompt_is_the_training_prompt_without_the_answer():
    ex = TaskExample("refer", [Turn("the red circle", format_box((10, 20, 30, 40)))], image="k")
    train = render(ex, "human_assistant", end_sym="###", rng=random.Random(7))
    gen = render(ex, "human_assistant", end_sym="###", rng=random.Random(7), with_answer=False)
    assert prompt_text(gen) == train[0].text
    assert train[1].text == "{<10><20><30><40>}###"


def test_multi_turn_conversation_marks_every_answer_and_does_not_double_the_separator():
    ex = TaskExample("conversation", [Turn("q1", "a1"), Turn("q2", "a2")], image="k")
    segs = render(ex, "human_assistant", end_sym="###")
    assert [s.is_answer for s in segs] == [False, True, False, True]
    assert "######" not in prompt_text(segs)
    assert prompt_text(render(ex, "human_assistant", end_sym="###", with_answer=False)).endswith(
        "q2 ###Assistant: "
    )


def test_text_only_instruction_has_no_image_block():
    ex = TaskExample("text_instruction", [Turn("say hi", "hi")])
    assert "<Img>" not in prompt_text(render(ex, "human_assistant", end_sym="###"))


def test_slot_without_query_is_an_error_and_unknown_template_too():
    ex = TaskExample("caption", [Turn(None, "x")], image="k")
    with pytest.raises(ValueError, match="slot"):
        render(ex, "human_assistant", end_sym="###", instructions=["describe {}"])
    with pytest.raises(ValueError, match="unknown template"):
        render(ex, "chatml", end_sym="###")


def test_boxes_round_trip_and_iou():
    text = "the box is {< 1><2><99>< 100>} and {<5><5><6><6>}"
    assert parse_boxes(text) == [(1, 2, 99, 100), (5, 5, 6, 6)]
    assert iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)
    assert clean_answer(" blue###Human: more", "###") == "blue"
    with pytest.raises(ValueError):
        format_box((0, 0, 101, 5))
