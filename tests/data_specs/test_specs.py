"""Spec loading: every shipped spec validates; bad specs give one line naming file and field, exit 2."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from data_specs.loader import SpecError
from data_specs.pipelines import load_pipeline
from data_specs.schema import write_schemas
from data_specs.stages import load_stage_spec

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "data_specs"
DEMO = SPECS / "pipelines" / "shapes_demo.yaml"
STAGE4 = SPECS / "stages" / "stage4_multitask.yaml"


def vlmpipe(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        capture_output=True,
        text=True,
        cwd=cwd or ROOT,
        timeout=120,
    )


def test_demo_pipeline_resolves_sources_and_stages_in_order():
    rp = load_pipeline(DEMO)
    assert list(rp.sources) == ["shapes_world"]
    assert [s.name for s in rp.stages] == [
        "shapes_towers",
        "shapes_base",
        "stage1_warmup",
        "stage2_pretrain",
        "stage3_instruction",
        "stage4_multitask",
    ]
    # tower pre-training (contrastive only), then base pre-training of the LM and projection on the
    # frozen vision tower
    assert rp.stages[0].trainable == ["vision", "qformer", "projection"] and not rp.stages[0].autoregressive
    assert rp.stages[0].contrastive is not None
    assert {"language_model", "projection"} <= set(rp.stages[1].trainable)
    assert "vision" not in rp.stages[1].trainable
    for stage in rp.stages[2:]:  # the paper's stages keep towers and LM weights frozen
        assert not {"vision", "qformer", "language_model"} & set(stage.trainable)


@pytest.mark.parametrize("path", sorted(p for p in SPECS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_spec_validates(path):
    # the real recipe's data and weights are not on this machine: its specs validate all but those
    real_recipe = path.name.startswith("tinygptv") or path.parent.name == "tinygptv"
    proc = vlmpipe("spec", "validate", *(["--skip-files"] if real_recipe else []), str(path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")
    if real_recipe and path.parent.name == "pipelines":
        assert "data file(s) not on this machine, not checked:" in proc.stdout
        assert "\n  missing  " in proc.stdout and "model.projection_init: no such file" in proc.stdout


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BAD_CASES = {
    "unknown group": (
        lambda s: s.replace("trainable: [projection, lora,", "trainable: [projektion, lora,"),
        "trainable[0]: unknown trainable group 'projektion' (did you mean 'projection'?); known trainable "
        "groups: final_layernorm,",
    ),
    "negative weight": (
        lambda s: re.sub(r"task: vqa, +weight: \d+", "task: vqa, weight: -1", s, count=1),
        "mixture.datasets[0].weight:",
    ),
    "typo in a field": (
        lambda s: s.replace("max_len:", "max_lenght:"),
        "max_lenght: unknown field (did you mean 'max_len'?)",
    ),
    "missing field": (lambda s: s.replace("max_len: 192\n", ""), "max_len: required field is missing"),
    "bad task": (
        lambda s: s.replace("task: caption,", "task: captioning,"),
        "mixture.datasets[1].task: unknown task type 'captioning' (did you mean 'caption'?); known task "
        "types: caption, conversation,",
    ),
    "bad template": (
        lambda s: s.replace("template: human_assistant", "template: human"),
        "template: unknown template 'human'",
    ),
    "bad contrastive loss": (
        lambda s: s.replace("log_every: 25", "contrastive: {loss: infonce}\nlog_every: 25"),
        "contrastive.loss: unknown contrastive loss 'infonce'; known contrastive losses: image_encoder, language_model, semantic_transform",
    ),
    "bad dataset format": (
        lambda s: s.replace(
            "source: shapes_world, split: train, task: refer", "format: refcocoo, annotations: x, task: refer"
        ),
        "mixture.datasets[2].format: unknown dataset format 'refcocoo' (did you mean 'refcoco'?)",
    ),
    "dataset format of another task": (
        lambda s: s.replace(
            "source: shapes_world, split: train, task: refer", "format: gqa, annotations: x, task: refer"
        ),
        "mixture.datasets[2]: format gqa gives vqa examples, but task is refer",
    ),
    "lr_scale of an unknown group": (
        lambda s: s.replace("warmup_steps: 60}", "warmup_steps: 60, lr_scale: {visoin: 0.1}}"),
        "schedule.lr_scale: unknown trainable group 'visoin' (did you mean 'vision'?)",
    ),
    "lr_scale of a frozen group": (
        lambda s: s.replace("warmup_steps: 60}", "warmup_steps: 60, lr_scale: {vision: 0.1}}"),
        "schedule.lr_scale: group 'vision' is not in trainable",
    ),
    "lr_scale of zero": (
        lambda s: s.replace("warmup_steps: 60}", "warmup_steps: 60, lr_scale: {projection: 0}}"),
        "projection: scale must be > 0",
    ),
    "contrastive-only stage without a contrastive loss": (
        lambda s: s.replace("log_every: 25", "autoregressive: false\nlog_every: 25"),
        "autoregressive: false needs a contrastive loss",
    ),
    "contrastive temperature": (
        lambda s: s.replace("log_every: 25", "contrastive: {temperature: 0}\nlog_every: 25"),
        "contrastive.temperature: input should be greater than 0",
    ),
    "yaml syntax": (lambda s: s.replace("mixture:\n", "mixture: [\n", 1), "YAML syntax error at line"),
    "infinite lr": (
        lambda s: s.replace("lr: 3.0e-3,", "lr: .inf,"),
        "schedule.lr: input should be a finite number",
    ),
    "infinite weight": (
        lambda s: re.sub(r"weight: \d+", "weight: .inf", s, count=1),
        "mixture.datasets[0].weight: input should be a finite number",
    ),
    "not a number": (
        lambda s: s.replace("lr: 3.0e-3,", "lr: .nan,"),
        "schedule.lr: input should be a finite",
    ),
    "min_lr above lr": (
        lambda s: s.replace("min_lr: 3.0e-4", "min_lr: 3.0e-2"),
        "schedule.min_lr: 0.03 is above lr 0.003",
    ),
    "beta of one": (
        lambda s: s.replace("warmup_steps: 60}", "warmup_steps: 60, betas: [0.9, 1.0]}"),
        "schedule.betas: each beta must be in [0, 1), got 1",
    ),
    "seed too large": (
        lambda s: s.replace("log_every: 25", "seed: 99999999999999999999\nlog_every: 25"),
        "seed: input should be less than 4294967296",
    ),
    "negative seed": (
        lambda s: s.replace("log_every: 25", "seed: -1\nlog_every: 25"),
        "seed: input should be greater",
    ),
    "steps: true": (
        lambda s: re.sub(r"\{steps: \d+,", "{steps: true,", s, count=1),
        "schedule.steps: expected a number, got true",
    ),
    "duplicate key": (
        lambda s: s.replace("max_len: 192\n", "max_len: 192\nmax_len: 256\n"),
        "key 'max_len' appears twice (line 10 and line 11)",
    ),
    "missing annotations": (
        lambda s: s.replace(
            "source: shapes_world, split: train, task: refer",
            "format: refcoco, annotations: no/such/dir, task: refer",
        ),
        "mixture.datasets[2].annotations: no such file or folder",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_stage_spec_gives_one_line_and_exit_2(tmp_path, case):
    mutate, expected = BAD_CASES[case]
    bad = write(tmp_path, "stage4.yaml", mutate(STAGE4.read_text()))
    proc = vlmpipe("spec", "validate", str(bad))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert str(bad) in lines[0] and expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr


def test_stage_naming_an_unknown_source_is_caught_at_pipeline_load(tmp_path):
    stage = write(
        tmp_path,
        "s.yaml",
        STAGE4.read_text().replace(
            "source: shapes_world, split: train, task: refer", "source: laoin, split: train, task: refer"
        ),
    )
    pipe = write(
        tmp_path,
        "p.yaml",
        DEMO.read_text()
        .replace("../sources/", f"{SPECS}/sources/")
        .replace("../stages/stage4_multitask.yaml", str(stage))
        .replace("../stages/", f"{SPECS}/stages/"),
    )
    with pytest.raises(SpecError) as err:
        load_pipeline(pipe)
    assert str(err.value).startswith(f"{stage}: mixture.datasets[2].source: unknown source 'laoin'")


def test_missing_file_and_non_mapping(tmp_path):
    proc = vlmpipe("spec", "validate", str(tmp_path / "nope.yaml"))
    assert proc.returncode == 2 and "no such spec file" in proc.stderr
    with pytest.raises(SpecError, match="expected a mapping"):
        load_stage_spec(write(tmp_path, "list.yaml", "- a\n- b\n"))


def test_usage_error_exits_2():
    assert vlmpipe("spec").returncode == 2
    assert vlmpipe("frobnicate").returncode == 2


def test_json_schemas_are_generated_and_current(tmp_path):
    paths = write_schemas(tmp_path)
    assert sorted(p.name for p in paths) == [
        "pipeline.schema.json",
        "source.schema.json",
        "stage.schema.json",
    ]
    stage = json.loads((tmp_path / "stage.schema.json").read_text())
    assert "mixture" in stage["properties"] and "max_len" in stage["required"]
    for p in paths:  # the committed copies must match the models (run `make schema` after a change)
        assert (SPECS / "schema" / p.name).read_text() == p.read_text(), (
            f"run `make schema`: {p.name} is stale"
        )


def demo_copy(tmp_path: Path, mutate) -> Path:
    """The demo pipeline with absolute spec paths, changed by `mutate`, written to tmp_path."""
    text = (
        DEMO.read_text().replace("../sources/", f"{SPECS}/sources/").replace("../stages/", f"{SPECS}/stages/")
    )
    return write(tmp_path, "pipeline.yaml", mutate(text))


BAD_PIPELINES = {
    "registered-model name MLflow refuses": (
        lambda s: s.replace("registered_model: vlmpipe-shapes-tiny", "registered_model: team/model:v1"),
        "tracking.registered_model: 'team/model:v1': a registered-model name takes letters, digits,",
    ),
    "blank experiment": (
        lambda s: s.replace("experiment: vlmpipe-demo", "experiment: '   '"),
        "tracking.experiment: '   ': an MLflow experiment name is 1-500 characters, not blank",
    ),
    "evaluation split the source lacks": (
        lambda s: s.replace("split: heldout", "split: test"),
        "evaluation.split: source shapes_world has no split 'test'; its splits: train, heldout",
    ),
    "preset typo": (
        lambda s: s.replace("preset: tiny-merge", "preset: tinny"),
        "model.preset: unknown model preset 'tinny' (did you mean 'tiny'?); known model presets: tiny, tiny-merge, "
        "tinygptv-phi1_5, tinygptv-phi2, tinygptv-phi2-merge",
    ),
    "unknown benchmark": (
        lambda s: s.replace("benchmark: shapes_world", "benchmark: gqa"),
        "evaluation.benchmark: unknown benchmark 'gqa'; known benchmarks: shapes_world",
    ),
    "task the benchmark lacks": (
        lambda s: s.replace("tasks: [vqa, refer, caption]", "tasks: [vqa, grounding]"),
        "evaluation.tasks: benchmark shapes_world has no task 'grounding'; its tasks: vqa, refer, caption",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_PIPELINES))
def test_bad_pipeline_names_file_field_and_known_names(tmp_path, case):
    mutate, expected = BAD_PIPELINES[case]
    bad = demo_copy(tmp_path, mutate)
    assert bad.read_text() != DEMO.read_text()
    proc = vlmpipe("spec", "validate", str(bad))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith(f"vlmpipe: error: {bad}: {expected}"), lines[0]


def test_the_old_field_name_adapter_still_loads(tmp_path):
    stage = write(
        tmp_path,
        "stage.yaml",
        STAGE4.read_text().replace(
            "source: shapes_world, split: train, task: refer", "adapter: refcoco, annotations: x, task: refer"
        ),
    )
    assert load_stage_spec(stage).mixture.datasets[2].format == "refcoco"


def test_spec_validate_loads_neither_prefect_nor_torch():
    script = (
        f"import sys; from flows.cli import main; code = main(['spec', 'validate', {str(DEMO)!r}]); "
        "print(sorted(m for m in ('prefect', 'torch', 'transformers', 'mlflow') if m in sys.modules)); "
        "sys.exit(code)"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"


def test_a_stage_that_does_not_fit_the_preset_is_caught_at_pipeline_load(tmp_path):
    cases = {
        "max_len: 192\nimage_size: 60\n": "image_size: 60 is not a multiple of preset tiny-merge's patch size 8",
        "max_len: 20\n": "max_len: 20 leaves no room for text after the 16 image tokens of preset tiny-merge",
        "max_len: 4096\n": "max_len: 4096 is more than preset tiny-merge's LM has positions (512)",
    }
    for line, expected in cases.items():
        stage = write(tmp_path, "s.yaml", STAGE4.read_text().replace("max_len: 192\n", line))
        pipe = demo_copy(
            tmp_path, lambda s, stage=stage: s.replace(f"{SPECS}/stages/stage4_multitask.yaml", str(stage))
        )
        proc = vlmpipe("spec", "validate", str(pipe))
        assert proc.returncode == 2 and proc.stderr.strip() == f"vlmpipe: error: {stage}: {expected}", (
            proc.stderr
        )


def test_every_bad_file_is_reported_and_the_good_ones_still_pass(tmp_path):
    deep = write(tmp_path, "deep.yaml", "a:\n  " + "[" * 20000 + "]" * 20000 + "\n")
    huge = write(tmp_path, "huge.yaml", "name: x\n" + "# padding\n" * 200_000)
    dup = write(tmp_path, "dup.yaml", "name: a\nname: b\n")
    proc = vlmpipe("spec", "validate", str(deep), str(STAGE4), str(huge), str(dup))
    assert proc.returncode == 2
    assert proc.stdout.strip().splitlines() == [f"ok  {STAGE4}  (stage)"]
    errors = proc.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in proc.stderr
    assert errors[0] == f"vlmpipe: error: {deep}: nested deeper than a spec can be (32 levels)"
    assert errors[1].startswith(f"vlmpipe: error: {huge}: ") and "larger than a spec can be" in errors[1]
    assert errors[2].startswith(f"vlmpipe: error: {dup}: ") and "key 'name' appears twice" in errors[2]


def test_validate_and_help_write_nothing_to_the_state_folder(tmp_path):
    home = tmp_path / "home"
    for argv in (["--help"], ["spec", "validate", str(DEMO)]):
        proc = subprocess.run(
            [sys.executable, "-m", "flows.cli", *argv],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env={**__import__("os").environ, "VLMPIPE_HOME": str(home)},
            timeout=120,
        )
        assert proc.returncode == 0, proc.stderr
    assert not home.exists() and not (tmp_path / ".vlmpipe").exists()


@pytest.mark.parametrize(
    ("placement", "field", "expected"),
    [
        ("placement: {stage_pools: {stage9: cpu}}", "placement.stage_pools.stage9", "no stage 'stage9'"),
        ("placement: {stages: 'gpu pool'}", "placement.stages", "pattern"),
        ("placement: {mode: cluster}", "placement.mode", "auto"),
        ("placement: {retries: -1}", "placement.retries", "greater than or equal to 0"),
        (
            "tracking: {champion_metric: vqa_accuracy}",
            "tracking.champion_metric",
            "needs tracking.registered_model",
        ),
    ],
)
def test_bad_placement_and_gate_name_the_field(tmp_path, placement, field, expected):
    import yaml

    data = yaml.safe_load(DEMO.read_text())
    data["sources"] = [f"{SPECS}/sources/{Path(p).name}" for p in data["sources"]]
    data["stages"] = [f"{SPECS}/stages/{Path(p).name}" for p in data["stages"]]
    data.pop("placement")
    data["tracking"] = {"experiment": "x"}
    data.update(yaml.safe_load(placement))
    pipe = write(tmp_path, "p.yaml", yaml.safe_dump(data))
    with pytest.raises(SpecError) as err:
        load_pipeline(pipe)
    assert str(err.value).startswith(f"{pipe}: {field}"), str(err.value)
    assert expected in str(err.value)
