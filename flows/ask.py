"""Asking a trained model: `vlmpipe chat`, `vlmpipe generate` and `vlmpipe export` share this.

A model comes from a stage checkpoint (with the pipeline spec that trained it, or the run folder's
record above it) or from a merged export (`vlmpipe export`); its language model can be put in bf16,
8-bit or 4-bit. Prompts go through the template registry the last stage trained with
(tasks/evaluate/generation.py), so a question is asked exactly as in training and evaluation.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from model.export import MANIFEST as EXPORT_MANIFEST

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
MAX_IMAGE_PIXELS = 89_478_485  # PIL's own limit: a bigger image is refused from its header


class AskError(ValueError):
    """A usage error of chat / generate / export; `str()` is one line naming the file and field."""


@dataclass
class Asker:
    built: Any  # model.build.BuiltModel
    template: str
    end_sym: str
    precision: str

    def answer(
        self,
        requests: list[tuple[str, str, Any]],
        *,
        max_new_tokens: int = 64,
        temperature: float = 0.0,
        top_p: float = 1.0,
        batch_size: int = 16,
    ) -> list[str]:
        """Answers for (task, prompt, PIL image or None) triples."""
        from tasks.data.examples import TaskExample, Turn
        from tasks.evaluate.generation import generate_answers

        items = [
            (TaskExample(task, [Turn(prompt, "")], image=None if image is None else "input"), image)
            for task, prompt, image in requests
        ]
        return generate_answers(
            self.built.model,
            self.built.tokenizer,
            self.built.preprocess,
            items,
            template=self.template,
            end_sym=self.end_sym,
            num_query_tokens=self.built.preset.num_query_tokens,
            max_new_tokens=max_new_tokens,
            batch_size=batch_size,
            instructions=["{}"],  # the prompt is asked as written, after the task's identifier
            temperature=temperature,
            top_p=top_p,
        )


def load_asker(
    path: str | Path, pipeline_spec: str | Path | None, precision: str = "fp32", towers: str = "fp32"
) -> Asker:
    """A model ready to answer, from a stage checkpoint or a merged export; the LM in `precision`,
    the towers in `towers` (model/inference.py set_precision)."""

    from model.inference import PRECISIONS, TOWER_PRECISIONS, set_precision

    if precision not in PRECISIONS:
        raise AskError(f"--precision {precision!r}: choose one of {', '.join(PRECISIONS)}")
    if towers not in TOWER_PRECISIONS:
        raise AskError(f"--towers {towers!r}: choose one of {', '.join(TOWER_PRECISIONS)}")
    path = Path(path)
    if (path / EXPORT_MANIFEST).is_file():
        from model.export import ExportError, load_merged

        try:
            built, manifest = load_merged(path)
        except ExportError as exc:
            raise AskError(str(exc)) from None
        template, end_sym = manifest["template"], manifest["end_sym"]
    else:
        from flows.evaluate_inputs import EvaluateError, model_config
        from model.build import build_model, model_choice
        from model.checkpoint import CheckpointError, verify_checkpoint

        try:
            verify_checkpoint(path, digests=False)
        except (CheckpointError, OSError, ValueError) as exc:
            raise AskError(
                f"{path}: neither a vlmpipe checkpoint nor a merged export ({' '.join(str(exc).split())})"
            ) from None
        try:
            config = model_config(path, pipeline_spec)
        except EvaluateError as exc:
            raise AskError(str(exc)) from None
        spec = config["model"]
        choice = model_choice(spec)
        built, _ = build_model(choice, init_checkpoint=path, log=lambda _m: None)
        template, end_sym = config["template"], config["end_sym"]
    set_precision(built.model, precision, towers=towers)
    return Asker(built, template, end_sym, precision)


def open_image(path: str | Path, where: str) -> Any:
    """An RGB PIL image, or AskError naming `where` (the file, or the JSONL line and field)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as opened:
            width, height = opened.size
            if width * height > MAX_IMAGE_PIXELS:
                raise AskError(
                    f"{where}: image larger than {MAX_IMAGE_PIXELS} pixels ({width} x {height}); refused"
                )
            return opened.convert("RGB")
    except FileNotFoundError:
        raise AskError(f"{where}: no such file {path}") from None
    except Image.DecompressionBombError:  # PIL's own check, from the header: nothing was decoded
        raise AskError(f"{where}: image larger than {MAX_IMAGE_PIXELS} pixels; refused") from None
    except (UnidentifiedImageError, OSError) as exc:
        raise AskError(f"{where}: not a readable image {path} ({' '.join(str(exc).split())})") from None


def default_task(image: Any) -> str:
    """Free text: `conversation` with an image, `text_instruction` without one."""
    return "conversation" if image is not None else "text_instruction"


def check_task(task: str, where: str) -> str:
    from tasks.data.examples import TASK_IDENTIFIERS

    if task not in TASK_IDENTIFIERS:
        raise AskError(f"{where}: unknown task {task!r}; known: {', '.join(TASK_IDENTIFIERS)}")
    return task


def read_requests(source: str | Path, prompt: str | None, task: str | None) -> list[dict[str, Any]]:
    """Requests from a folder of images (each asked `prompt`) or a JSONL file whose lines are
    {"image": path (relative to the file; optional), "prompt": text, "task": name (optional),
    "id": anything (optional)}. Every problem is an AskError naming the file, line and field."""
    source = Path(source)
    requests: list[dict[str, Any]] = []
    if source.is_dir():
        if not prompt:
            raise AskError(f"--prompt: required when the input is a folder of images ({source})")
        files = sorted(p for p in source.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise AskError(f"{source}: no image files ({', '.join(IMAGE_SUFFIXES)})")
        for path in files:
            image = open_image(path, str(path))
            requests.append(
                {
                    "id": path.name,
                    "image": str(path),
                    "prompt": prompt,
                    "task": check_task(task or default_task(image), "--task"),
                    "_image": image,
                }
            )
        return requests
    try:
        lines = source.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise AskError(f"--input: no such file or folder {source}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise AskError(f"{source}: unreadable ({' '.join(str(exc).split())})") from None
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise AskError(f"{where}: not JSON ({exc.msg})") from None
        if not isinstance(row, dict):
            raise AskError(f"{where}: a line must be a JSON object")
        text = row.get("prompt", prompt)
        if not isinstance(text, str) or not text.strip():
            raise AskError(f"{where}: field prompt must be a non-empty string")
        image = None
        if row.get("image") is not None:
            if not isinstance(row["image"], str):
                raise AskError(f"{where}: field image must be a path (a string)")
            image_path = (source.parent / row["image"]).resolve()
            image = open_image(image_path, f"{where}: field image")
        name = row.get("task", task) or default_task(image)
        if not isinstance(name, str):
            raise AskError(f"{where}: field task must be a string")
        requests.append(
            {
                "id": row.get("id", number),
                "image": row.get("image"),
                "prompt": text,
                "task": check_task(name, f"{where}: field task"),
                "_image": image,
            }
        )
    if not requests:
        raise AskError(f"{source}: no requests (an empty file)")
    return requests


def write_jsonl(rows: list[dict[str, Any]], out: str | Path) -> Path:
    """Write rows atomically: a hidden file beside `out`, renamed into place when complete."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            for row in rows:
                handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out
