"""Deployment files stay in step with the code: entrypoints import, parameters exist, templates parse
and say what a GPU pod needs, the image's command works with Prefect's."""

import importlib
import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"


@pytest.mark.parametrize("file", ["prefect.yaml", "prefect-k8s.yaml"])
def test_every_deployment_entrypoint_is_a_prefect_flow_and_its_parameters_exist(file):
    config = yaml.safe_load((INFRA / file).read_text())
    assert config["deployments"]
    for dep in config["deployments"]:
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert hasattr(flow, "deploy") and hasattr(flow, "fn"), dep["name"]
        for param in dep.get("parameters", {}):
            assert param in flow.parameters.properties, (dep["name"], param)
        # everything a flow needs beyond its parameters has a default: a deployment can be started
        missing = set(flow.parameters.required or []) - set(dep.get("parameters", {}))
        allowed = {"pipeline_spec", "stage", "checkpoint", "source_spec_path"}  # what a user names
        assert missing <= allowed, (dep["name"], missing)


def test_the_pipeline_finds_a_stage_and_an_evaluation_deployment_for_each_default_pool():
    """placement: stages on `gpu`, evaluation on `gpu` (defaults) resolve to deployments of
    infra/prefect.yaml; deployment names are <flow>/<pool>."""
    from data_specs.pipelines import PlacementSpec

    config = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    flows = {
        "flows/pipeline.py:train_stage_flow": "train-stage",
        "flows/pipeline.py:evaluate_flow": "evaluate",
    }
    names = {
        f"{flows[d['entrypoint']]}/{d['name']}": d["work_pool"]["name"]
        for d in config["deployments"]
        if d["entrypoint"] in flows
    }
    spec = PlacementSpec()
    assert names[f"train-stage/{spec.stages}"] == spec.stages
    assert names[f"evaluate/{spec.evaluation}"] == spec.evaluation
    for name, pool in names.items():  # a deployment named after a pool runs on that pool
        assert name.split("/")[1] == pool


def test_schedules_are_cron_in_utc_and_run_on_the_cpu_pool():
    config = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    scheduled = [d for d in config["deployments"] if d.get("schedules")]
    assert {d["name"] for d in scheduled} == {"shapes-demo-nightly", "shapes-world-weekly"}
    for dep in scheduled:
        for schedule in dep["schedules"]:
            assert len(schedule["cron"].split()) == 5 and schedule["timezone"] == "UTC"
        assert dep["work_pool"]["name"] == "cpu"


def test_the_process_deployments_need_no_environment_variable_to_find_the_project():
    """No `{{ $VAR }}` in infra/prefect.yaml: a worker started as the README says must not crash
    on an unset variable (Prefect records the deploy folder as the working directory)."""
    text = (INFRA / "prefect.yaml").read_text()
    assert "{{ $" not in text
    assert "pull" not in yaml.safe_load(text)


def test_gpu_job_template_requests_gpus_tolerates_gpu_taints_and_requires_an_image():
    template = json.loads((INFRA / "gpu-job-template.json").read_text())
    pod = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert pod["tolerations"] == "{{ tolerations }}" and pod["nodeSelector"] == "{{ node_selector }}"
    variables = template["variables"]
    assert variables["properties"]["gpus"]["default"] == 1
    assert variables["properties"]["tolerations"]["default"][0]["key"] == "nvidia.com/gpu"
    assert "image" in variables["required"]
    pattern = re.compile(variables["properties"]["image"]["pattern"])
    assert pattern.match("registry.example.com/vlmpipe:1.0")
    assert not pattern.match("{{ $VLMPIPE_IMAGE }}") and not pattern.match("")
    # every {{ placeholder }} of the job configuration is a declared variable (or Prefect's own)
    used = set(re.findall(r"{{ (\w+) }}", json.dumps(template["job_configuration"])))
    assert used <= set(variables["properties"]), used - set(variables["properties"])


def test_the_image_leaves_the_command_to_prefect_and_copies_no_environment():
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert not re.search(r"^\s*ENTRYPOINT", dockerfile, re.M)
    assert "torch.version.cuda" in dockerfile  # the CUDA build, checked at build time
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", ".vlmpipe"} <= set(ignored)


def test_compose_file_names_postgres_for_both_servers_and_object_storage():
    compose = yaml.safe_load((INFRA / "compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "prefect-server", "mlflow", "minio"} <= set(services)
    mlflow_cmd = " ".join(services["mlflow"]["command"])
    assert "postgresql" in mlflow_cmd and "s3://" in mlflow_cmd
    assert "postgresql" in services["prefect-server"]["environment"]["PREFECT_API_DATABASE_CONNECTION_URL"]
