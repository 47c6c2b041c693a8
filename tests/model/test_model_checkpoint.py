"""Checkpoints: round trips of weights, tokenizer and training state; atomic replacement on failure."""

from __future__ import annotations

import json

import pytest
import safetensors.torch
import torch

from model import (
    group_of,
    is_complete_checkpoint,
    load_checkpoint,
    load_tokenizer_from_checkpoint,
    save_checkpoint,
)
from model.checkpoint import CheckpointError, verify_checkpoint

GROUPS = ["projection", "lora", "qk_norm", "post_attention_norm"]


def _saved_names(model, groups):
    return {n for n, _ in model.named_parameters() if group_of(n) in groups}


def test_round_trip_weights_tokenizer_and_training_state(tmp_path, make_model, tokenizer):
    source, target = make_model(seed=1), make_model(seed=2)
    with torch.no_grad():  # norms start at 1 in both models: make every saved value distinctive
        for param in source.parameters():
            param.add_(torch.rand_like(param))
    before = {name: param.clone() for name, param in target.named_parameters()}
    state = {
        "step": 17,
        "optimizer": {"lr": 1e-4, "moments": torch.arange(4.0)},
        "rng": torch.get_rng_state(),
    }
    path = save_checkpoint(
        tmp_path / "stage1",
        source,
        GROUPS,
        tokenizer=tokenizer,
        training_state=state,
        metadata={"stage": "stage1"},
    )
    assert is_complete_checkpoint(path)
    manifest = json.loads((path / "checkpoint.json").read_text())
    assert manifest["preset"] == "tiny" and manifest["groups"] == GROUPS
    assert set(manifest["parameters"]) == _saved_names(source, GROUPS)

    info = load_checkpoint(path, target)
    assert info.groups == GROUPS and info.metadata == {"stage": "stage1"} and info.skipped == []
    assert info.training_state["step"] == 17
    assert torch.equal(info.training_state["optimizer"]["moments"], torch.arange(4.0))
    assert torch.equal(info.training_state["rng"], state["rng"])
    source_params, target_params = dict(source.named_parameters()), dict(target.named_parameters())
    for name, param in target_params.items():
        expected = source_params[name] if group_of(name) in GROUPS else before[name]
        assert torch.equal(param, expected), name  # saved groups copied, the rest untouched

    reloaded = load_tokenizer_from_checkpoint(path)
    text = "{<12><34><56><78>} <p>red circle</p> <image>"
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.pad_token_id == tokenizer.pad_token_id


def test_strict_load_names_the_file_and_the_parameter(tmp_path, make_model):
    saved = make_model(seed=1)
    path = save_checkpoint(tmp_path / "ckpt", saved, ["projection"])
    other = make_model(seed=2)
    other.projection.proj_out = torch.nn.Linear(128, 64)  # a different LM width
    untouched = other.projection.proj_in.weight.clone()
    with pytest.raises(ValueError, match=r"weights\.safetensors.*projection\.proj_out\.(weight|bias)"):
        load_checkpoint(path, other)
    # A failed strict load copies nothing, not even the parameters that would have fitted.
    assert torch.equal(other.projection.proj_in.weight, untouched)
    info = load_checkpoint(path, other, strict=False)
    assert info.skipped == ["projection.proj_out.bias", "projection.proj_out.weight"]
    assert torch.equal(other.projection.proj_in.weight, saved.projection.proj_in.weight)
    with pytest.raises(CheckpointError, match="missing: not a checkpoint"):
        load_checkpoint(tmp_path / "missing", other)


def test_failed_save_keeps_the_previous_checkpoint(tmp_path, make_model, monkeypatch):
    first = make_model(seed=1)
    path = save_checkpoint(tmp_path / "latest", first, GROUPS, metadata={"step": 1})

    def exploding_save(*args, **kwargs):
        raise OSError("disk full (injected)")

    monkeypatch.setattr(safetensors.torch, "save_file", exploding_save)
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint latest \(disk full \(injected\)\)"):
        save_checkpoint(tmp_path / "latest", make_model(seed=2), GROUPS, metadata={"step": 2})
    with pytest.raises(CheckpointError, match=r"cannot write checkpoint fresh \(disk full \(injected\)\)"):
        save_checkpoint(tmp_path / "fresh", make_model(seed=2), GROUPS)
    monkeypatch.undo()

    assert not (tmp_path / "fresh").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["latest"]  # no half-written siblings left
    assert is_complete_checkpoint(path)
    target = make_model(seed=3)
    assert load_checkpoint(path, target).metadata == {"step": 1}
    torch.testing.assert_close(target.projection.proj_in.weight, first.projection.proj_in.weight)


def test_failure_after_weights_and_interrupted_swap_recovery(tmp_path, make_model, monkeypatch):
    path = save_checkpoint(tmp_path / "latest", make_model(seed=1), ["projection"], metadata={"step": 1})

    def exploding_manifest(*args, **kwargs):
        raise RuntimeError("killed after the weights and the training state were written (injected)")

    monkeypatch.setattr("model.checkpoint._file_records", exploding_manifest)
    with pytest.raises(RuntimeError, match="injected"):
        save_checkpoint(path, make_model(seed=2), ["projection"], training_state={"step": 2})
    monkeypatch.undo()
    assert json.loads((path / "checkpoint.json").read_text())["metadata"] == {"step": 1}

    # Simulate a crash between moving the old checkpoint aside and moving the new one in.
    backup = tmp_path / ".latest.old-deadbeef"
    path.rename(backup)
    assert not is_complete_checkpoint(path)
    (tmp_path / ".latest.tmp-cafebabe").mkdir()  # a half-written staging folder
    save_checkpoint(tmp_path / "other", make_model(seed=3), ["projection"])
    assert not is_complete_checkpoint(path)  # saving another name does not touch "latest"
    save_checkpoint(path, make_model(seed=4), ["projection"], metadata={"step": 4})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest", "other"]
    assert load_checkpoint(path, make_model()).metadata == {"step": 4}


