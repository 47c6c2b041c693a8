"""Stage checkpoints: the trained parameter groups, the tokenizer and the resumable training state.

Nothing in a checkpoint can run code when loaded: weights and every tensor of the training state
(optimizer moments, RNG states) are safetensors, everything else JSON. The manifest
(`checkpoint.json`, written last) lists every file with its size and sha256; a checkpoint counts
as complete only when each file is there with its size, and loading verifies every digest, so a
flipped byte or a truncated file is refused with one line that names the file.

A save is atomic: everything is written and fsynced in a hidden sibling folder that is renamed into
place last, so a killed save never leaves a folder that `is_complete_checkpoint` accepts, and an
existing checkpoint of the same name survives any failure before the swap.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from .trainable import check_groups, group_state_dict

FORMAT = "vlmpipe-checkpoint"
VERSION = 2  # 2: every file's sha256 in the manifest; training state as safetensors + JSON
WEIGHTS = "weights.safetensors"
MANIFEST = "checkpoint.json"  # written last: its presence (and validity) marks a complete folder
TRAINING_STATE = "training_state.json"  # the state's structure and its non-tensor values
TRAINING_TENSORS = "training_state.safetensors"  # the state's tensors, referenced from the JSON
TOKENIZER_DIR = "tokenizer"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; `str()` is one line naming the file."""


# ---- training state without pickle ------------------------------------------------------------
# A state is a tree of dicts, lists, tuples, numbers, strings, None and tensors (what an optimizer's
# state_dict, torch's RNG state and our data positions hold). Tensors go to safetensors and are
# replaced in the JSON by {"__tensor__": key}; tuples and dicts with non-string keys are tagged so
# that they come back as they were.


