"""Load YAML spec files into typed models, turning every failure into one readable line.

A data engineer who gets a spec wrong sees `FILE: field.path: what was expected`, never a
traceback; the CLI maps `SpecError` to exit status 2.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors (a typo must not pass silently)."""

    model_config = ConfigDict(extra="forbid", validate_default=True)


class SpecError(ValueError):
    """A spec file that cannot be used; `str()` is the one line shown to the user."""

    def __init__(self, path: str | Path, field: str, message: str):
        self.path, self.field, self.message = str(path), field, message
        where = f"{self.path}: {field}: " if field else f"{self.path}: "
        super().__init__(where + message)


def _field_path(loc: tuple) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            # pydantic puts the tag of a discriminated union in loc; it is not a field name
            if parts and str(item) in {"function-after", "function-before", "function-wrap"}:
                continue
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def _describe(err: dict) -> str:
    kind, msg = err["type"], err["msg"]
    given = err.get("input")
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field (check its spelling)"
    if kind == "value_error":  # our validators' messages already say what was expected
        return msg.removeprefix("Value error, ")
    shown = repr(given)
    if len(shown) > 60:
        shown = shown[:57] + "..."
    return f"{msg[0].lower() + msg[1:]} (got {shown})"


def read_yaml(path: str | Path) -> dict:
    """Read a YAML mapping, raising SpecError for a missing file, bad syntax or a non-mapping."""
    path = Path(path)
    if not path.is_file():
        raise SpecError(path, "", "no such spec file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(path, "", f"YAML syntax error at {line}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(path, "", f"not readable as YAML: {exc}") from None
    if not isinstance(data, dict):
        raise SpecError(path, "", f"expected a mapping of fields at the top, got {type(data).__name__}")
    return data


def parse_spec(model: type[M], data: dict, path: str | Path, context: dict | None = None) -> M:
    """Validate `data` against `model`; the first error becomes a SpecError naming file and field."""
    try:
        return model.model_validate(data, context={"spec_path": Path(path), **(context or {})})
    except ValidationError as exc:
        errors = exc.errors()
        # a misspelt field also shows up as a missing one: report the misspelling, it is the cause
        errors.sort(key=lambda e: e["type"] != "extra_forbidden")
        err = errors[0]
        message = _describe(err)
        if err["type"] == "extra_forbidden":
            missing = [
                str(e["loc"][-1])
                for e in errors
                if e["type"] == "missing" and tuple(e["loc"][:-1]) == tuple(err["loc"][:-1])
            ]
            close = difflib.get_close_matches(str(err["loc"][-1]), missing, n=1)
            if close:
                message = f"unknown field (did you mean {close[0]!r}?)"
        more = len(errors) - 1
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        raise SpecError(path, _field_path(err["loc"]), message + suffix) from None


def load_spec(model: type[M], path: str | Path) -> M:
    """Read and validate one spec file."""
    return parse_spec(model, read_yaml(path), path)
