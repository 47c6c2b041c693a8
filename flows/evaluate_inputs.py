"""What `vlmpipe evaluate` checks before Prefect, torch or a model start: which model made the
checkpoint, and that every benchmark's release is readable (one line naming the file otherwise)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class EvaluateError(ValueError):
    """A usage error of `vlmpipe evaluate`; `str()` is one line."""


def model_config(checkpoint: str | Path, pipeline_spec: str | Path | None) -> dict[str, Any]:
    """The model block and the last stage's template of the pipeline that made `checkpoint`: from
    `pipeline_spec`, else from the run folder's resolved_config.json above the checkpoint."""
    if pipeline_spec is not None:
        from data_specs.pipelines import load_pipeline

        rp = load_pipeline(pipeline_spec, check_files=False)
        model, last = rp.spec.model.model_dump(mode="json"), rp.stages[-1].model_dump(mode="json")
    else:
        for folder in list(Path(checkpoint).resolve().parents)[:5]:
            config = folder / "resolved_config.json"
            if config.is_file():
                data = json.loads(config.read_text())
                model, last = data["pipeline"]["model"], data["stages"][-1]
                break
        else:
            raise EvaluateError(
                f"{checkpoint}: no resolved_config.json in the run folders above it; "
                "pass --pipeline SPEC (the pipeline spec that trained it)"
            )
    template = last["template"] if last["template"] != "image_text" else "human_assistant"
    return {"model": model, "template": template, "end_sym": last.get("end_sym", "###")}


def check_data(benchmarks: list[str], data_root: str | Path, asks: dict[str, dict[str, Any]]) -> None:
    """Every release is readable before a model is loaded (BenchmarkDataError, one line, otherwise)."""
    from tasks.evaluate.official.roots import read_items

    for name in benchmarks:
        read_items(name, data_root, (asks.get(name) or {}).get("split"), 1)