def test_incomplete_folder_is_not_a_checkpoint(tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "weights.safetensors").write_bytes(b"")
    assert not is_complete_checkpoint(folder)
    (folder / "checkpoint.json").write_text("{not json")
    assert not is_complete_checkpoint(folder)


def _resumable(tmp_path, make_model, tokenizer):
    model = make_model(seed=1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad][:3], lr=1e-3)
    loss = sum(p.sum() for g in optimizer.param_groups for p in g["params"])
    loss.backward()
    optimizer.step()
    state = {
        "step": 3,
        "optimizer": optimizer.state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": __import__("random").getstate()},
        "data": {"carry": [(1, 0, 2)], "sampler": {"epoch": 0}},
    }
    path = save_checkpoint(
        tmp_path / "resume", model, ["projection"], tokenizer=tokenizer, training_state=state
    )
    return path, state, optimizer


def test_training_state_round_trips_without_pickle(tmp_path, make_model, tokenizer):
    path, state, optimizer = _resumable(tmp_path, make_model, tokenizer)
    assert {p.name for p in path.iterdir()} >= {"training_state.json", "training_state.safetensors"}
    assert not list(path.glob("*.pt"))
    loaded = load_checkpoint(path, make_model(seed=2)).training_state
    assert loaded["step"] == 3 and loaded["data"] == state["data"]
    assert loaded["rng"]["python"] == state["rng"]["python"]  # tuples come back as tuples
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    fresh = torch.optim.AdamW([p for p in make_model(seed=1).parameters() if p.requires_grad][:3], lr=1e-3)
    fresh.load_state_dict(loaded["optimizer"])  # int keys, tuples (betas) and tensors restored
    for key, value in optimizer.state_dict()["state"][0].items():
        assert torch.equal(fresh.state_dict()["state"][0][key], value), key


def test_a_tampered_training_state_cannot_run_code(tmp_path, make_model, tokenizer):
    import pickle

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (__import__("pathlib").Path.touch, (marker,))

    path, _, _ = _resumable(tmp_path, make_model, tokenizer)
    bomb = pickle.dumps({"step": Payload()})
    (path / "training_state.pt").write_bytes(bomb)  # the old pickle name: never opened
    (path / "training_state.json").write_bytes(bomb)  # and the real name, with the manifest redone
    manifest = json.loads((path / "checkpoint.json").read_text())
    import hashlib

    manifest["files"]["training_state.json"] = {
        "bytes": len(bomb),
        "sha256": hashlib.sha256(bomb).hexdigest(),
    }
    (path / "checkpoint.json").write_text(json.dumps(manifest))
    with pytest.raises(CheckpointError, match=r"training_state.json: unreadable"):
        load_checkpoint(path, make_model(seed=2))
    assert not marker.exists()


def test_a_flipped_byte_in_any_file_is_refused_by_name(tmp_path, make_model, tokenizer):
    path, _, _ = _resumable(tmp_path, make_model, tokenizer)
    files = json.loads((path / "checkpoint.json").read_text())["files"]
    assert "weights.safetensors" in files and any(f.startswith("tokenizer/") for f in files)
    for name in files:
        target = path / name
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0x01
        original = target.read_bytes()
        target.write_bytes(bytes(data))
        assert is_complete_checkpoint(path)  # same size: only the digest can tell
        with pytest.raises(CheckpointError) as err:
            load_checkpoint(path, make_model(seed=2))
        assert str(err.value).startswith(f"{target}: sha256 does not match") and "\n" not in str(err.value)
        target.write_bytes(original)
    load_checkpoint(path, make_model(seed=2))  # all restored: loads again


def test_truncated_and_missing_files_are_named(tmp_path, make_model, tokenizer):
    path, _, _ = _resumable(tmp_path, make_model, tokenizer)
    weights = path / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert not is_complete_checkpoint(path)
    with pytest.raises(CheckpointError, match=rf"{weights}: 100 bytes, the manifest says \d+"):
        verify_checkpoint(path)
    weights.unlink()
    with pytest.raises(CheckpointError, match=rf"{weights}: missing"):
        load_checkpoint(path, make_model(seed=2))
    (path / "checkpoint.json").write_text(json.dumps({"format": "vlmpipe-checkpoint", "version": 1}))
    with pytest.raises(CheckpointError, match="format version 1"):
        verify_checkpoint(path)


def test_a_state_that_json_cannot_hold_is_refused_before_the_disk(tmp_path, make_model):
    with pytest.raises(TypeError, match="object at state.oops cannot be saved"):
        save_checkpoint(tmp_path / "x", make_model(), ["projection"], training_state={"oops": object()})
    assert not (tmp_path / "x").exists() and not list(tmp_path.iterdir())
