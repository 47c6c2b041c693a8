"""Deployment files stay in step with the code: entrypoints import, templates parse."""

import importlib
import json
from pathlib import Path

import yaml

INFRA = Path(__file__).resolve().parents[2] / "infra"


def test_every_deployment_entrypoint_is_a_prefect_flow():
    config = yaml.safe_load((INFRA / "prefect.yaml").read_text())
    assert config["deployments"]
    for dep in config["deployments"]:
        path, name = dep["entrypoint"].split(":")
        module = importlib.import_module(path.removesuffix(".py").replace("/", "."))
        flow = getattr(module, name)
        assert hasattr(flow, "deploy") and hasattr(flow, "fn"), dep["name"]
        for param in dep.get("parameters", {}):
            assert param in flow.parameters.properties, (dep["name"], param)


def test_gpu_job_template_requests_gpus():
    template = json.loads((INFRA / "gpu-job-template.json").read_text())
    container = template["job_configuration"]["job_manifest"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "{{ gpus }}"
    assert template["variables"]["properties"]["gpus"]["default"] == 1
