"""Load YAML spec files into typed models, turning every failure into one readable line.

A data engineer who gets a spec wrong sees `FILE: field.path: what was expected`, never a
traceback; the CLI maps `SpecError` to exit status 2.
"""

from __future__ import annotations

import difflib
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator

M = TypeVar("M", bound=BaseModel)

# Seeds reach Python's, torch's and numpy's generators: numpy takes 0 <= seed < 2**32.
Seed = Annotated[int, Field(ge=0, lt=2**32, description="Seed (0 <= seed < 2**32).")]

MAX_SPEC_BYTES = 1 << 20  # a spec is a page of YAML; anything near this is not one
MAX_SPEC_DEPTH = 32  # nesting levels a spec may use (the deepest shipped one uses 4)


def _numeric_only(annotation: Any) -> bool:
    """True for int / float fields (optionally None), not bool ones."""
    if annotation in (int, float):
        return True
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return bool(args) and all(a in (int, float) for a in args)
    return False


class SpecModel(BaseModel):
    """Base of every spec model: unknown fields are errors (a typo must not pass silently), numbers
    are finite (`.inf` and `.nan` are refused) and a number field does not take true/false."""

    model_config = ConfigDict(extra="forbid", validate_default=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        if isinstance(value, bool) and info.field_name is not None:
            field = cls.model_fields.get(info.field_name)
            if field is not None and _numeric_only(field.annotation):
                raise ValueError(f"expected a number, got {str(value).lower()}")
        return value


class _UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a key given twice in one mapping (the later one would win)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            mark = key_node.start_mark
            raise yaml.constructor.ConstructorError(
                None, None, f"key {key!r} appears twice (line {seen[key]} and line {mark.line + 1})", mark
            )
        seen[key] = key_node.start_mark.line + 1
    return yaml.SafeLoader.construct_mapping(loader, node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def _depth(value: Any, limit: int) -> int:
    """Nesting depth of parsed YAML, stopping once past `limit`."""
    stack, deepest = [(value, 1)], 0
    while stack:
        item, depth = stack.pop()
        deepest = max(deepest, depth)
        if deepest > limit:
            return deepest
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((child, depth + 1) for child in children)
    return deepest


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
        size = path.stat().st_size
        if size > MAX_SPEC_BYTES:
            raise SpecError(path, "", f"{size} bytes: larger than a spec can be ({MAX_SPEC_BYTES} bytes)")
        data = yaml.load(path.read_text(encoding="utf-8"), Loader=_UniqueKeyLoader)  # noqa: S506 (safe)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "?"
        raise SpecError(path, "", f"YAML syntax error at {line}: {exc.problem}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SpecError(path, "", f"not readable as YAML: {' '.join(str(exc).split())}") from None
    except RecursionError:
        raise SpecError(path, "", f"nested deeper than a spec can be ({MAX_SPEC_DEPTH} levels)") from None
    except OSError as exc:
        raise SpecError(path, "", f"cannot read the file ({exc.strerror or exc})") from None
    if _depth(data, MAX_SPEC_DEPTH) > MAX_SPEC_DEPTH:
        raise SpecError(path, "", f"nested deeper than a spec can be ({MAX_SPEC_DEPTH} levels)")
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
