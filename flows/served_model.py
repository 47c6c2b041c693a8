"""The registered model as an MLflow pyfunc: an image and a prompt in, the model's answer out.

MLflow stores this file beside the model (a model "from code", not a pickle) and runs it when the
model is loaded, in an environment where vlmpipe is installed:

    model = mlflow.pyfunc.load_model("models:/vlmpipe-shapes-tiny@champion")
    model.predict(pandas.DataFrame({"image": [png_bytes], "prompt": ["what colour is the square?"],
                                    "task": ["vqa"]}))          # -> ["red"]

`task` (optional) picks the task identifier the prompt is asked with (`[vqa]`, `[refer]`, ...; none
for free text), the prompt is rendered by the template the last stage trained with
(tasks/data/templates.py), and generation is greedy up to the template's end symbol.
"""

from __future__ import annotations

import base64
import io
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

DEFAULT_MAX_NEW_TOKENS = 40


def signature() -> Any:
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema(
            [
                ColSpec("binary", "image"),
                ColSpec("string", "prompt"),
                ColSpec("string", "task", required=False),
            ]
        ),
        outputs=Schema([ColSpec("string")]),
        params=ParamSchema([ParamSpec("max_new_tokens", "long", DEFAULT_MAX_NEW_TOKENS)]),
    )


class VlmpipeModel(PythonModel):
    """Loads a stage checkpoint (context.artifacts["checkpoint"]) into the pipeline's model."""

    # the input is checked against the logged signature, not against predict's type hints
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        from model.build import build_model, model_choice

        config = context.model_config
        spec = config["model"]
        choice = model_choice(spec)
        self.built, _ = build_model(
            choice,
            image_size=config.get("image_size"),
            init_checkpoint=context.artifacts["checkpoint"],
            log=lambda _message: None,
        )
        self.built.model.eval()
        self.template = config["template"]
        self.end_sym = config["end_sym"]

    def predict(self, context, model_input, params=None):  # noqa: ANN001 (MLflow reads type hints as a schema)
        from PIL import Image

        from flows.ask import Asker
        from tasks.data.examples import TASK_IDENTIFIERS

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else list(model_input)
        items = []
        for i, row in enumerate(rows):
            data = row.get("image")
            if isinstance(data, str):  # JSON clients send bytes as base64
                data = base64.b64decode(data)
            if not isinstance(data, bytes | bytearray):
                raise ValueError(f"row {i}: `image` must be the bytes of an image file")
            task = row.get("task") or "conversation"
            if task not in TASK_IDENTIFIERS:
                raise ValueError(f"row {i}: unknown task {task!r}; known: {', '.join(TASK_IDENTIFIERS)}")
            with Image.open(io.BytesIO(bytes(data))) as opened:
                image = opened.convert("RGB")
            items.append((task, str(row.get("prompt") or ""), image))
        max_new = int((params or {}).get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS))
        asker = Asker(self.built, self.template, self.end_sym, "fp32")
        return asker.answer(
            items,
            max_new_tokens=max_new,
            batch_size=16,
        )


mlflow.models.set_model(VlmpipeModel())
