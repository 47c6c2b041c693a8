"""The stage recipe's pieces: exact gradient accumulation, the guards (with their MLflow cause), the
device choice, the paper's schedules and the FLOP count by component against hand-counted figures."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_specs.pipelines import ModelSpec
from data_specs.stages import Schedule, load_stage_spec
from model.presets import get_preset
from tasks.train import recipe
from tasks.train.flops import StepFlops, peak_flops
from tasks.train.stage import train_stage

SPECS = Path(__file__).resolve().parents[3] / "data_specs" / "stages"
# no LoRA dropout: a micro-batch draws its dropout masks in another order than the whole batch does
EXACT = ModelSpec(preset="tiny", seed=0, lora={"r": 8, "alpha": 16, "dropout": 0.0})


def quiet(_msg: str) -> None:
    pass


def stage_of(name: str, steps: int, batch_size: int, **schedule):
    stage = load_stage_spec(SPECS / f"{name}.yaml")
    stage.schedule.steps = steps
    stage.schedule.batch_size = batch_size
    stage.schedule.warmup_steps = 0
    for key, value in schedule.items():
        setattr(stage.schedule, key, value)
    stage.log_every = 1
    return stage


def weights(out: dict) -> dict[str, torch.Tensor]:
    return load_file(Path(out["checkpoint"]) / "weights.safetensors")


def test_k_micro_batches_give_the_update_of_one_batch(tmp_path, shapes_source):
    """Stage 4 (LoRA, projection, norms) for 3 steps of 4 packed rows: in one piece, and as 2 and 4
    micro-batches. Same losses and same weights to float rounding; a different batch would not be."""
    runs = {}
    for k in (1, 2, 4):
        stage = stage_of("stage4_multitask", 3, 4, accumulation_steps=k, lr=1e-3)
        msgs: list[str] = []
        out = train_stage(
            stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / f"k{k}", log=msgs.append
        )
        runs[k] = (out, weights(out))
    base_out, base = runs[1]
    # A key's layer-norm bias adds the same amount to every score of a query, which softmax ignores:
    # its true gradient is 0 and what backward returns is rounding noise, which Adam scales up to
    # +-lr whatever the micro-batching. Every other weight must agree.
    shift_invariant = [n for n in base if "k_layernorm.bias" in n]
    assert shift_invariant
    for k in (2, 4):
        out, w = runs[k]
        assert out["loss_start"] == pytest.approx(base_out["loss_start"], rel=1e-5)
        assert out["loss_end"] == pytest.approx(base_out["loss_end"], rel=1e-5)
        for name in base:
            if name not in shift_invariant:
                # 1e-5 is 1% of one Adam step at lr 1e-3: rounding that Adam's normalisation scales up
                # on a near-zero gradient, not a different update (a different batch moves weights by
                # whole steps, as the check below shows)
                torch.testing.assert_close(w[name], base[name], rtol=1e-5, atol=1e-5)
    # the check can fail: a batch of 2 rows takes another step
    other = train_stage(
        stage_of("stage4_multitask", 3, 2, lr=1e-3),
        EXACT,
        data_dirs=shapes_source,
        output_dir=tmp_path / "b2",
        log=quiet,
    )
    assert any(
        not torch.allclose(weights(other)[n], base[n], rtol=1e-5, atol=1e-4)
        for n in base
        if n not in shift_invariant
    )


def test_batch_size_must_split_into_micro_batches_and_processes(tmp_path):
    from data_specs.loader import SpecError, load_spec
    from data_specs.stages import StageSpec

    text = (SPECS / "stage4_multitask.yaml").read_text()
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("schedule: {", "processes: 2\nschedule: {accumulation_steps: 3, ", 1))
    with pytest.raises(SpecError, match="not a multiple of accumulation_steps x processes = 6"):
        load_spec(StageSpec, bad)
    bad.write_text(text.replace("schedule: {", "fsdp: true\nschedule: {", 1))
    with pytest.raises(
        SpecError, match="fsdp: true shards the language model over processes; set processes >= 2"
    ):
        load_spec(StageSpec, bad)


def test_a_non_finite_loss_stops_the_stage_with_one_line_and_an_mlflow_cause(tmp_path, shapes_source):
    from mlflow.tracking import MlflowClient

    from tasks.tracking import tracked_run

    stage = stage_of("stage4_multitask", 3, 2, lr=1e30, grad_clip=None)  # diverges at once
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    with pytest.raises(recipe.TrainingHalted) as caught:
        with tracked_run("guards", "nan", tracking_uri=uri) as run:
            train_stage(
                stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / "nan", tracker=run, log=quiet
            )
    message = str(caught.value)
    assert "\n" not in message and "stage stage4_multitask" in message and "at step " in message
    assert caught.value.cause in {"nonfinite_loss", "nonfinite_gradient"}
    record = MlflowClient(uri).get_run(run.run_id)
    assert record.info.status == "FAILED"
    assert record.data.tags["vlmpipe.failure"] == caught.value.cause


def test_a_non_finite_gradient_names_its_group_and_step(tmp_path, shapes_source):
    from model.build import build_model
    from model.trainable import set_trainable
    from tasks.data.stage_data import StageData, build_pools
    from tasks.shapes_world import tokenizer_corpus

    stage = stage_of("stage4_multitask", 3, 2)
    built, _ = build_model(EXACT, tokenizer_corpus=tokenizer_corpus, log=quiet)
    model = built.model
    set_trainable(model, stage.trainable, log=None)
    named = recipe.trainable_named(model)
    lora = next(p for n, p in named if "lora_B" in n)
    lora.register_hook(lambda g: g * float("inf"))  # the loss stays finite; one group's gradient does not
    data = StageData.for_model(stage, build_pools(stage, shapes_source), built)
    batch = data.next_tokens()
    with pytest.raises(
        recipe.TrainingHalted, match=r"non-finite gradient at step 7 in group lora;"
    ) as caught:
        recipe.train_step(
            model,
            recipe.make_optimizer(model, stage),
            stage,
            batch,
            images=data.pixels(batch),
            procs=recipe.Processes(),
            device=torch.device("cpu"),
            named=named,
            contrastive_fn=None,
            step=7,
            timer=lambda: 0.0,
        )
    assert caught.value.cause == "nonfinite_gradient"


def test_vanishing_gradients_stop_the_stage_after_k_steps(tmp_path, shapes_source):
    stage = stage_of("stage4_multitask", 10, 2)
    stage.guards.grad_norm_floor = 1e9  # every real norm is under it
    stage.guards.floor_steps = 3
    msgs: list[str] = []
    with pytest.raises(recipe.TrainingHalted, match=r"gradient norm under 1e\+09 for 3 steps") as caught:
        train_stage(stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / "v", log=msgs.append)
    assert "at step 3;" in str(caught.value) and caught.value.cause == "vanishing_gradient"
    assert sum(" step " in m and " loss " in m for m in msgs) == 2  # step 3 stopped before its report


def test_device_comes_from_the_spec_then_the_environment(monkeypatch):
    monkeypatch.delenv(recipe.DEVICE_ENV, raising=False)
    assert recipe.resolve_device("cpu") == torch.device("cpu")
    auto = recipe.resolve_device(None)
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(recipe.DEVICE_ENV, "cpu")
    assert recipe.resolve_device(None) == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            recipe.resolve_device("cuda:0")


def test_autocast_is_bf16_on_the_device_in_use_and_off_for_fp32():
    with recipe.autocast_for(torch.device("cpu"), "bf16"):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.bfloat16
    with recipe.autocast_for(torch.device("cpu"), "fp32"):
        out = torch.nn.Linear(4, 4)(torch.randn(2, 4))
    assert out.dtype == torch.float32


def test_epochs_and_the_stage1_per_epoch_ramp():
    s = Schedule(
        epochs=3,
        iters_per_epoch=10,
        restart_each_epoch=True,
        warmup_steps=10,
        lr=1e-4,
        min_lr=1e-4,
        warmup_lr=1e-5,
        batch_size=4,
    )
    assert s.steps == 30
    ramp = [s.lr_at(i) for i in range(10)]
    assert ramp[0] == pytest.approx(1e-5) and all(a < b for a, b in zip(ramp, ramp[1:], strict=False))
    assert [s.lr_at(10 * e) for e in range(3)] == pytest.approx([1e-5] * 3)  # restarts every epoch
    assert s.lr_at(19) == pytest.approx(s.lr_at(9))
    plain = Schedule(epochs=2, iters_per_epoch=50, warmup_steps=10, lr=1e-3, min_lr=1e-4, batch_size=4)
    assert (
        plain.steps == 100
        and plain.lr_at(10) == pytest.approx(1e-3)
        and plain.lr_at(100) == pytest.approx(1e-4)
    )
    with pytest.raises(ValueError, match="steps 99 != epochs x iters_per_epoch = 100"):
        Schedule(steps=99, epochs=2, iters_per_epoch=50, lr=1e-3, min_lr=1e-4, batch_size=4)
    with pytest.raises(ValueError, match="restart_each_epoch needs epochs and iters_per_epoch"):
        Schedule(steps=9, restart_each_epoch=True, lr=1e-3, min_lr=1e-4, batch_size=4)


# ---------------------------------------------------------------------------------------- FLOPs


def meta_model(preset_name: str, trainable: list[str]):
    from model.lora import DEFAULT_LORA
    from model.trainable import set_trainable
    from model.vlm import VisionLanguageModel

    with torch.device("meta"):
        model = VisionLanguageModel(get_preset(preset_name), 51200, 50295, 50256, DEFAULT_LORA)
    set_trainable(model, trainable, log=None)
    return model


STAGE4 = ["projection", "lora", "qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"]


def test_flops_of_tinygptv_phi2_stage4_match_a_hand_count():
    f = StepFlops.of(meta_model("tinygptv-phi2", STAGE4))
    d, ff, layers, vocab, r = 2560, 10240, 32, 51200, 64
    # LM: frozen base matmuls x4 (forward + input grad), LoRA x6, the head frozen x4
    base = layers * (4 * d * d + 2 * d * ff) + vocab * d
    lora = layers * 4 * (r * d + d * r)
    assert f.lm_per_token == 4 * base + 6 * lora
    assert f.lm_attention_per_token_per_seq == 12 * layers * d
    # EVA ViT-g/14 at 224 px, frozen and first in the chain: forward only, 256 patches + CLS
    v, vff, vl, tokens = 1408, 6144, 39, 257
    vit = vl * (3 * v * v + v * v + 2 * v * vff)
    assert f.vision_per_image == 2 * vit * tokens + 2 * (v * 3 * 14 * 14) * 256 + 4 * vl * v * tokens * tokens
    # Q-Former, frozen: 32 queries through 12 layers, cross-attention every 2nd layer over 257 tokens
    q, qff, ql, cross, nq = 768, 3072, 12, 6, 32
    per_query = ql * (4 * q * q + 2 * q * qff) + cross * (2 * q * q)
    per_vision_token = cross * 2 * (q * v)
    assert f.qformer_per_image == (
        2 * per_query * nq + 2 * per_vision_token * tokens + 4 * q * (ql * nq * nq + cross * nq * tokens)
    )
    # the projection trains: x6 for each of the 32 query tokens
    assert f.projection_per_image == 6 * (q * 4096 + 4096 * d) * nq
    step = f.step(rows=4, seq_len=512, images=6)
    assert step == 4 * 512 * (f.lm_per_token + 12 * layers * d * 512) + 6 * (
        f.vision_per_image + f.qformer_per_image + f.projection_per_image
    )
    assert f.step(rows=4, seq_len=512, images=6, lm=False) == 6 * (
        f.vision_per_image + f.qformer_per_image + f.projection_per_image
    )


def test_flops_of_the_tiny_preset_when_everything_trains():
    from model.trainable import GROUPS

    f = StepFlops.of(meta_model("tiny", [g for g in GROUPS if g != "mm_adapter"]))  # LoRA model
    d, ff, layers, vocab, r = 128, 512, 4, 51200, 64
    lm = layers * (4 * d * d + 2 * d * ff + 4 * (r * d + d * r)) + vocab * d
    assert f.lm_per_token == 6 * lm  # every weight trains
    assert f.lm_attention_per_token_per_seq == 12 * layers * d
    v, vff, vl, tokens = 64, 128, 2, 65  # 64 px / 8 px patches = 64 + CLS
    assert f.vision_per_image == 6 * vl * (4 * v * v + 2 * v * vff) * tokens + 6 * (v * 3 * 8 * 8) * 64 + (
        12 * vl * v * tokens * tokens
    )
    q, qff, ql, nq = 64, 128, 2, 8  # cross-attention in every layer (frequency 1)
    assert f.qformer_per_image == (
        6 * (ql * (4 * q * q + 2 * q * qff) + ql * 2 * q * q) * nq
        + 6 * ql * 2 * q * v * tokens
        + 12 * q * (ql * nq * nq + ql * nq * tokens)
    )
    assert f.projection_per_image == 6 * (q * 128 + 128 * d) * nq


def test_flops_leave_out_lora_switched_off_for_a_stage():
    from model.language import lora_layers

    base = ["vision", "qformer", "projection", "language_model", "qk_norm", "post_attention_norm"]
    model = meta_model("tiny", base)  # LoRA frozen: a stage would switch it off while B is zero
    with_lora = StepFlops.of(model)
    for layer in lora_layers(model.language_model):  # meta weights: switched the way the stage does
        layer.enable_adapters(False)
    without = StepFlops.of(model)
    d, layers, r = 128, 4, 64
    # frozen LoRA inside a training LM counts x4 (forward + input gradient); switched off, nothing
    assert with_lora.lm_per_token - without.lm_per_token == 4 * layers * 4 * (r * d + d * r)
    assert without.vision_per_image == with_lora.vision_per_image


def test_mfu_needs_a_known_peak(monkeypatch):
    monkeypatch.delenv("VLMPIPE_PEAK_TFLOPS", raising=False)
    assert peak_flops(torch.device("cpu")) is None  # an unknown device: no MFU, not a wrong one
    monkeypatch.setenv("VLMPIPE_PEAK_TFLOPS", "2.5")
    assert peak_flops(torch.device("cpu")) == 2.5e12


def test_8bit_adamw_keeps_8bit_states_and_resumes_to_the_same_weights(tmp_path, shapes_source):
    stage = stage_of("stage4_multitask", 4, 2, optimizer="adamw_8bit", lr=1e-3)
    stage.checkpoint_every = 2
    full = train_stage(stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / "full", log=quiet)
    part = train_stage(
        stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / "part", log=quiet, max_steps=2
    )
    from model.checkpoint import _read_training_state

    state = _read_training_state(Path(part["resume"]))["optimizer"]["state"]

    def dtypes(tree) -> set[str]:
        if isinstance(tree, torch.Tensor):
            return {str(tree.dtype)}
        items = tree.values() if isinstance(tree, dict) else tree if isinstance(tree, list | tuple) else []
        return set().union(*(dtypes(v) for v in items)) if items else set()

    assert "torch.uint8" in dtypes(state)  # the LoRA and projection matrices' moments are 8-bit
    resumed = train_stage(stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / "part", log=quiet)
    a, b = weights(full), weights(resumed)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=1e-6)


def test_mfu_on_a_cpu_when_its_peak_is_given():
    from tasks.train.throughput import Throughput

    meter = Throughput(peak_flops=None)
    meter.add(tokens=100, samples=4, data_s=0.1, compute_s=0.9, flops=5e9)
    assert "mfu" not in meter.report()
    meter = Throughput(peak_flops=1e12)
    meter._t0 -= 1.0  # a window of about one second
    meter.add(tokens=100, samples=4, data_s=0.1, compute_s=0.9, flops=5e11)
    figures = meter.report()
    assert 0.4 < figures["mfu"] <= 0.5 and 400 < figures["tflops_per_s"] * 1000 <= 500


@pytest.mark.slow
def test_a_compiled_language_model_trains_like_the_eager_one(tmp_path, shapes_source):
    """compile: true (inductor on the CPU here; about a minute to compile): the same losses, and
    weights equal to float tolerance; the checkpoint keeps the eager parameter names."""
    runs = {}
    for compiled in (False, True):
        stage = stage_of("stage4_multitask", 3, 4, lr=1e-3)
        stage.compile = compiled
        out = train_stage(
            stage, EXACT, data_dirs=shapes_source, output_dir=tmp_path / str(compiled), log=quiet
        )
        runs[compiled] = (out, weights(out))
    (eager, we), (comp, wc) = runs[False], runs[True]
    assert comp["loss_start"] == pytest.approx(eager["loss_start"], rel=1e-5)
    assert comp["loss_end"] == pytest.approx(eager["loss_end"], rel=1e-5)
    assert we.keys() == wc.keys()
    for name in we:
        if "k_layernorm.bias" not in name:  # see test_k_micro_batches_give_the_update_of_one_batch
            torch.testing.assert_close(wc[name], we[name], rtol=1e-4, atol=2e-5)
