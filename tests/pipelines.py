"""What the integration tests of a whole pipeline share: the demo's specs shrunk to seconds, a run's
label in MLflow, the environment of a command on a state folder, the processes left on one."""

import os
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
SPECS = ROOT / "data_specs"
STAGES = [
    "shapes_towers",
    "shapes_base",
    "stage1_warmup",
    "stage2_pretrain",
    "stage3_instruction",
    "stage4_multitask",
]


def mini_pipeline(folder: Path, pipeline: str = "shapes_demo.yaml") -> Path:
    """A shipped demo pipeline's specs (data_specs/pipelines/`pipeline`), shrunk: few images, a
    handful of steps per stage."""
    source = yaml.safe_load((SPECS / "sources" / "shapes_world.yaml").read_text())
    source["shapes_world"].update(num_train=96, num_heldout=12, num_heldout_novel=12)
    source["number_sample_per_shard"] = 40
    (folder / "shapes_world.yaml").write_text(yaml.safe_dump(source))
    pipe = yaml.safe_load((SPECS / "pipelines" / pipeline).read_text())
    stage_files = []
    for rel in pipe["stages"]:
        stage = yaml.safe_load((SPECS / "pipelines" / rel).resolve().read_text())
        stage["schedule"].update(steps=4, batch_size=2, warmup_steps=1)
        stage["log_every"] = 2
        stage["checkpoint_every"] = 0
        name = f"{stage['name']}.yaml"
        (folder / name).write_text(yaml.safe_dump(stage))
        stage_files.append(name)
    pipe["name"] = "mini-demo" if pipeline == "shapes_demo.yaml" else f"mini-{Path(pipeline).stem}"
    pipe["sources"] = ["shapes_world.yaml"]
    pipe["stages"] = stage_files
    pipe["evaluation"].update(max_images=6, batch_size=16)
    pipe["tracking"] = {"experiment": "mini", "registered_model": "mini-model"}
    path = folder / "pipeline.yaml"
    path.write_text(yaml.safe_dump(pipe))
    return path


def label(run) -> str:
    """A run by what it is: `stage-<name>` for a stage (named `<pipeline>/<stage>/seed<n>`),
    `evaluate`, or its name."""
    tags = run.data.tags
    if tags.get("vlmpipe.step") == "stage":
        assert (
            run.info.run_name
            == f"{tags['vlmpipe.pipeline']}/{tags['vlmpipe.stage']}/seed{tags['vlmpipe.seed']}"
        )
        return f"stage-{tags['vlmpipe.stage']}"
    if tags.get("vlmpipe.step") == "evaluate":
        return "evaluate"
    return run.info.run_name


def env_for(home: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "MLFLOW_"))}
    env.update(VLMPIPE_HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def processes_of(home: Path) -> list[str]:
    """Every process started for the state folder `home` (they all inherit VLMPIPE_HOME from the
    command), Prefect's local API server included, whatever its command line."""
    marker = f"VLMPIPE_HOME={home}\0".encode()
    found = []
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            if marker in environ.read_bytes():
                found.append(environ.parent.name)
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return found