def _encode_state(value: Any, tensors: dict[str, torch.Tensor], where: str) -> Any:
    if isinstance(value, torch.Tensor):
        key = f"t{len(tensors)}"
        tensors[key] = value.detach().to("cpu").contiguous().clone()
        return {"__tensor__": key}
    if isinstance(value, bool | int | float | str) or value is None:
        return value
    if isinstance(value, tuple):
        return {"__tuple__": [_encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode_state(v, tensors, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode_state(v, tensors, f"{where}.{k}") for k, v in value.items()}
        for k in value:
            if not isinstance(k, bool | int | float | str):
                raise TypeError(f"training state: key {k!r} at {where} is not a number or string")
        return {"__items__": [[k, _encode_state(v, tensors, f"{where}[{k!r}]")] for k, v in value.items()]}
    raise TypeError(
        f"training state: {type(value).__name__} at {where} cannot be saved "
        "(tensors, numbers, strings, lists, tuples and dicts only)"
    )


def _decode_state(value: Any, tensors: dict[str, torch.Tensor]) -> Any:
    if isinstance(value, list):
        return [_decode_state(v, tensors) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return tensors[value["__tensor__"]]
    if "__tuple__" in value:
        return tuple(_decode_state(v, tensors) for v in value["__tuple__"])
    if "__items__" in value:
        return {k: _decode_state(v, tensors) for k, v in value["__items__"]}
    return {k: _decode_state(v, tensors) for k, v in value.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _file_records(root: Path) -> dict[str, dict[str, Any]]:
    return {
        path.relative_to(root).as_posix(): {"bytes": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


@dataclass
class CheckpointInfo:
    groups: list[str]
    metadata: dict[str, Any]
    training_state: dict[str, Any] | None
    path: Path
    skipped: list[str]  # names not loaded (non-strict loads only)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as handle:
        os.fsync(handle.fileno())


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before the folders holding them
        (_fsync_file if path.is_file() else _fsync_dir)(path)
    _fsync_dir(root)


def _siblings(directory: Path, kind: str) -> list[Path]:
    return sorted(directory.parent.glob(f".{directory.name}.{kind}-*"))


def _recover_interrupted_swap(directory: Path) -> None:
    """If a save died between moving the old checkpoint aside and moving the new one in, put the old
    one back. Leftover temp folders of killed saves are removed (one writer per name is assumed)."""
    backups = [p for p in _siblings(directory, "old") if is_complete_checkpoint(p)]
    if not directory.exists() and backups:
        os.replace(backups[-1], directory)
    for leftover in _siblings(directory, "tmp") + _siblings(directory, "old"):
        shutil.rmtree(leftover, ignore_errors=True)


def save_checkpoint(
    directory: str | Path,
    model: nn.Module,
    groups,
    *,
    tokenizer=None,
    training_state: dict | None = None,
    metadata: dict | None = None,
    parameters: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the parameters of `groups` (plus optional tokenizer / training state) to `directory`.

    `training_state` is a tree of dicts, lists, tuples, numbers, strings and tensors; anything else
    is refused before the disk is touched. `parameters` gives the model's parameters by name when
    `model` does not hold them whole (a sharded model gathers them first)."""
    directory = Path(directory).absolute()
    groups = check_groups(groups)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(directory)

    if parameters is None:
        chosen = group_state_dict(model, groups)
    else:
        from .trainable import group_of

        chosen = {name: t for name, t in parameters.items() if group_of(name) in set(groups)}
    tensors = {name: p.detach().to("cpu").contiguous().clone() for name, p in chosen.items()}
    preset = getattr(model, "preset", None)
    manifest = {
        "format": FORMAT,
        "version": VERSION,
        "groups": groups,
        "preset": getattr(preset, "name", None),
        "image_size": getattr(preset, "image_size", None),
        "parameters": {name: list(t.shape) for name, t in tensors.items()},
        "num_parameters": sum(t.numel() for t in tensors.values()),
        "metadata": metadata or {},
        "has_tokenizer": tokenizer is not None,
        "has_training_state": training_state is not None,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    # Serialise before touching the disk: a bad metadata value or state fails without leaving anything.
    json.dumps(manifest, default=str)
    state_tensors: dict[str, torch.Tensor] = {}
    state_text = None
    if training_state is not None:
        state_text = json.dumps(_encode_state(training_state, state_tensors, "state"))

    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    backup = None
    try:
        safetensors.torch.save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        if state_text is not None:
            (staging / TRAINING_STATE).write_text(state_text)
            safetensors.torch.save_file(state_tensors, str(staging / TRAINING_TENSORS))
        manifest["files"] = _file_records(staging)
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, default=str))
        _fsync_tree(staging)

        if directory.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside, swap, then delete.
            backup = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, backup)
        os.replace(staging, directory)
        _fsync_dir(directory.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException as exc:
        if backup is not None and backup.exists() and not directory.exists():
            os.replace(backup, directory)  # failed mid-swap: the previous checkpoint goes back
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OSError) or "os error" in str(exc):  # a full or read-only disk
            detail = exc.strerror if isinstance(exc, OSError) and exc.strerror else " ".join(str(exc).split())
            raise CheckpointError(
                f"{directory.parent}: cannot write checkpoint {directory.name} ({detail})"
            ) from exc
        raise
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(
            f"{Path(directory)}: not a checkpoint (no {MANIFEST}; a save that did not finish?)"
        ) from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: unreadable ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} manifest")
    if manifest.get("version") != VERSION or not isinstance(manifest.get("files"), dict):
        raise CheckpointError(
            f"{path}: checkpoint format version {manifest.get('version')} (this vlmpipe reads {VERSION}, "
            "with a digest of every file); train the stage again to rewrite it"
        )
    return manifest


def verify_checkpoint(directory: str | Path, *, digests: bool = True, only: str = "") -> dict[str, Any]:
    """The manifest of a checkpoint whose every file is present with its recorded size (and, with
    `digests`, sha256); otherwise CheckpointError naming the first bad file. `only`: digest just
    the files under that prefix (e.g. the tokenizer), sizes are still checked for all."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    for name, record in manifest["files"].items():
        path = directory / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            raise CheckpointError(
                f"{directory / MANIFEST}: file entry {name!r} points outside the checkpoint"
            )
        if not path.is_file():
            raise CheckpointError(f"{path}: missing (listed in {MANIFEST})")
        size = path.stat().st_size
        if size != record.get("bytes"):
            raise CheckpointError(
                f"{path}: {size} bytes, the manifest says {record.get('bytes')} (truncated or changed)"
            )
        if digests and name.startswith(only) and _sha256(path) != record.get("sha256"):
            raise CheckpointError(
                f"{path}: sha256 does not match the manifest (the file is corrupt or was changed)"
            )
    needed = [WEIGHTS]
    needed += [f"{TOKENIZER_DIR}/"] if manifest.get("has_tokenizer") else []
    needed += [TRAINING_STATE, TRAINING_TENSORS] if manifest.get("has_training_state") else []
    for name in needed:
        if not any(f == name or f.startswith(name) and name.endswith("/") for f in manifest["files"]):
            raise CheckpointError(f"{directory / name}: missing from the manifest")
    return manifest


def is_complete_checkpoint(directory: str | Path) -> bool:
    """True only for a folder that a finished save_checkpoint produced, every file at its recorded
    size (the digests are checked by load_checkpoint and verify_checkpoint)."""
    try:
        verify_checkpoint(directory, digests=False)
    except CheckpointError:
        return False
    return True


def load_checkpoint(directory: str | Path, model: nn.Module, *, strict: bool = True) -> CheckpointInfo:
    """Copy the saved groups into `model`, after verifying every file's sha256. strict: every saved
    name must exist with the same shape. Raises CheckpointError (one line, naming the file)."""
    directory = Path(directory)
    # No recovery here: loading must never modify a folder another process may be saving into.
    manifest = verify_checkpoint(directory)
    weights_path = directory / WEIGHTS
    try:
        saved = safetensors.torch.load_file(str(weights_path))
    except Exception as exc:  # noqa: BLE001 (safetensors raises several types for a bad file)
        raise CheckpointError(f"{weights_path}: not readable as safetensors ({exc})") from None
    params = dict(model.named_parameters())
    # Check every name before copying anything: a strict failure leaves the model untouched.
    problems: dict[str, str] = {}
    for name, tensor in saved.items():
        target = params.get(name)
        if target is None:
            problems[name] = f"{weights_path}: parameter {name!r} does not exist in the model"
        elif tuple(target.shape) != tuple(tensor.shape):
            problems[name] = (
                f"{weights_path}: parameter {name!r} has shape {tuple(tensor.shape)} in the checkpoint "
                f"but {tuple(target.shape)} in the model"
            )
    if strict and problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CheckpointError(next(iter(problems.values())) + more)
    with torch.no_grad():
        for name, tensor in saved.items():
            if name not in problems:
                params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))

    training_state = None
    if manifest.get("has_training_state"):
        training_state = _read_training_state(directory)
    return CheckpointInfo(
        groups=list(manifest["groups"]),
        metadata=manifest.get("metadata", {}),
        training_state=training_state,
        path=directory,
        skipped=sorted(problems),
    )


def _read_training_state(directory: Path) -> dict[str, Any]:
    """JSON plus safetensors: reading them runs no code, whatever the files hold."""
    try:
        tree = json.loads((directory / TRAINING_STATE).read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{directory / TRAINING_STATE}: unreadable ({exc})") from None
    try:
        tensors = safetensors.torch.load_file(str(directory / TRAINING_TENSORS))
    except Exception as exc:  # noqa: BLE001
        raise CheckpointError(
            f"{directory / TRAINING_TENSORS}: not readable as safetensors ({exc})"
        ) from None
    try:
        return _decode_state(tree, tensors)
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{directory / TRAINING_STATE}: does not match {TRAINING_TENSORS} ({exc})"
        ) from None


def load_tokenizer_from_checkpoint(directory: str | Path):
    """The tokenizer saved beside the weights (a local folder: no hub access)."""
    from transformers import AutoTokenizer

    verify_checkpoint(directory, only=f"{TOKENIZER_DIR}/")
    path = Path(directory) / TOKENIZER_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint has no {TOKENIZER_DIR}/ folder")
    return AutoTokenizer.from_pretrained(str(path))
