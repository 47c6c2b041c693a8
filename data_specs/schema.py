"""JSON Schemas of the spec files, generated from the typed models, so an editor can check a spec
as it is typed (e.g. `# yaml-language-server: $schema=../schema/stage.schema.json`)."""

from __future__ import annotations

import json
from pathlib import Path

from data_specs.pipelines import PipelineSpec
from data_specs.sources import SourceSpec
from data_specs.stages import StageSpec

MODELS = {"pipeline": PipelineSpec, "stage": StageSpec, "source": SourceSpec}


def schema_of(kind: str) -> dict:
    schema = MODELS[kind].model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = f"vlmpipe {kind} spec"
    return schema


def write_schemas(out_dir: Path) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind in MODELS:
        path = out_dir / f"{kind}.schema.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(schema_of(kind), indent=2, sort_keys=True) + "\n")
        tmp.replace(path)
        paths.append(path)
    return paths
