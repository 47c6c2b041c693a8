"""Stage checkpoints: the trained parameter groups, the tokenizer and the resumable training state.

A save is atomic: everything is written and fsynced in a hidden sibling folder that is renamed into
place last, so a killed save never leaves a folder that `is_complete_checkpoint` accepts, and an
existing checkpoint of the same name survives any failure before the swap.
"""

from __future__ import annotations

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
VERSION = 1
WEIGHTS = "weights.safetensors"
MANIFEST = "checkpoint.json"  # written last: its presence (and validity) marks a complete folder
TRAINING_STATE = "training_state.pt"
TOKENIZER_DIR = "tokenizer"


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
) -> Path:
    """Write the parameters of `groups` (plus optional tokenizer / training state) to `directory`."""
    directory = Path(directory).absolute()
    groups = check_groups(groups)
    directory.parent.mkdir(parents=True, exist_ok=True)
    _recover_interrupted_swap(directory)

    tensors = {
        name: p.detach().to("cpu").contiguous().clone() for name, p in group_state_dict(model, groups).items()
    }
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
    # Serialise before touching the disk: a bad metadata value fails without leaving anything behind.
    manifest_text = json.dumps(manifest, indent=2, default=str)

    staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    backup = None
    try:
        safetensors.torch.save_file(tensors, str(staging / WEIGHTS), metadata={"format": "pt"})
        if tokenizer is not None:
            tokenizer.save_pretrained(str(staging / TOKENIZER_DIR))
        if training_state is not None:
            torch.save(training_state, staging / TRAINING_STATE)
        (staging / MANIFEST).write_text(manifest_text)
        _fsync_tree(staging)

        if directory.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside, swap, then delete.
            backup = directory.parent / f".{directory.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(directory, backup)
        os.replace(staging, directory)
        _fsync_dir(directory.parent)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)
    except BaseException:
        if backup is not None and backup.exists() and not directory.exists():
            os.replace(backup, directory)  # failed mid-swap: the previous checkpoint goes back
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_manifest(directory: str | Path) -> dict[str, Any]:
    path = Path(directory) / MANIFEST
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    return manifest


def is_complete_checkpoint(directory: str | Path) -> bool:
    """True only for a folder that a finished save_checkpoint produced."""
    directory = Path(directory)
    try:
        manifest = read_manifest(directory)
    except (OSError, ValueError):
        return False
    needed = [WEIGHTS]
    needed += [TOKENIZER_DIR] if manifest.get("has_tokenizer") else []
    needed += [TRAINING_STATE] if manifest.get("has_training_state") else []
    return all((directory / name).exists() for name in needed)


def load_checkpoint(directory: str | Path, model: nn.Module, *, strict: bool = True) -> CheckpointInfo:
    """Copy the saved groups into `model`. strict: every saved name must exist with the same shape."""
    directory = Path(directory)
    # No recovery here: loading must never modify a folder another process may be saving into.
    if not is_complete_checkpoint(directory):
        raise FileNotFoundError(f"{directory}: not a complete checkpoint (missing or unfinished {MANIFEST})")
    manifest = read_manifest(directory)
    weights_path = directory / WEIGHTS
    saved = safetensors.torch.load_file(str(weights_path))
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
        raise ValueError(next(iter(problems.values())) + more)
    with torch.no_grad():
        for name, tensor in saved.items():
            if name not in problems:
                params[name].copy_(tensor.to(device=params[name].device, dtype=params[name].dtype))

    training_state = None
    if manifest.get("has_training_state"):
        # Our own file; it holds RNG states and optimizer objects, which weights_only cannot load.
        training_state = torch.load(directory / TRAINING_STATE, map_location="cpu", weights_only=False)
    return CheckpointInfo(
        groups=list(manifest["groups"]),
        metadata=manifest.get("metadata", {}),
        training_state=training_state,
        path=directory,
        skipped=sorted(problems),
    )


def load_tokenizer_from_checkpoint(directory: str | Path):
    """The tokenizer saved beside the weights (a local folder: no hub access)."""
    from transformers import AutoTokenizer

    path = Path(directory) / TOKENIZER_DIR
    if not path.is_dir():
        raise FileNotFoundError(f"{directory}: checkpoint has no {TOKENIZER_DIR}/ folder")
    return AutoTokenizer.from_pretrained(str(path))
