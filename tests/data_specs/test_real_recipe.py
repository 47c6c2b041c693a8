"""The real TinyGPT-V recipe's specs: they validate here without their data, they say what the
paper's recipe says, the MiniGPT-4 projection file is wired in, and the smoke override builds the
real-size model (meta device) and trains every stage a step at tiny size on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from data_specs.loader import SpecError
from data_specs.pipelines import ModelSpec, load_pipeline
from data_specs.smoke import write_smoke_specs

PIPELINES = Path(__file__).resolve().parents[2] / "data_specs" / "pipelines"
REAL = ["tinygptv_phi2.yaml", "tinygptv_phi1_5.yaml"]
NORMS = ["qk_norm", "post_attention_norm", "input_layernorm", "final_layernorm"]
# the original code's stage-4 mixture: dataset -> (examples per draw, ratio)
STAGE4 = {
    "multitask_conversation": (1, 50),
    "llava_conversation": (1, 30),
    "unnatural_instruction": (1, 10),
    "refvg": (3, 40),
    "llava_detail": (2, 20),
    "llava_reason": (2, 80),
    "flickr_grounded_caption": (1, 80),
    "flickr_CaptionToPhrase": (1, 80),
    "flickr_ObjectToPhrase": (1, 80),
    "textcaps_caption": (3, 30),
    "refcoco": (3, 25),
    "refcocop": (3, 25),
    "refcocog": (3, 25),
    "invrefcoco": (3, 10),
    "invrefcocop": (3, 10),
    "invrefcocog": (3, 10),
    "coco_vqa": (3, 15),
    "ok_vqa": (3, 8),
    "aok_vqa": (3, 12),
    "gqa": (3, 50),
}


@pytest.mark.parametrize("name", REAL)
def test_the_real_recipe_validates_without_its_data_and_names_what_is_missing(name):
    rp = load_pipeline(PIPELINES / name, check_files=False)
    assert rp.spec.model.pretrained and rp.spec.model.projection_init.name == "pretrained_minigpt4_7b.pth"
    assert sorted(rp.sources) == ["cc3m", "laion_synthetic", "sbu"]
    s1, s2, s3, s4 = rp.stages
    assert s1.trainable == ["projection", *NORMS]
    assert s2.trainable == s3.trainable == s4.trainable == ["projection", "lora", *NORMS]
    assert {ds.source for ds in s1.mixture.datasets} == {"laion_synthetic", "cc3m", "sbu"}
    assert [ds.format for ds in s3.mixture.datasets] == ["cc_sbu_align"]
    assert (s1.image_size, s2.image_size, s3.image_size, s4.image_size) == (224, 224, 224, 448)
    assert s4.mixture.semantics == "batches"
    assert {ds.name: (ds.batch_size, ds.weight) for ds in s4.mixture.datasets} == STAGE4
    assert (s1.schedule.steps, s2.schedule.steps, s3.schedule.steps, s4.schedule.steps) == (
        17000,
        20000,
        1000,
        50000,
    )
    assert all(s.precision == "bf16" for s in rp.stages)
    assert all(s.frozen_features == "auto" for s in (s1, s2))
    with pytest.raises(SpecError, match=r"model\.projection_init: no such file"):
        load_pipeline(PIPELINES / name)
    from data_specs.pipelines import missing_data_files

    missing = missing_data_files(rp)  # every one, for a user putting the data in place
    assert (
        len(missing) == 1 + 3 + 2 + 39
    )  # weights, 3 URL lists, cc_sbu_align, 20 annotations + 19 image roots
    assert any("stage4_multitask.yaml: mixture.datasets[19].image_root" in m for m in missing)


def test_the_minigpt4_projection_file_starts_the_first_projection(tmp_path):
    from model.build import build_model
    from tasks.shapes_world import tokenizer_corpus

    torch.manual_seed(0)
    plain, _ = build_model(ModelSpec(preset="tiny"), tokenizer_corpus=tokenizer_corpus, log=lambda _m: None)
    proj = plain.model.projection.proj_in
    weight, bias = torch.randn_like(proj.weight), torch.randn_like(proj.bias)
    path = tmp_path / "pretrained_minigpt4_7b.pth"
    torch.save(
        {"model": {"llama_proj.weight": weight, "llama_proj.bias": bias, "other": torch.zeros(1)}}, path
    )
    lines: list[str] = []
    built, groups = build_model(
        ModelSpec(preset="tiny", projection_init=path), tokenizer_corpus=tokenizer_corpus, log=lines.append
    )
    assert torch.equal(built.model.projection.proj_in.weight, weight)
    assert torch.equal(built.model.projection.proj_in.bias, bias)
    assert groups == ["projection"] and "MiniGPT-4" in lines[-1]
    # the wrong shape is refused, naming the file
    torch.save({"model": {"llama_proj.weight": torch.zeros(3, 3), "llama_proj.bias": torch.zeros(3)}}, path)
    with pytest.raises(ValueError, match=r"pretrained_minigpt4_7b\.pth: .*llama_proj\.weight has shape"):
        build_model(ModelSpec(preset="tiny", projection_init=path), tokenizer_corpus=tokenizer_corpus)


@pytest.mark.parametrize("name", REAL)
def test_the_smoke_override_builds_the_real_size_model_on_the_meta_device(name, tmp_path):
    from model.presets import get_preset
    from model.trainable import set_trainable
    from model.vlm import VisionLanguageModel
    from tasks.train.flops import StepFlops

    rp = load_pipeline(PIPELINES / name, check_files=False)
    smoke = load_pipeline(write_smoke_specs(rp, tmp_path))  # every file it names exists
    assert smoke.spec.model.preset == rp.spec.model.preset and not smoke.spec.model.pretrained
    assert smoke.spec.model.projection_init is None
    stage4 = smoke.stages[3]
    assert stage4.image_size == 448 and stage4.schedule.steps == 2
    assert "unnatural_instruction (text_instruction)" in stage4.description  # said, not hidden
    assert len(stage4.mixture.datasets) == 19
    preset = get_preset(smoke.spec.model.preset)
    with torch.device("meta"):
        model = VisionLanguageModel(preset.with_image_size(448), 51200, image_token_id=51199, pad_token_id=0)
    counts = {"tinygptv-phi2": 2.7e9, "tinygptv-phi1_5": 1.3e9}
    lm = sum(p.numel() for p in model.language_model.parameters())
    assert counts[preset.name] < lm < counts[preset.name] * 1.15
    assert 0.95e9 < sum(p.numel() for p in model.vision.parameters()) < 1.05e9
    for stage in smoke.stages:
        trained = set_trainable(model, stage.trainable, log=None)
        assert {g for g, n in trained.items() if n} == set(stage.trainable)
        assert StepFlops.of(model).step(rows=2, seq_len=stage.max_len, images=4) > 0


def test_the_smoke_override_trains_every_stage_a_step_at_tiny_size(tmp_path, shapes_source):
    from tasks.train.stage import train_stage

    rp = load_pipeline(PIPELINES / "tinygptv_phi2.yaml", check_files=False)
    smoke = load_pipeline(write_smoke_specs(rp, tmp_path / "specs", steps=1, preset="tiny"))
    checkpoint = None
    for stage in smoke.stages:
        out = train_stage(
            stage,
            smoke.spec.model,
            data_dirs={"shapes_world": shapes_source["shapes_world"]},
            output_dir=tmp_path / stage.name,
            init_checkpoint=checkpoint,
            log=lambda _m: None,
        )
        assert out["steps"] == 1 and out["loss_start"] > 0
        checkpoint = out["checkpoint"]
    assert Path(checkpoint).is_dir()
