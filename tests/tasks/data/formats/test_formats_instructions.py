"""LLaVA-style conversations (and MiniGPT-v2's multitask_conversation) and Unnatural Instructions."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats import FormatError, load_examples

FIXTURES = Path(__file__).parent / "fixtures"
LLAVA = FIXTURES / "llava"


def test_llava_conversation_multi_turn_with_image_marker_stripped():
    assert list(load_examples("llava_conversation", LLAVA / "conversation_58k.json")) == [
        TaskExample(
            "conversation",
            [
                Turn(
                    "What are the colors of the bus in the image?", "The bus in the image is white and red."
                ),
                Turn(
                    "What feature can be seen on the back of the bus?",
                    "The back of the bus features an advertisement.",
                ),
            ],
            "000000033471.jpg",
            "llava_conversation",
            {"id": "000000033471"},
        ),
        TaskExample(
            "conversation",
            [
                Turn(
                    "Where is the cat positioned in the image?",
                    "The cat is positioned on top of the back of the couch.",
                )
            ],
            "000000052846.jpg",
            "llava_conversation",
            {"id": "000000052846"},
        ),
    ]


def test_llava_detail_keeps_or_drops_the_question():
    path = LLAVA / "detail_23k.json"
    answer = "The image shows a group of people flying kites on a beach."
    (kept,) = load_examples("llava_detail", path)
    assert (kept.task, kept.turns) == (
        "detailed_description",
        [Turn("What do you see happening in this image?", answer)],
    )
    (dropped,) = load_examples("llava_detail", path, keep_question=False)
    assert dropped.turns == [Turn(None, answer)]


def test_llava_detail_rejects_multi_turn_records():
    with pytest.raises(
        FormatError, match=r"record 0 \(id 000000033471\) has 2 exchanges; a description has one"
    ):
        load_examples("llava_detail", LLAVA / "conversation_58k.json")


def test_llava_reason_is_a_single_turn_conversation():
    (example,) = load_examples("llava_reason", LLAVA / "complex_reasoning_77k.json")
    assert example == TaskExample(
        "conversation",
        [
            Turn(
                "What challenges do these people face?",
                "They are crossing a snowy field, which takes effort.",
            )
        ],
        "000000442786.jpg",
        "llava_reason",
        {"id": "000000442786"},
    )


def test_multitask_conversation_without_image_key_uses_coco2014_name():
    (example,) = load_examples("multitask_conversation", LLAVA / "multitask_conversation.json")
    assert example.image == "COCO_train2014_000000139.jpg"
    assert example.turns == [Turn("[refer] the red chair", "{<10><20><30><40>}")]


def test_llava_roles_must_alternate(write_json):
    record = {
        "id": "1",
        "image": "1.jpg",
        "conversations": [{"from": "gpt", "value": "hi"}, {"from": "human", "value": "x"}],
    }
    path = write_json("llava.json", [record])
    with pytest.raises(
        FormatError, match=r"record 0 \(id 1\) conversations\[0\] is from 'gpt'; expected 'human'"
    ):
        load_examples("llava_conversation", path)


def test_llava_odd_message_count(write_json):
    record = {"id": "1", "image": "1.jpg", "conversations": [{"from": "human", "value": "<image>\nhi"}]}
    path = write_json("llava.json", [record])
    with pytest.raises(FormatError, match=r"has 1 messages; expected human/gpt pairs"):
        load_examples("llava_conversation", path)


def test_llava_message_without_value(write_json):
    conversations = [{"from": "human", "value": "q"}, {"from": "gpt"}]
    path = write_json("llava.json", [{"id": "5", "image": "5.jpg", "conversations": conversations}])
    with pytest.raises(FormatError, match=r"record 0 \(id 5\) conversations\[1\] has no 'value'"):
        load_examples("llava_conversation", path)


def test_unnatural_instructions_text_only_with_constraints():
    examples = list(load_examples("unnatural_instruction", FIXTURES / "unnatural" / "core_data.jsonl"))
    assert [(e.task, e.image, e.turns) for e in examples] == [
        (
            "text_instruction",
            None,
            [
                Turn(
                    "You are given a list of words. Sort them alphabetically.\nWords: pear, apple, fig "
                    "Separate the words with commas.",
                    "apple, fig, pear",
                )
            ],
        ),
        # "None." is the data's way of saying there are no constraints
        ("text_instruction", None, [Turn("Answer the question with Yes or No.\nIs the sun a star?", "Yes")]),
        ("text_instruction", None, [Turn("Answer the question with Yes or No.\nIs ice hot?", "No")]),
    ]
    assert not any(e.has_image for e in examples)
    assert examples[0].meta == {"instruction": "You are given a list of words. Sort them alphabetically."}


def test_unnatural_instructions_json_list_copy(write_json):
    instance = {"instruction_with_input": "Say hi.", "input": "", "constraints": None, "output": "hi"}
    path = write_json("unnatural_instruction.json", [{"instruction": "Say hi.", "instances": [instance]}])
    (example,) = load_examples("unnatural_instruction", path)
    assert example.turns == [Turn("Say hi.", "hi")]


def test_unnatural_instructions_bad_line(write_json):
    path = write_json("core_data.jsonl", '{"instruction": "a", "instances": []}\n{"instruction": \n')
    with pytest.raises(FormatError, match=r"core_data.jsonl: line 2 is not valid JSON"):
        list(load_examples("unnatural_instruction", path))


def test_unnatural_instance_without_output(write_json):
    path = write_json(
        "core_data.jsonl", '{"instruction": "a", "instances": [{"instruction_with_input": "a"}]}\n'
    )
    with pytest.raises(FormatError, match=r"line 1 instances\[0\] has no 'output'"):
        load_examples("unnatural_instruction", path)
