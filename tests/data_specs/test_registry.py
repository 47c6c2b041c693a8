"""Each registry in data_specs/registry.py has exactly one implementation per name, and a spec
field typed by a registry tells the known names (in its one-line error and its JSON Schema)."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ValidationError

from data_specs.registry import (
    BENCHMARKS,
    CONTRASTIVE_LOSSES,
    DATASET_FORMATS,
    PRESETS,
    SOURCE_KINDS,
    TASK_TYPES,
    TEMPLATES,
    Name,
)
from data_specs.schema import schema_of


def test_every_task_type_has_an_instruction_pool_and_its_identifier_is_prefixed():
    from tasks.data.examples import TaskExample, Turn
    from tasks.data.templates import DEFAULT_INSTRUCTIONS, render

    assert set(DEFAULT_INSTRUCTIONS) == set(TASK_TYPES)
    for name, task in TASK_TYPES.items():
        example = TaskExample(name, [Turn("q", "a")], image="k")
        prompt = render(example, "human_assistant", end_sym="###", instructions=["{}"])[0].text
        assert (task.identifier in prompt) if task.identifier else "[" not in prompt, name


@pytest.mark.parametrize("template", sorted(TEMPLATES))
def test_every_template_renders(template):
    from tasks.data.examples import TaskExample, Turn
    from tasks.data.templates import render

    segments = render(
        TaskExample("caption", [Turn(None, "a red circle")], image="k"), template, end_sym="###"
    )
    assert segments[-1].is_answer and segments[-1].text == "a red circle###"


def test_every_contrastive_loss_and_benchmark_has_an_implementation():
    from tasks.evaluate.benchmarks import RUNNERS
    from tasks.train.stage import CONTRASTIVE_LOSSES as LOSS_FUNCTIONS

    assert set(LOSS_FUNCTIONS) == set(CONTRASTIVE_LOSSES)
    assert set(RUNNERS) == set(BENCHMARKS)
    for benchmark in BENCHMARKS.values():
        assert set(benchmark.tasks) <= set(TASK_TYPES)


def test_every_dataset_format_and_source_kind_has_a_reader(tmp_path):
    from tasks.data.formats import READERS
    from tasks.ingest.convert import source_rows

    assert {f.reader for f in DATASET_FORMATS.values()} == set(READERS)
    for kind in SOURCE_KINDS:
        if kind != "shapes_world":  # generated, not converted
            source_rows(kind, tmp_path / "missing", input_format="csv")  # a lazy iterator: no error


def test_a_name_field_lists_the_known_names_and_carries_an_enum():
    class Spec(BaseModel):
        preset: Name(PRESETS, "model preset")  # type: ignore[valid-type]

    with pytest.raises(ValidationError) as err:
        Spec(preset="phi2")
    assert (
        "unknown model preset 'phi2'; known model presets: tiny, tiny-merge, tinygptv-phi1_5, tinygptv-phi2, tinygptv-phi2-merge"
        in str(err.value)
    )
    assert Spec.model_json_schema()["properties"]["preset"]["enum"] == sorted(PRESETS)
    stage = schema_of("stage")
    task = stage["$defs"]["MixtureDataset"]["properties"]["task"]
    assert task["enum"] == sorted(TASK_TYPES)
