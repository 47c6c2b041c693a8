"""LLaVA-Instruct (and MiniGPT-v2's multitask_conversation, same layout) -> conversation or
detailed_description.

Format as published: llava_instruct_150k.json, conversation_58k.json, detail_23k.json,
complex_reasoning_77k.json = [{"id", "image": "<COCO id>.jpg", "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": ...}, ...]}], human and gpt alternating. Images are COCO
train2017 file names (image_root: coco/train2017); a record without "image" (multitask_conversation) is
COCO_train2014_<id>.jpg as MiniGPT-v2 reads it. The `<image>` marker is removed: the template places
the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from tasks.data.examples import TaskExample, Turn
from tasks.data.formats._common import FormatError, field, read_json, strip_image_marker, text_field

EXPECTED = 'LLaVA json: [{"id", "image", "conversations": [{"from": "human"|"gpt", "value"}]}]'
ROLES = ("human", "gpt")


def conversation_turns(conversations: list, path: Path, where: str) -> list[Turn]:
    """Alternating human/gpt messages -> Turns, the image marker stripped from the questions."""
    if not conversations or len(conversations) % 2:
        raise FormatError(f"{path}: {where} has {len(conversations)} messages; expected human/gpt pairs")
    turns = []
    for k in range(0, len(conversations), 2):
        texts = []
        for offset, role in enumerate(ROLES):
            message = conversations[k + offset]
            at = f"{where} conversations[{k + offset}]"
            if field(message, "from", path, at, str) != role:
                raise FormatError(f"{path}: {at} is from {message['from']!r}; expected {role!r}")
            texts.append(strip_image_marker(text_field(message, "value", path, at)))
        if not texts[0]:
            raise FormatError(f"{path}: {where} conversations[{k}] holds only the image marker")
        turns.append(Turn(texts[0], texts[1]))
    return turns


def load_llava(
    annotations: Path,
    image_root: Path | None,
    *,
    dataset: str,
    task: str = "conversation",
    keep_question: bool = True,
) -> Iterator[TaskExample]:
    """task="detailed_description" needs single-exchange records (detail_23k); keep_question=False drops
    LLaVA's question there so the template's own instruction pool asks instead."""
    if task not in ("conversation", "detailed_description"):
        raise FormatError(
            f"{annotations}: task {task!r} not produced from LLaVA; expected conversation or detailed_description"
        )
    data = read_json(annotations, EXPECTED)
    if not isinstance(data, list):
        raise FormatError(f"{annotations}: top level is {type(data).__name__}; expected {EXPECTED}")
    for i, record in enumerate(data):
        record_id = text_field(record, "id", annotations, f"record {i}")
        where = f"record {i} (id {record_id})"
        turns = conversation_turns(
            field(record, "conversations", annotations, where, list), annotations, where
        )
        if task == "detailed_description":
            if len(turns) != 1:
                raise FormatError(f"{annotations}: {where} has {len(turns)} exchanges; a description has one")
            if not keep_question:
                turns = [Turn(None, turns[0].answer)]
        image = (
            text_field(record, "image", annotations, where)
            if "image" in record
            else f"COCO_train2014_{record_id}.jpg"
        )
        yield TaskExample(task=task, turns=turns, image=image, dataset=dataset, meta={"id": record_id})
