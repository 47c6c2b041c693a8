"""One official benchmark on one model: read the release (tasks/evaluate/official), ask every item
through the shared template registry in batches, extract each answer the benchmark's way, score
with its official metric. Returns the metrics and a table of every prediction."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from PIL import Image

from model.build import BuiltModel
from tasks.data.examples import TaskExample, Turn
from tasks.evaluate.generation import generate_answers
from tasks.evaluate.official import BENCHMARKS, OfficialBenchmark
from tasks.evaluate.official.roots import benchmark_root, read_items  # noqa: F401 (re-exported)

CHUNK = 256  # items whose images are open at once


def run_benchmark(
    built: BuiltModel,
    name: str,
    items: list,
    *,
    prompt: str | None = None,
    task: str | None = None,
    max_new_tokens: int | None = None,
    template: str = "human_assistant",
    end_sym: str = "###",
    batch_size: int = 16,
    log: Callable[[str], None] = print,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    bench: OfficialBenchmark = BENCHMARKS[name]
    task = task or bench.task
    raw: list[str] = []
    prompts: list[str] = []
    for start in range(0, len(items), CHUNK):
        chunk = items[start : start + CHUNK]
        asked = []
        for item in chunk:
            text = bench.format_prompt(item, prompt)
            prompts.append(text)
            with Image.open(item.image) as opened:
                image = opened.convert("RGB")
            asked.append((TaskExample(task, [Turn(text, "")], image=str(item.image)), image))
        raw += generate_answers(
            built.model,
            built.tokenizer,
            built.preprocess,
            asked,
            template=template,
            end_sym=end_sym,
            num_query_tokens=built.preset.num_query_tokens,
            max_new_tokens=max_new_tokens or bench.max_new_tokens,
            batch_size=batch_size,
            instructions=["{}"],  # the benchmark's prompt is asked as it is
        )
        log(f"{name}: {min(start + CHUNK, len(items))}/{len(items)} items answered")
    predictions = [bench.extract(r, item, end_sym=end_sym) for r, item in zip(raw, items, strict=True)]
    metrics = bench.score(items, predictions)
    table = [
        {
            "id": str(item.id),
            "prompt": text,
            "gold": _short(item.answers),
            "raw": r,
            "prediction": _short(p),
        }
        for item, text, r, p in zip(items, prompts, raw, predictions, strict=True)
    ]
    return metrics, table


def _short(value: Any) -> str:
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= 300 else text[:297] + "..."
