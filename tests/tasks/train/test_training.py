"""Training stages: losses fall, checkpoints chain, a killed stage resumes to the same weights."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_specs.pipelines import ModelSpec
from data_specs.stages import load_stage_spec
from tasks.shapes_world import tokenizer_corpus
from tasks.train.stage import train_stage

SPECS = Path(__file__).resolve().parents[3] / "data_specs" / "stages"
MODEL = ModelSpec(preset="tiny", seed=0)


def small(name: str, steps: int, **schedule):
    stage = load_stage_spec(SPECS / f"{name}.yaml")
    stage.schedule.steps = steps
    stage.schedule.batch_size = 2
    stage.schedule.warmup_steps = 1
    for key, value in schedule.items():
        setattr(stage.schedule, key, value)
    stage.log_every = 1
    return stage


def quiet(_msg: str) -> None:
    pass


def test_schedule_warms_up_then_decays_to_min_lr():
    s = small("stage4_multitask", 100, warmup_steps=10, lr=1e-3, min_lr=1e-4, warmup_lr=1e-6)
    assert s.schedule.lr_at(0) == pytest.approx(1e-6)
    assert s.schedule.lr_at(10) == pytest.approx(1e-3)
    assert s.schedule.lr_at(100) == pytest.approx(1e-4)
    assert all(s.schedule.lr_at(i) >= s.schedule.lr_at(i + 1) for i in range(10, 100))


def test_lr_scale_multiplies_a_groups_learning_rate(tmp_path, shapes_source):
    """One AdamW step moves each weight by about lr (times its scale): with vision at 0.01 and the
    same data and seed, the vision tower moves 100x less and every other group as much."""

    def weights_after_one_step(name: str, **schedule) -> dict[str, torch.Tensor]:
        stage = small("shapes_base", 1, warmup_steps=0, lr=1e-3, **schedule)
        stage.trainable = [*stage.trainable, "vision"]  # the shipped base keeps the tower frozen
        out = train_stage(stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / name, log=quiet)
        return load_file(Path(out["checkpoint"]) / "weights.safetensors")

    from model.build import build_model

    start = {
        n: p.detach()
        for n, p in build_model(MODEL, tokenizer_corpus=tokenizer_corpus, log=quiet)[
            0
        ].model.named_parameters()
    }
    plain = weights_after_one_step("plain", lr_scale={})
    scaled = weights_after_one_step("scaled", lr_scale={"vision": 0.01})
    moved = {
        run: {n: float((w[n] - start[n]).abs().sum()) for n in w}
        for run, w in (("plain", plain), ("scaled", scaled))
    }
    vision = [n for n in plain if n.startswith("vision.") and moved["plain"][n] > 0]
    others = [n for n in plain if n.startswith("projection.")]
    assert vision and others
    ratio = sum(moved["scaled"][n] for n in vision) / sum(moved["plain"][n] for n in vision)
    assert ratio == pytest.approx(0.01, rel=0.05)
    for n in others:  # the same step, up to float rounding of the shared clipping norm
        torch.testing.assert_close(scaled[n], plain[n], rtol=1e-6, atol=1e-7, msg=n)


def test_contrastive_only_stage_trains_towers_and_projection_without_the_lm(tmp_path, shapes_source):
    from data_specs.stages import Contrastive
    from model.build import build_model
    from model.trainable import group_of

    stage = small("shapes_towers", 3, lr=1e-3)
    assert not stage.autoregressive and stage.contrastive is not None
    messages = []
    out = train_stage(
        stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "towers", log=messages.append
    )
    weights = load_file(Path(out["checkpoint"]) / "weights.safetensors")
    assert {group_of(n) for n in weights} == {"vision", "qformer", "projection"}
    start = dict(build_model(MODEL, tokenizer_corpus=tokenizer_corpus, log=quiet)[0].model.named_parameters())
    assert not torch.equal(
        weights["vision.vit.embeddings.patch_embedding.weight"],
        start["vision.vit.embeddings.patch_embedding.weight"],
    )
    assert out["loss_start"] > 0  # the InfoNCE loss, not a zero placeholder

    # both losses together: the log line and the metrics name each part
    both = small("shapes_base", 2)
    both.contrastive = Contrastive(weight=0.5)
    messages.clear()
    train_stage(both, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "both", log=messages.append)
    assert any("(lm " in m and "semantic_transform " in m for m in messages), messages


def test_base_stage_learns_and_stage1_checkpoint_holds_only_what_trains(tmp_path, shapes_source):
    messages: list[str] = []
    base_stage = small("shapes_base", 30, lr=3e-3)
    # from a random model, the tower trains too (in the demo it comes frozen from shapes_towers),
    # so that the base checkpoint holds a tower for stage 1 to carry on frozen
    base_stage.trainable = [*base_stage.trainable, "vision"]
    base = train_stage(
        base_stage,
        MODEL,
        data_dirs=shapes_source,
        output_dir=tmp_path / "base",
        log=messages.append,
    )
    assert base["loss_end"] < base["loss_start"] * 0.7
    # LoRA is frozen and zero in the base stage: it runs switched off (same outputs, less work)
    assert any("LoRA is frozen and still zero" in m for m in messages)
    stage1 = load_stage_spec(SPECS / "stage1_warmup.yaml")
    stage1.schedule.steps, stage1.schedule.batch_size = 3, 2
    # stage 1 from a fresh model: its checkpoint holds its trainable groups and nothing else
    out = train_stage(stage1, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "s1", log=quiet)
    names = load_file(Path(out["checkpoint"]) / "weights.safetensors").keys()
    assert names and not any(n.startswith(("vision.", "qformer.")) for n in names)
    assert not any("lora_" in n for n in names)
    # from the base checkpoint: the base's groups are carried on, so stage 2 can start from stage 1
    chained = train_stage(
        stage1,
        MODEL,
        data_dirs=shapes_source,
        output_dir=tmp_path / "s1b",
        init_checkpoint=base["checkpoint"],
        log=quiet,
    )
    weights = load_file(Path(chained["checkpoint"]) / "weights.safetensors")
    base_weights = load_file(Path(base["checkpoint"]) / "weights.safetensors")
    vision = [n for n in base_weights if n.startswith("vision.")]
    assert vision and all(torch.equal(weights[n], base_weights[n]) for n in vision)  # frozen, carried
    proj = [n for n in base_weights if n.startswith("projection.")]
    assert any(not torch.equal(weights[n], base_weights[n]) for n in proj)  # trained
    # stage 2 trains LoRA: it stays switched on, and its B matrices leave zero
    stage2 = load_stage_spec(SPECS / "stage2_pretrain.yaml")
    stage2.schedule.steps, stage2.schedule.batch_size, stage2.schedule.warmup_steps = 2, 2, 0
    messages.clear()
    out2 = train_stage(
        stage2,
        MODEL,
        data_dirs=shapes_source,
        output_dir=tmp_path / "s2",
        init_checkpoint=chained["checkpoint"],
        log=messages.append,
    )
    assert not any("LoRA is frozen" in m for m in messages)
    lora_b = [
        w for n, w in load_file(Path(out2["checkpoint"]) / "weights.safetensors").items() if "lora_B" in n
    ]
    assert lora_b and any(bool(w.any()) for w in lora_b)


def test_killed_stage_resumes_to_the_same_weights(tmp_path, shapes_source):
    stage = small("stage4_multitask", 6)
    stage.checkpoint_every = 2
    full = train_stage(stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "full", log=quiet)
    part = train_stage(
        stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "part", log=quiet, max_steps=3
    )
    assert part["checkpoint"] is None and Path(part["resume"]).is_dir()
    messages = []
    resumed = train_stage(
        stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "part", log=messages.append
    )
    assert any("resuming at step 3" in m for m in messages)
    a = load_file(Path(full["checkpoint"]) / "weights.safetensors")
    b = load_file(Path(resumed["checkpoint"]) / "weights.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6, msg=name)
    assert not (tmp_path / "part" / "resume").exists()
    again = train_stage(stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / "part", log=quiet)
    assert again["skipped"] is True


def test_resume_refuses_a_changed_spec_and_a_corrupt_state_with_the_way_out(tmp_path, shapes_source):
    from model.checkpoint import CheckpointError

    stage = small("stage4_multitask", 6)
    stage.checkpoint_every = 2
    out = tmp_path / "run"
    train_stage(stage, MODEL, data_dirs=shapes_source, output_dir=out, log=quiet, max_steps=3)
    resume = out / "resume"

    changed = small("stage4_multitask", 6, lr=stage.schedule.lr / 10)  # the NaN advice: lower the lr
    changed.checkpoint_every = 2
    with pytest.raises(CheckpointError) as err:
        train_stage(changed, MODEL, data_dirs=shapes_source, output_dir=out, log=quiet)
    message = str(err.value)
    assert (
        "schedule.lr changed" in message
        and f"delete {resume} to start stage stage4_multitask over" in message
    )
    logged_more = small("stage4_multitask", 6)
    logged_more.checkpoint_every, logged_more.log_every = 2, 5  # logging settings may change
    state = resume / "training_state.safetensors"
    original = state.read_bytes()
    state.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(CheckpointError, match=rf"{state}: sha256 does not match.*delete {resume}"):
        train_stage(logged_more, MODEL, data_dirs=shapes_source, output_dir=out, log=quiet)
    state.write_bytes(original)
    done = train_stage(logged_more, MODEL, data_dirs=shapes_source, output_dir=out, log=quiet)
    final = Path(done["checkpoint"])
    assert not list(final.glob("training_state*"))  # the finished checkpoint carries no optimizer
    weights = final / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=rf"{weights}: .*delete {final} to train stage"):
        train_stage(logged_more, MODEL, data_dirs=shapes_source, output_dir=out, log=quiet)


@pytest.mark.parametrize(
    ("loss", "trainable"),
    [("semantic_transform", ["projection"]), ("language_model", ["lora"]), ("image_encoder", ["vision"])],
)
def test_each_eim_loss_is_a_segmented_stage_of_its_own_with_a_queue_kept_on_disk(
    tmp_path, shapes_source, loss, trainable
):
    """autoregressive: false and one EIM loss: only the loss's groups change, the queue is built once
    from the stage's training batches, written beside the checkpoints and read back, not rebuilt."""
    import safetensors

    from data_specs.stages import Contrastive
    from model.build import build_model
    from tasks.train import keys

    stage = small("shapes_towers", 3, lr=1e-3)
    stage.trainable = trainable
    stage.contrastive = Contrastive(loss=loss, queue=24)
    stage = type(stage).model_validate(stage.model_dump())  # the spec's own checks
    messages = []
    out = train_stage(stage, MODEL, data_dirs=shapes_source, output_dir=tmp_path / loss, log=messages.append)
    assert any(f"24 {loss} keys built" in m for m in messages), messages
    path = tmp_path / loss / keys.KEYS_FILE
    with safetensors.safe_open(str(path), "pt") as handle:
        assert handle.get_tensor("keys").shape[0] == 24 and handle.metadata()["loss"] == loss
    weights = load_file(Path(out["checkpoint"]) / "weights.safetensors")
    start = dict(build_model(MODEL, tokenizer_corpus=tokenizer_corpus, log=quiet)[0].model.named_parameters())
    from model.trainable import group_of

    moved = {group_of(n) for n, w in weights.items() if n in start and not torch.equal(w, start[n].detach())}
    assert moved == set(trainable), moved

    # the same stage again: the keys on disk are read, not rebuilt
    built, _ = build_model(MODEL, tokenizer_corpus=tokenizer_corpus, log=quiet)
    messages.clear()
    again = keys.stage_queue(
        stage,
        built.model,
        lambda: pytest.fail("the queue was rebuilt"),
        tmp_path / loss,
        torch.device("cpu"),
        fingerprint=handle_fingerprint(path),
        log=messages.append,
    )
    assert again.shape[0] == 24 and any("read from" in m for m in messages)


def handle_fingerprint(path):
    import safetensors

    with safetensors.safe_open(str(path), "pt") as handle:
        return handle.metadata()["stage_sha256"]


def test_a_stage_spec_refuses_an_eim_loss_whose_groups_do_not_train():
    from data_specs.stages import Contrastive

    stage = small("shapes_towers", 3)
    stage.trainable = ["projection"]
    stage.contrastive = Contrastive(loss="image_encoder")
    with pytest.raises(ValueError, match="image_encoder trains only vision"):
        type(stage).model_validate(stage.model_dump())
